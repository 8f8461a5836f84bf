"""Visual-knowledge-transfer checks (the shared battery in test_families.py covers the tiny combination's learning
and save/load): the BERT-base student's size, each objective alone learns, a zero weight really switches its
objective off, the CLIP teacher stays frozen and out of the checkpoint, voken targets index the batch's images,
SimCSE's two views are the same caption, text_init / encode_texts / preflight."""
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from conftest import SPECIALS, save_untrained, scene_texts, train_steps, wordpiece
from test_families import SMALL, fixed_batch
from transformers import BertConfig, BertForMaskedLM, BertModel
from vlforge.components.models.masking import IGNORE_INDEX
from vlforge.components.models.registry import apply_freeze, get_family
from vlforge.components.models.vk_transfer.family import (
    OBJECTIVES,
    same_caption_mask,
    voken_targets,
)
from vlforge.components.models.vk_transfer.modeling import (
    load_teacher,
    teacher_features,
)

from vlforge.errors import UserError

FAMILY = get_family("vk-transfer")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return wordpiece(tmp_path_factory, scene_texts(200, questions=None))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """An untrained tiny CLIP at 32 px, saved as the catalog saves one (no tokenizer beside it)."""
    return save_untrained("clip", SMALL, len(tokenizer), tmp_path_factory.mktemp("teacher") / "clip")


def _recipe(teacher_dir: Path, objectives, **extra):
    return FAMILY.recipe("tiny", {**SMALL, "teacher": str(teacher_dir), "objectives": objectives, **extra})


def _train(recipe, tokenizer, steps: int, lr: float = 2e-3):
    torch.manual_seed(0)
    model = FAMILY.build_model(recipe, len(tokenizer), SPECIALS)
    apply_freeze(FAMILY, model, recipe)
    batch = fixed_batch(recipe, tokenizer)
    losses, out = train_steps(FAMILY, model, batch, recipe, steps, lr)
    return model, batch, losses, out


def test_paper_size_is_bert_base() -> None:
    # BERT-base: 110M parameters (Devlin et al. 2019, section 3; the student of Jin et al. 2022). Counted: BertModel
    # with its pooler and the 30,522-token WordPiece embedding table = 109,482,240.
    with torch.device("meta"):
        model = FAMILY.build_model(FAMILY.recipe("base"), 30522, SPECIALS)
    encoder = sum(p.numel() for p in FAMILY.text_encoder(model).parameters())
    assert abs(encoder - 110_000_000) / 110_000_000 < 0.01, encoder
    # the whole student adds the MLM head (transform + bias; decoder tied) and three 768<->512 joint-space heads
    total = sum(p.numel() for p in model.parameters())
    assert total - encoder == (768 * 768 + 768 + 2 * 768 + 30522) + 3 * (768 * 512) + 2 * 512 + 768
    assert abs(total - 110_000_000) / 110_000_000 < 0.02, total


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_alone_is_finite_and_falls(objective: str, teacher_dir: Path, tokenizer) -> None:
    recipe = _recipe(teacher_dir, {objective: 1.0})
    _, _, losses, out = _train(recipe, tokenizer, steps=16)
    assert set(out) == {"loss", objective}
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert min(losses[-3:]) < 0.9 * losses[0], losses


def test_zero_weight_switches_an_objective_off(teacher_dir: Path, tokenizer) -> None:
    both = _recipe(teacher_dir, {"mlm": 1.0, "voken": 1.0})
    off = _recipe(teacher_dir, {"mlm": 1.0, "voken": 0.0})
    assert off.weights() == {"mlm": 1.0}
    torch.manual_seed(0)
    model = FAMILY.build_model(off, len(tokenizer), SPECIALS)
    apply_freeze(FAMILY, model, off)
    assert not any(p.requires_grad for p in model.voken_head.parameters())  # its head is frozen too
    batch = fixed_batch(off, tokenizer)
    out = FAMILY.training_step(model, batch, off)
    assert "voken" not in out and torch.equal(out["loss"].detach(), out["mlm"])
    out["loss"].backward()
    assert all(p.grad is None for p in model.voken_head.parameters())
    model.eval()  # no dropout: the MLM loss must not depend on which other objectives run
    with torch.no_grad():
        alone, on = FAMILY.training_step(model, batch, off), FAMILY.training_step(model, batch, both)
    assert torch.allclose(on["loss"], on["mlm"] + on["voken"]) and torch.allclose(on["mlm"], alone["mlm"])
    # a list or comma string selects with weight 1; unknown names and all-zero selections are one-line errors
    assert FAMILY.recipe("tiny", {"objectives": "mlm,simcse"}).weights() == {"mlm": 1.0, "simcse": 1.0}
    with pytest.raises(UserError, match="unknown objective 'itm'"):
        FAMILY.recipe("tiny", {"objectives": ["mlm", "itm"]})
    with pytest.raises(UserError, match="no objective has a positive weight"):
        FAMILY.recipe("tiny", {"objectives": {"mlm": 0}})


def test_teacher_stays_frozen_and_out_of_the_checkpoint(teacher_dir: Path, tokenizer, tmp_path: Path) -> None:
    recipe = _recipe(teacher_dir, {"voken": 1.0, "mlm_visual": 1.0, "xmodal_contrastive": 1.0, "xmodal_kd": 1.0})
    teacher = load_teacher(str(teacher_dir), torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in teacher.state_dict().items()}
    model, _, _, _ = _train(recipe, tokenizer, steps=3)
    teacher = load_teacher(str(teacher_dir), torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for n, p in teacher.state_dict().items():
        assert torch.equal(p, before[n]), n
    student_params = {id(p) for p in model.parameters()}
    assert not any(id(p) in student_params for p in teacher.parameters())
    FAMILY.save(model, tmp_path / "ckpt", recipe)
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys and all(k.split(".")[0] in {"bert", "cls", "visual_prefix", "voken_head", "xmodal_proj"} for k in keys)
    assert not any("vision_model" in k or "logit_scale" in k for k in keys)


def test_voken_targets_index_the_batch_images(teacher_dir: Path, tokenizer) -> None:
    recipe = _recipe(teacher_dir, {"voken": 1.0})
    batch = fixed_batch(recipe, tokenizer)
    feats = teacher_features(load_teacher(str(teacher_dir), torch.device("cpu")), batch.pixel_values, batch.input_ids,
                             batch.attention_mask, text=False, tokens=True)
    caption = batch.attention_mask.bool() & ~torch.isin(batch.input_ids, torch.tensor(list(SPECIALS.values())))
    for mode in ("contextual", "paired"):
        targets = voken_targets(feats["tokens"], feats["image"], caption, mode)
        assert targets.shape == batch.input_ids.shape
        assert ((targets[caption] >= 0) & (targets[caption] < 8)).all()
        assert (targets[~caption] == IGNORE_INDEX).all()
    paired = voken_targets(None, feats["image"], caption, "paired")
    assert all((paired[i][caption[i]] == i).all() for i in range(8))
    sim = feats["tokens"] @ feats["image"].t()  # contextual: each token's target is its most similar image
    contextual = voken_targets(feats["tokens"], feats["image"], caption, "contextual")
    chosen = sim.gather(-1, contextual.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(chosen[caption], sim.max(dim=-1).values[caption])


def test_simcse_views_are_the_same_caption(teacher_dir: Path, tokenizer) -> None:
    recipe = _recipe(teacher_dir, {"simcse": 1.0})
    torch.manual_seed(0)
    model = FAMILY.build_model(recipe, len(tokenizer), SPECIALS)
    batch = fixed_batch(recipe, tokenizer)
    seen = []
    hook = model.bert.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["input_ids"]), with_kwargs=True)
    FAMILY.training_step(model, batch, recipe)
    hook.remove()
    first, second = seen[0].chunk(2)
    assert torch.equal(first, batch.input_ids) and torch.equal(second, batch.input_ids)
    # positives: the same text (duplicates in the batch included), nothing else
    captions = ["a red circle", "a blue square", "a red circle"]
    assert same_caption_mask(captions, torch.device("cpu")).tolist() == [[True, False, True], [False, True, False],
                                                                          [True, False, True]]
    # dropout makes the training views differ; in eval mode the loss is a pure function of the batch
    model.eval()
    with torch.no_grad():
        a, b = FAMILY.training_step(model, batch, recipe)["loss"], FAMILY.training_step(model, batch, recipe)["loss"]
    assert torch.equal(a, b)


def test_text_init_encoders_and_image_resizing(teacher_dir: Path, tokenizer, tmp_path: Path) -> None:
    mlm = save_untrained("text-mlm", {"hidden_size": 64, "num_layers": 1, "num_heads": 2, "max_text_length": 16},
                         len(tokenizer), tmp_path / "mlm")
    recipe = _recipe(teacher_dir, {"mlm": 1.0, "xmodal_contrastive": 1.0}, text_init=str(mlm), image_size=40)
    model = FAMILY.build_model(recipe, len(tokenizer), SPECIALS)
    init = BertForMaskedLM.from_pretrained(mlm)
    assert model.config.hidden_size == 64
    assert torch.equal(model.bert.encoder.layer[0].output.dense.weight, init.bert.encoder.layer[0].output.dense.weight)
    assert isinstance(FAMILY.text_encoder(model), BertModel)
    batch = fixed_batch(recipe, tokenizer)  # 40 px images; the 32 px teacher gets them resized
    assert torch.isfinite(FAMILY.training_step(model, batch, recipe)["loss"])
    emb = FAMILY.encode_texts(model, batch.input_ids, batch.attention_mask)
    assert emb.shape == (8, 128) and torch.allclose(emb.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert FAMILY.text_features(model, batch.input_ids, batch.attention_mask, None).shape == (8, 64)
    with pytest.raises(UserError, match="text_init .* holds a 'clip' model"):
        FAMILY.build_model(_recipe(teacher_dir, {"mlm": 1.0}, text_init=str(teacher_dir)), len(tokenizer), SPECIALS)
    # a Hugging Face BERT folder is imported first (vlforge import model DIR --family text-mlm), as every family's parts
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=128, max_position_embeddings=40)).save_pretrained(tmp_path / "hf")
    with pytest.raises(UserError, match="text_init .* is not a vlforge model .*--family text-mlm"):
        FAMILY.preflight(_recipe(teacher_dir, {"mlm": 1.0}, text_init=str(tmp_path / "hf")), tokenizer)


def test_preflight_one_line_errors(teacher_dir: Path, tokenizer, tmp_path: Path) -> None:
    from vlforge.components.tokenizer import (
        TokenizerConfig,
        load_tokenizer,
        train_tokenizer,
    )

    FAMILY.preflight(_recipe(teacher_dir, {"voken": 1.0}), tokenizer)
    with pytest.raises(UserError, match="objective 'voken' needs a teacher"):
        FAMILY.preflight(FAMILY.recipe("tiny", {"objectives": ["mlm", "voken"]}), tokenizer)
    FAMILY.preflight(FAMILY.recipe("tiny", {"objectives": ["mlm", "simcse"]}), tokenizer)  # text-only: no teacher needed
    other = train_tokenizer(["one two three four", "five six seven"] * 5, tmp_path / "other",
                            TokenizerConfig(kind="wordpiece", vocab_size=40))
    import shutil

    shutil.copytree(teacher_dir, tmp_path / "teacher")
    for f in Path(other).iterdir():
        shutil.copy(f, tmp_path / "teacher" / f.name)
    assert load_tokenizer(tmp_path / "teacher").get_vocab() != tokenizer.get_vocab()
    with pytest.raises(UserError, match="teacher .* another tokenizer"):
        FAMILY.preflight(_recipe(tmp_path / "teacher", {"voken": 1.0}), tokenizer)
