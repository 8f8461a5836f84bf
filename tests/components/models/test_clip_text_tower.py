"""CLIP with a pretrained HF text tower (open_clip's HFTextEncoder): the packaged all-MiniLM-L6-v2 loads with its
weights, lock_text freezes it (but the last N layers), a training step moves only what trains, checkpoints
round-trip through ClipFamily.load and AutoModel, the embeddings behave, and mismatches are UserErrors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, CLIPModel
from vlforge.components.models.clip import ClipFamily, hf_text
from vlforge.components.models.clip.hf_text import HFTextCLIPModel, minilm_dir
from vlforge.components.models.registry import ImageTextBatch
from vlforge.components.models.registry import special_token_ids as _special_ids
from vlforge.components.training.loop import _param_groups

from vlforge.errors import UserError

SMALL = {"image_size": 32, "vision_width": 32, "vision_layers": 1, "vision_heads": 2, "patch_size": 8, "embed_dim": 16,
         "max_text_length": 16}
CAPTIONS = ["a red circle", "two blue squares", "a small green triangle above a circle", "three yellow stars"]
BPE_SPECIALS = {"pad": 0, "unk": 1, "mask": 2, "bos": 3, "eos": 4}  # what the project's trained tokenizers use


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)


@pytest.fixture(scope="module")
def tower():
    return AutoModel.from_pretrained(minilm_dir(), local_files_only=True).eval()


def build(tokenizer, **overrides):
    family = ClipFamily()
    recipe = family.recipe("tiny-minilm", {**SMALL, **overrides})
    torch.manual_seed(0)
    return family, recipe, family.build_model(recipe, len(tokenizer), _special_ids(tokenizer))


@pytest.fixture(scope="module")
def locked(tokenizer):
    return build(tokenizer)


def batch_for(tokenizer, recipe) -> ImageTextBatch:
    enc = tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=recipe.max_text_length, return_tensors="pt")
    pixels = torch.randn(len(CAPTIONS), 3, recipe.image_size, recipe.image_size, generator=torch.Generator().manual_seed(0))
    return ImageTextBatch(pixels, enc["input_ids"], enc["attention_mask"], CAPTIONS, [str(i) for i in range(len(CAPTIONS))])


def test_recipe_and_pretrained_tower_weights(locked, tower) -> None:
    _, recipe, model = locked
    assert recipe.text_tower == "minilm" and recipe.lock_text and recipe.text_pooler == "mean"
    assert isinstance(model, HFTextCLIPModel) and model.config.model_type == "vlforge_hf_text_clip"
    assert model.config.text_config.model_type == "bert" and model.text_projection.weight.shape == (16, 384)
    ours = model.text_model.state_dict()
    theirs = {k: v for k, v in tower.state_dict().items() if not k.startswith("pooler.")}  # the pooler head is unused
    assert set(ours) == set(theirs)
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
        assert torch.equal(ours[key], theirs[key]), key


def test_full_tiny_minilm_recipe_trains_a_small_fraction(tokenizer) -> None:
    family = ClipFamily()
    model = family.build_model(family.recipe("tiny-minilm"), len(tokenizer), _special_ids(tokenizer))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tower = sum(p.numel() for p in model.text_model.parameters())
    assert 22_000_000 < tower < 23_000_000 and total - trainable == tower
    assert trainable == sum(p.numel() for p in model.vision_model.parameters()) + 128 * 128 + 384 * 128 + 1


def test_lock_text_training_step_moves_only_the_trainable(tokenizer) -> None:
    family, recipe, model = build(tokenizer)
    assert not any(p.requires_grad for p in model.text_model.parameters())
    assert model.text_projection.weight.requires_grad and model.visual_projection.weight.requires_grad
    assert all(p.requires_grad for p in model.vision_model.parameters()) and model.logit_scale.requires_grad
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr)
    losses = family.training_step(model, batch_for(tokenizer, recipe), recipe)
    assert torch.isfinite(losses["loss"])
    opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    assert all(p.grad is None for p in model.text_model.parameters())
    opt.step()
    family.after_optimizer_step(model, recipe)
    after = dict(model.named_parameters())
    assert not torch.equal(before["text_projection.weight"], after["text_projection.weight"])
    assert not torch.equal(before["visual_projection.weight"], after["visual_projection.weight"])
    tower_keys = [k for k in before if k.startswith("text_model.")]
    assert tower_keys and all(torch.equal(before[k], after[k]) for k in tower_keys)


def test_unlocked_layers_and_unlocked_tower(tokenizer) -> None:
    _, _, partial = build(tokenizer, lock_text_unlocked_layers=2)
    for name, p in partial.text_model.named_parameters():
        assert p.requires_grad == name.startswith(("encoder.layer.4.", "encoder.layer.5.")), name
    _, _, free = build(tokenizer, lock_text=False)
    assert all(p.requires_grad for p in free.parameters())
    with pytest.raises(UserError, match="only 6 layers"):
        build(tokenizer, lock_text_unlocked_layers=7)


def test_checkpoint_round_trips_without_the_tower_dir(locked, tokenizer, tmp_path: Path, monkeypatch) -> None:
    family, recipe, model = locked
    model.eval()
    family.save(model, tmp_path / "ckpt", recipe)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["model_type"] == "vlforge_hf_text_clip"

    def no_tower(*_a, **_k):
        raise AssertionError("loading a checkpoint must not need the original tower")

    monkeypatch.setattr(hf_text, "resolve_text_tower", no_tower)
    monkeypatch.setattr(hf_text, "minilm_dir", no_tower)
    loaded = family.load(tmp_path / "ckpt").eval()
    auto = AutoModel.from_pretrained(tmp_path / "ckpt", local_files_only=True).eval()
    assert type(loaded) is HFTextCLIPModel and type(auto) is HFTextCLIPModel
    assert not any(p.requires_grad for p in loaded.text_model.parameters())  # the lock comes back with the config
    batch = batch_for(tokenizer, recipe)
    with torch.no_grad():
        ref = family.encode_texts(model, batch.input_ids, batch.attention_mask), family.encode_images(model, batch.pixel_values)
        for other in (loaded, auto):
            assert torch.equal(family.encode_texts(other, batch.input_ids, batch.attention_mask), ref[0])
            assert torch.equal(family.encode_images(other, batch.pixel_values), ref[1])
            assert torch.equal(family.training_step(other, batch, recipe)["loss"], family.training_step(model, batch, recipe)["loss"])


def test_text_embeddings_are_deterministic_normalised_and_semantic(locked, tokenizer, tower) -> None:
    family, recipe, model = locked
    model.eval()
    texts = ["a red circle", "a red circle.", "financial markets crashed"]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=recipe.max_text_length, return_tensors="pt")
    with torch.no_grad():
        a = family.encode_texts(model, enc["input_ids"], enc["attention_mask"])
        b = family.encode_texts(model, enc["input_ids"], enc["attention_mask"])
        pooled = model.pooled_text(enc["input_ids"], enc["attention_mask"])
        hidden = tower(**tokenizer(texts, padding=True, return_tensors="pt")).last_hidden_state
    assert torch.equal(a, b) and a.shape == (3, 16)
    assert torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
    # mean pooling over the mask: padding to max_length changes nothing (sentence-transformers' pooling)
    short = tokenizer(texts, padding=True, return_tensors="pt")["attention_mask"].unsqueeze(-1).float()
    assert torch.allclose(pooled, (hidden * short).sum(1) / short.sum(1), atol=1e-4)
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled[0], pooled[1], dim=0) > cos(pooled[0], pooled[2], dim=0) + 0.3


def test_cls_pooler_takes_the_first_token(tokenizer, tower) -> None:
    _, recipe, model = build(tokenizer, text_pooler="cls")
    enc = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model.eval().pooled_text(enc["input_ids"], enc["attention_mask"]),
                              tower(**enc).last_hidden_state[:, 0], atol=1e-5)


def test_plain_recipe_still_builds_a_clip_model(tmp_path: Path) -> None:
    family = ClipFamily()
    recipe = family.recipe("tiny", SMALL)
    model = family.build_model(recipe, 64, BPE_SPECIALS)
    assert type(model) is CLIPModel
    family.save(model, tmp_path / "plain", recipe)
    assert type(family.load(tmp_path / "plain")) is CLIPModel
    assert type(CLIPModel.from_pretrained(tmp_path / "plain", local_files_only=True)) is CLIPModel


def test_mismatches_are_one_line_user_errors(tokenizer, tmp_path: Path) -> None:
    family = ClipFamily()
    specials = _special_ids(tokenizer)
    cases = [
        ({"text_tower": str(tmp_path / "missing")}, len(tokenizer), specials, "not a local Hugging Face model directory"),
        ({}, len(tokenizer) + 1, specials, "more than the tower's vocab_size 30522"),
        ({}, 512, BPE_SPECIALS, "unk id is 1, the tower's is 100"),  # a trained tokenizer, not the tower's
        ({"max_text_length": 600}, len(tokenizer), specials, "exceeds .* 512 positions"),
    ]
    for overrides, vocab, special_ids, message in cases:
        recipe = family.recipe("tiny-minilm", {**SMALL, **overrides})
        with pytest.raises(UserError, match=message) as err:
            family.build_model(recipe, vocab, special_ids)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="field 'text_pooler'"):
        family.recipe("tiny-minilm", {"text_pooler": "max"})
    with pytest.raises(UserError, match="not a CLIP"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
        family.load(tmp_path / "other")
