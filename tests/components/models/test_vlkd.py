"""VLKD: paper-size counts (student and teacher apart), the frozen CLIP teacher, each objective alone, the VQA
infilling prompt, the teacher checks, and a checkpoint that sees images without the teacher's text tower."""
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import SPECIALS, paper_size_model, train_steps
from vlforge.components.models.registry import ImageTextBatch, apply_freeze, get_family
from vlforge.components.models.vlkd.family import with_answer_mask
from vlforge.components.stages import check_teacher
from vlforge.components.training.loop import _param_groups, word_id_tensor

from vlforge.errors import UserError

SMALL = {"image_size": 32, "max_text_length": 16}
WEIGHTS = ("ttdm_weight", "itc_weight", "iti_weight", "vqa_weight")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_size_counts_student_and_teacher_apart() -> None:
    model = paper_size_model("vlkd", 50265)
    part = {k: sum(p.numel() for n, p in model.named_parameters() if n.startswith(k))
            for k in ("bart.", "clip_vision.", "image_prefix.", "text_proj.")}
    # The student: BART-base, 139,420,416 parameters (Lewis et al. 2020: 140M; tied embeddings counted once).
    assert part["bart."] == 139_420_416
    # The frozen CLIP ViT-B/16 image tower kept in the checkpoint: ViT-Base's 86M (Dosovitskiy et al. 2021,
    # Table 1) + the 768 x 512 visual projection; 86,192,640 in OpenAI's released ViT-B/16.
    assert abs(part["clip_vision."] - 86_192_640) / 86_192_640 < 0.01
    # The two bridges: CLIP space (512) -> BART (768) with bias, BART -> CLIP without.
    assert part["image_prefix."] == 512 * 768 + 768 and part["text_proj."] == 768 * 512
    # The whole CLIP ViT-B/16 teacher, counted apart: 149,620,737 as released (vocab 49,408, context 77); ours
    # reads the run's 50,265-token vocabulary with 40 positions: + 857 x 512 - 37 x 512.
    teacher = sum(p.numel() for p in model.text_teacher.parameters())
    assert teacher == 149_620_737 + 857 * 512 - 37 * 512
    # its text tower is no parameter of the VLKD model (not trained, not saved)
    model_params = {id(p) for p in model.parameters()}
    assert not any(id(p) in model_params for p in model.text_teacher.text_model.parameters())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """A scene tokenizer, untrained tiny CLIP and text-bart teachers saved as the DAG would, and a fixed batch."""
    from vlforge.components.sources.scene_tasks import vqa_questions
    from vlforge.components.sources.shapes import make_scene, sample_key
    from vlforge.components.tokenizer import (
        TokenizerConfig,
        load_tokenizer,
        train_tokenizer,
    )

    root = tmp_path_factory.mktemp("vlkd")
    texts = []
    for i in range(200):
        scene = make_scene(0, i)
        texts += [scene.caption] + [f"question: {q.question} answer: {q.answer}" for q in vqa_questions(sample_key(0, i), scene.facts())]
    tokenizer = load_tokenizer(train_tokenizer(texts, root / "tok", TokenizerConfig(kind="wordpiece", vocab_size=160)))
    dirs = {}
    for field, name in (("teacher", "clip"), ("language_model", "text-bart")):
        fam = get_family(name)
        rec = fam.recipe("tiny", SMALL)
        torch.manual_seed(1)
        fam.save(fam.build_model(rec, len(tokenizer), SPECIALS), root / field, rec)
        dirs[field] = str(root / field)
    scenes = [make_scene(0, i) for i in range(8)]
    captions = [s.caption for s in scenes]
    enc = tokenizer(captions, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    batch = ImageTextBatch(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), enc["input_ids"],
                           enc["attention_mask"], captions, [sample_key(0, i) for i in range(8)],
                           word_ids=word_id_tensor(enc, 8), meta=[{"facts": s.facts()} for s in scenes],
                           tokenizer=tokenizer, max_text_length=16)
    return SimpleNamespace(tokenizer=tokenizer, dirs=dirs, batch=batch, root=root)


def _build(setup, **overrides):
    family = get_family("vlkd")
    recipe = family.recipe("tiny", {**SMALL, **setup.dirs, **overrides})
    torch.manual_seed(0)
    model = family.build_model(recipe, len(setup.tokenizer), SPECIALS)
    apply_freeze(family, model, recipe)
    return family, recipe, model


def test_teacher_frozen_not_in_optimiser_not_saved(setup, tmp_path: Path) -> None:
    family, recipe, model = _build(setup)
    teacher = model.text_teacher
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    vision_before = {n: p.detach().clone() for n, p in model.clip_vision.named_parameters()}
    student_before = model.bart.model.encoder.layers[0].fc1.weight.detach().clone()
    optimizer = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=2e-3)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in teacher.parameters())
    assert not any(id(p) in in_optimizer for p in model.clip_vision.parameters())
    for step in range(3):
        setup.batch.step = step
        loss = family.training_step(model, setup.batch, recipe)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(p, before[n]) for n, p in teacher.named_parameters())
    assert all(torch.equal(p, vision_before[n]) for n, p in model.clip_vision.named_parameters())
    assert not torch.equal(model.bart.model.encoder.layers[0].fc1.weight, student_before)  # the student trains
    family.save(model, tmp_path / "ckpt", recipe)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("clip_vision.vision_model.") for k in keys)  # the image tower rides along
    assert not any("text_model" in k or "text_projection" in k for k in keys)  # the text tower does not


@pytest.mark.parametrize("objective", ["ttdm", "itc", "iti", "vqa"])
def test_each_objective_alone_is_finite_and_falls(setup, objective: str) -> None:
    family, recipe, model = _build(setup, **{w: float(w == f"{objective}_weight") for w in WEIGHTS})
    batch = setup.batch

    def eval_loss() -> dict:
        model.eval()
        batch.step = 0
        with torch.no_grad():
            out = family.training_step(model, batch, recipe)
        model.train()
        return out

    first = eval_loss()
    assert set(first) - {"loss", "logit_scale"} == {objective}
    assert math.isfinite(float(first["loss"]))
    train_steps(family, model, batch, recipe, 8, lr=2e-3)
    assert float(eval_loss()["loss"]) < 0.9 * float(first["loss"])


def test_vqa_prompt_gets_an_answer_mask_and_generation_returns_text(setup) -> None:
    tok = setup.tokenizer
    enc = tok(["question: how many objects are there? answer:", "question: what colour is the circle? answer:"],
              padding=True, return_tensors="pt")
    ids, mask = with_answer_mask(enc["input_ids"], enc["attention_mask"], SPECIALS["mask"], SPECIALS["pad"])
    for r in range(2):
        real = ids[r][mask[r].bool()].tolist()
        assert real[-2:] == [SPECIALS["mask"], SPECIALS["eos"]]
        assert real[:-2] == enc["input_ids"][r][enc["attention_mask"][r].bool()].tolist()[:-1]
    family, _, model = _build(setup)
    model.eval()
    pixels = setup.batch.pixel_values[:2]
    assert all(isinstance(t, str) for t in family.generate_texts(model, pixels, tok, None, 5))
    assert len(family.generate_texts(model, pixels, tok, ["question: how many objects are there? answer:"] * 2, 3)) == 2
    # run images of another size are resized to the CLIP's
    big = torch.nn.functional.interpolate(pixels, size=(48, 48), mode="bilinear")
    assert family.encode_images(model, big).shape == family.encode_images(model, pixels).shape


def test_wrong_teachers_are_refused(setup) -> None:
    vlkd = get_family("vlkd")
    with pytest.raises(UserError, match="takes a clip model as its teacher"):
        check_teacher(vlkd, "teacher", SimpleNamespace(kind="model", family="vilt"), "abc123")
    check_teacher(vlkd, "language_model", SimpleNamespace(kind="model", family="text-bart"), "abc")
    # a text-bart directory given as the CLIP teacher
    with pytest.raises(UserError, match="is a 'text-bart' model; vlkd takes a 'clip' model as its teacher"):
        vlkd.build_model(vlkd.recipe("tiny", {**SMALL, "teacher": setup.dirs["language_model"],
                                               "language_model": setup.dirs["language_model"]}), 160, SPECIALS)
    # teachers trained with another tokenizer (a different vocabulary size)
    with pytest.raises(UserError, match="text vocabulary has 160 tokens but the run tokenizer has 170"):
        vlkd.build_model(vlkd.recipe("tiny", {**SMALL, **setup.dirs}), 170, SPECIALS)
    with pytest.raises(UserError, match="vlkd needs its teacher"):
        vlkd.preflight(vlkd.recipe("tiny", SMALL), setup.tokenizer)
    vlkd.preflight(vlkd.recipe("tiny", {**SMALL, **setup.dirs}), setup.tokenizer)


def test_checkpoint_sees_images_without_the_teacher_directory(setup, tmp_path: Path) -> None:
    family, recipe, model = _build(setup, teacher=str(shutil.copytree(setup.dirs["teacher"], tmp_path / "t")))
    family.save(model, tmp_path / "ckpt", recipe)
    shutil.rmtree(tmp_path / "t")
    loaded = family.load(tmp_path / "ckpt").eval()
    model.eval()
    pixels = setup.batch.pixel_values
    assert torch.equal(family.encode_images(loaded, pixels), family.encode_images(model, pixels))
    assert len(family.generate_texts(loaded, pixels[:1], setup.tokenizer, None, 3)) == 1
    with pytest.raises(UserError, match="TTDM needs the CLIP teacher's text tower"):
        family.training_step(loaded, setup.batch, recipe)
