"""The battery every registered family passes: build, forward/backward, learn a fixed batch, save/load round-trip,
recipe validation, and the paper-size recipe's parameter count (built on the meta device)."""
from pathlib import Path

import pytest
import torch
from conftest import SPECIALS, paper_size_model, parameter_count, train_steps
from vlforge.components.models.registry import ImageTextBatch, apply_freeze, family_names, get_family

from vlforge.errors import UserError

# Parameter counts of the paper-size recipes, with their sources.
PAPER_PARAMS = {
    # OpenAI CLIP ViT-B/32 (Radford et al. 2021, Table 20 architecture); 151,277,313 as released.
    "clip": ("base", 151_277_313),
    # ViLT-B/32: 87.4M in Kim et al. 2021 (Table 6, #Params). Our model without its word-embedding table has 88.8M,
    # so that count leaves the table out: + BERT-base's 30,522 x 768 word embeddings = 110.8M; the rest (~1.2%) is
    # the pooler, MLM transform and ITM head.
    "vilt": ("base", 87_400_000 + 30_522 * 768),
    # VLMo-Base: 175M in Bao et al. 2021 (the multiway backbone with embeddings: ours has 175.4M), + the
    # pretraining heads of the released code, which that count leaves out: 4 ITC projections (4 x 768²), the
    # pooler and MLM transform (2 x (768² + 768)), MLM LayerNorm and decoder bias, ITM head, and the stage-1
    # pixel-regression MIM head (768 x 768 + 768 for 16x16x3 pixels) = 4,164,668.
    "vlmo": ("base", 175_000_000 + 4_164_668),
}


def fixed_batch(recipe, tokenizer, n: int = 8) -> ImageTextBatch:
    """Eight builtin scenes' captions, facts and word ids with the tokenizer, as the loop builds a batch. The images
    are fixed noise: rendered 32 px scenes look so alike at initialisation that a from-scratch dual encoder
    collapses on eight of them, and this battery checks optimisation, not data (the Ray runs use real scenes)."""
    from vlforge.components.sources.shapes import make_scene, sample_key
    from vlforge.components.training.loop import word_id_tensor

    scenes = [make_scene(0, i) for i in range(n)]
    captions = [s.caption for s in scenes]
    enc = tokenizer(captions, padding="max_length", truncation=True, max_length=recipe.max_text_length, return_tensors="pt")
    pixels = torch.randn(n, 3, recipe.image_size, recipe.image_size, generator=torch.Generator().manual_seed(0))
    return ImageTextBatch(pixels, enc["input_ids"], enc["attention_mask"], captions, [sample_key(0, i) for i in range(n)],
                          word_ids=word_id_tensor(enc, n),
                          meta=[{"facts": s.facts(), "label": s.label} for s in scenes], step=0, tokenizer=tokenizer,
                          max_text_length=recipe.max_text_length)


def fit(family, model, recipe, batch, steps: int = 25) -> list[float]:
    """``steps`` AdamW steps on the fixed batch (lr 2e-3, or the recipe's when higher: prompt tuning runs hot)."""
    return train_steps(family, model, batch, recipe, steps, lr=max(2e-3, recipe.lr))[0]


def teacher_overrides(family, tokenizer, out: Path, overrides: dict) -> dict:
    """Tiny teachers of the families a family takes, trained on the same fixed batch first, as the DAG trains them
    before the student (a frozen language model at initialisation caps how far the parts before it can go)."""
    extra = {}
    for field, fams in family.teachers.items():
        teacher = get_family(fams[0])
        t_recipe = teacher.recipe("tiny", {**overrides, **teacher_overrides(teacher, tokenizer, out / field, overrides)})
        torch.manual_seed(1)
        t_model = teacher.build_model(t_recipe, len(tokenizer), SPECIALS)
        apply_freeze(teacher, t_model, t_recipe)
        fit(teacher, t_model, t_recipe, fixed_batch(t_recipe, tokenizer))
        teacher.save(t_model, out / field, t_recipe)
        extra[field] = str(out / field)
    return extra


SMALL = {"image_size": 32, "max_text_length": 16}


@pytest.mark.parametrize("name", family_names())
def test_family_learns_a_fixed_batch_and_round_trips(name: str, tmp_path: Path, scene_tokenizer) -> None:
    torch.manual_seed(0)
    family = get_family(name)
    recipe = family.recipe("tiny", {**SMALL, **teacher_overrides(family, scene_tokenizer, tmp_path / "teachers", SMALL)})
    model = family.build_model(recipe, len(scene_tokenizer), SPECIALS)
    counts = apply_freeze(family, model, recipe)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = fixed_batch(recipe, scene_tokenizer)
    losses = fit(family, model, recipe, batch)
    # half the loss in 25 steps; a family training only the parts before a frozen pretrained model: a quarter off
    assert losses[-1] < (0.5 if not frozen else 0.75) * losses[0], losses
    assert counts["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    for n, p in model.named_parameters():  # frozen parts did not move
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    family.save(model, tmp_path / "ckpt", recipe)
    loaded = family.load(tmp_path / "ckpt").eval()
    model.eval()
    batch.step = 0
    with torch.no_grad():
        a = family.training_step(model, batch, recipe)["loss"]
        b = family.training_step(loaded, batch, recipe)["loss"]
    assert torch.equal(a, b)
    if "retrieval" in family.capabilities:
        img = family.encode_images(loaded, batch.pixel_values)
        txt = family.encode_texts(loaded, batch.input_ids, batch.attention_mask)
        assert img.shape[0] == txt.shape[0] == 8
        assert torch.allclose(img.norm(dim=-1), torch.ones(8), atol=1e-5)
    if "generate" in family.capabilities:
        texts = family.generate_texts(loaded, batch.pixel_values[:2], scene_tokenizer, None, 6)
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_size_parameter_count(name: str) -> None:
    recipe_name, expected = PAPER_PARAMS[name]
    count = parameter_count(paper_size_model(name, 49408, recipe_name))
    assert abs(count - expected) / expected < 0.02, (count, expected)


def test_recipe_validation_and_registry() -> None:
    family = get_family("clip")
    with pytest.raises(UserError, match="field 'batch_size'"):
        family.recipe("tiny", {"batch_size": -1})
    with pytest.raises(UserError, match="field 'lr'"):
        family.recipe("tiny", {"lr": "fast"})
    with pytest.raises(UserError, match="field 'bogus'"):
        family.recipe("tiny", {"bogus": 1})
    with pytest.raises(UserError, match="has no recipe 'huge'"):
        family.recipe("huge")
    with pytest.raises(UserError, match="unknown family 'vilbert'"):
        get_family("vilbert")
    assert family.recipe("tiny", {"steps": 7}).steps == 7


def test_freeze_globs_freeze_exactly_what_they_match() -> None:
    family = get_family("clip")
    recipe = family.recipe("tiny", {**SMALL, "freeze": ["vision_model.*"]})
    model = family.build_model(recipe, 64, SPECIALS)
    counts = apply_freeze(family, model, recipe)
    names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert names and all(n.startswith("vision_model.") for n in names)
    assert counts["total_params"] - counts["trainable_params"] == sum(
        p.numel() for n, p in model.named_parameters() if n in names)
    with pytest.raises(UserError, match="freeze pattern 'nothing.here' matches no parameter"):
        apply_freeze(family, family.build_model(family.recipe("tiny", {**SMALL, "freeze": ["nothing.here"]}), 64, SPECIALS),
                     family.recipe("tiny", {**SMALL, "freeze": ["nothing.here"]}))
