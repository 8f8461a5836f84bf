"""The battery every registered family passes: build, forward/backward, learn a fixed batch, save/load round-trip,
recipe validation, and the paper-size recipe's parameter count (built on the meta device)."""
from pathlib import Path

import pytest
import torch
from vlforge.components.models.registry import ImageTextBatch, family_names, get_family

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
SPECIALS = {"pad": 0, "unk": 1, "mask": 2, "bos": 3, "eos": 4}


def fixed_batch(recipe, n: int = 8, vocab: int = 64) -> ImageTextBatch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (n, recipe.max_text_length), generator=g)
    ids[:, 0] = SPECIALS["bos"]
    lengths = torch.randint(4, recipe.max_text_length, (n,), generator=g)
    mask = torch.zeros_like(ids)
    for i, length in enumerate(lengths.tolist()):
        ids[i, length - 1] = SPECIALS["eos"]
        ids[i, length:] = SPECIALS["pad"]
        mask[i, :length] = 1
    pixels = torch.randn(n, 3, recipe.image_size, recipe.image_size, generator=g)
    return ImageTextBatch(pixels, ids, mask, [f"c{i}" for i in range(n)], [f"k{i}" for i in range(n)])


@pytest.mark.parametrize("name", family_names())
def test_family_learns_a_fixed_batch_and_round_trips(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    family = get_family(name)
    recipe = family.recipe("tiny", {"image_size": 32, "max_text_length": 12})
    model = family.build_model(recipe, 64, SPECIALS)
    batch = fixed_batch(recipe)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(25):
        out = family.training_step(model, batch, recipe)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        family.after_optimizer_step(model, recipe)
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    family.save(model, tmp_path / "ckpt", recipe)
    loaded = family.load(tmp_path / "ckpt").eval()
    model.eval()
    with torch.no_grad():
        a = family.training_step(model, batch, recipe)["loss"]
        b = family.training_step(loaded, batch, recipe)["loss"]
    assert torch.equal(a, b)
    if "retrieval" in family.capabilities:
        img = family.encode_images(loaded, batch.pixel_values)
        txt = family.encode_texts(loaded, batch.input_ids, batch.attention_mask)
        assert img.shape[0] == txt.shape[0] == 8
        assert torch.allclose(img.norm(dim=-1), torch.ones(8), atol=1e-5)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_size_parameter_count(name: str) -> None:
    recipe_name, expected = PAPER_PARAMS[name]
    family = get_family(name)
    with torch.device("meta"):
        model = family.build_model(family.recipe(recipe_name), 49408, SPECIALS)
    count = sum(p.numel() for p in model.parameters())
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
