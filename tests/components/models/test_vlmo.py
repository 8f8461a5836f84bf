"""VLMo-specific checks (the shared battery in test_families.py covers learning, save/load and the paper size):
the VL-FFN only in the top layers, stagewise freezing really freezes, hard negatives are never the positive,
and stages chain through ``init_from`` with one-line errors for a wrong checkpoint."""
from pathlib import Path

import pytest
import torch
from conftest import SPECIALS, paper_size_model
from vlforge.components.models.heads import same_sample_mask, sample_negatives
from vlforge.components.models.registry import (
    ImageTextBatch,
    get_family,
    read_family_file,
)

from vlforge.errors import UserError

SMALL = {"image_size": 32, "max_text_length": 12}


def batch(n: int = 6) -> ImageTextBatch:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 64, (n, 12), generator=g)
    ids[:, 0], ids[:, -1] = SPECIALS["bos"], SPECIALS["eos"]
    return ImageTextBatch(torch.randn(n, 3, 32, 32, generator=g), ids, torch.ones_like(ids), ["c"] * n, [f"k{i}" for i in range(n)])


def test_vl_ffn_only_in_the_top_layers() -> None:
    model = paper_size_model("vlmo", 30522)
    assert len(model.blocks) == 12
    for i, block in enumerate(model.blocks):
        assert block.with_vlffn == (i >= 10) == hasattr(block, "mlp_vl"), i
        assert hasattr(block, "mlp_text") and hasattr(block, "mlp_imag")
    family = get_family("vlmo")
    with pytest.raises(UserError, match="vlffn_start_layer 3 leaves no VL-FFN"):
        family.build_model(family.recipe("tiny", {**SMALL, "vlffn_start_layer": 3}), 64, SPECIALS)


def _step(stage: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    family = get_family("vlmo")
    recipe = family.recipe("tiny", {**SMALL, "stage": stage})
    model = family.build_model(recipe, 64, SPECIALS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    family.training_step(model, batch(), recipe)["loss"].backward()
    opt.step()
    return before, dict(model.named_parameters())


def _changed(before: dict, after: dict, *parts: str) -> dict[str, bool]:
    return {n: not torch.equal(before[n], after[n]) for n in before if any(p in n for p in parts)}


def test_stage2_leaves_attention_and_vision_expert_unchanged() -> None:
    before, after = _step(2)
    frozen = _changed(before, after, ".attn.", ".norm1.", ".mlp_imag.", ".norm2_imag.", "image_embeddings.", ".mlp_vl.")
    assert frozen and not any(frozen.values()), [n for n, c in frozen.items() if c]
    assert not after["blocks.0.attn.qkv.weight"].requires_grad
    trained = _changed(before, after, ".mlp_text.fc1.weight", "text_embeddings.word_embeddings")
    assert trained and all(trained.values()), trained


def test_stage1_trains_only_the_vision_side() -> None:
    before, after = _step(1)
    frozen = _changed(before, after, "text_embeddings.", ".mlp_text.", ".mlp_vl.", "itc_", "itm_head")
    assert frozen and not any(frozen.values()), [n for n, c in frozen.items() if c]
    trained = _changed(before, after, ".attn.qkv.weight", ".mlp_imag.fc1.weight", "image_embeddings.proj.weight")
    assert trained and all(trained.values()), trained


def test_hard_negatives_are_never_the_positive_and_follow_similarity() -> None:
    sim = torch.full((4, 4), -5.0)
    sim.fill_diagonal_(50.0)  # the positive is by far the most similar: it must still never be drawn
    sim[0, 2] = 5.0  # row 0's hardest negative
    picks = torch.stack([sample_negatives(sim, "hard", generator=torch.Generator().manual_seed(s)) for s in range(200)])
    assert (picks != torch.arange(4)).all()
    assert (picks[:, 0] == 2).float().mean() > 0.95  # drawn ∝ softmax(sim)
    assert (picks[:, 1] != 1).all() and len(set(picks[:, 1].tolist())) == 3  # flat row: any other column
    keys = ["a", "b", "a", "c"]  # rows 0 and 2 are the same sample: never each other's negative either
    forbid = same_sample_mask(keys)
    for s in range(50):
        p = sample_negatives(torch.randn(4, 4), "hard", forbid, torch.Generator().manual_seed(s))
        assert all(keys[i] != keys[j] for i, j in enumerate(p.tolist()))


def test_itm_negatives_are_random_for_the_first_steps_then_hard() -> None:
    family = get_family("vlmo")
    recipe = family.recipe("tiny", {**SMALL, "itm_random_negative_steps": 5})
    model = family.build_model(recipe, 64, SPECIALS)
    seen = []
    original = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["hard_negatives"])
        return original(*args, **kwargs)

    model.forward = spy
    for step in (0, 4, 5, 9):
        pairs = batch()
        pairs.captions, pairs.step = [f"caption {i}" for i in range(len(pairs.keys))], step
        family.training_step(model, pairs, recipe)
    assert seen == [False, False, True, True]
    assert family.recipe("base").itm_random_negative_steps == 0  # the paper's recipe: hard from the first step


def test_the_model_draws_uniform_negatives_when_not_hard() -> None:
    """``VlmoModel.forward(hard_negatives=...)`` itself: with a peaked ITC similarity, hard sampling picks each
    image's hardest text (and text's hardest image) nearly always, uniform sampling about 1 in B-1 times."""
    torch.manual_seed(0)
    family = get_family("vlmo")
    recipe = family.recipe("tiny", SMALL)
    model = family.build_model(recipe, 64, SPECIALS).eval()  # eval: no dropout, so the similarity is fixed
    pairs = batch(8)
    mlm_ids = pairs.input_ids.clone()
    mlm_labels = torch.full_like(mlm_ids, -100)
    mlm_labels[:, 1] = mlm_ids[:, 1]
    with torch.no_grad():
        model.logit_scale.fill_(torch.log(torch.tensor(1000.0)))  # sharp softmax: hard means the hardest
        text_h, _ = model.encode_text(pairs.input_ids, pairs.attention_mask)
        image_h, _ = model.encode_image(pairs.pixel_values)
        txt, img = model.itc_features(text_h[:, 0], image_h[:, 0])
        sim = (txt @ img.t()).fill_diagonal_(float("-inf"))
    hardest_image, hardest_text = sim.argmax(dim=1), sim.argmax(dim=0)
    drawn = []
    original = model.fuse
    model.fuse = lambda ids, masks, pixels: (drawn.append((ids[16:], pixels[16:])), original(ids, masks, pixels))[1]

    def share_of_hardest(hard: bool) -> float:
        hits = total = 0
        for seed in range(40):
            drawn.clear()
            with torch.no_grad():
                model(3, pairs.pixel_values, pairs.input_ids, pairs.attention_mask, mlm_ids, mlm_labels,
                      generator=torch.Generator().manual_seed(seed), gather=False, hard_negatives=hard)
            ids, pixels = drawn[0]
            # rows 0..7: text i with a negative image; rows 8..15: image j with a negative text
            image_of = [next(k for k in range(8) if torch.equal(pixels[i], pairs.pixel_values[k])) for i in range(8)]
            text_of = [next(k for k in range(8) if torch.equal(ids[8 + j], pairs.input_ids[k])) for j in range(8)]
            hits += sum(image_of[i] == hardest_image[i] for i in range(8)) + sum(text_of[j] == hardest_text[j] for j in range(8))
            total += 16
        return hits / total

    assert share_of_hardest(True) > 0.9
    assert share_of_hardest(False) < 0.3  # uniform over the 7 others: 1/7


def test_stages_chain_through_init_from(tmp_path: Path) -> None:
    torch.manual_seed(0)
    family = get_family("vlmo")
    stage1 = family.recipe("tiny-stage1", SMALL)
    model = family.build_model(stage1, 64, SPECIALS)
    family.save(model, tmp_path / "s1", stage1)
    stage2 = family.recipe("tiny-stage2", {**SMALL, "init_from": str(tmp_path / "s1")})
    continued = family.build_model(stage2, 64, SPECIALS)
    for (n, a), (_, b) in zip(model.state_dict().items(), continued.state_dict().items()):
        assert torch.equal(a, b), n
    family.save(continued, tmp_path / "s2", stage2)  # its recipe forgets init_from: a rebuilt recipe is a fresh model
    _, saved_recipe = read_family_file(tmp_path / "s2")
    assert saved_recipe.init_from is None and saved_recipe.stage == 2
    with pytest.raises(UserError, match="its hidden_size is 128, this recipe's is 64"):
        family.build_model(family.recipe("tiny", {**SMALL, "hidden_size": 64, "init_from": str(tmp_path / "s1")}), 64, SPECIALS)
    vilt = get_family("vilt")
    vilt.save(vilt.build_model(vilt.recipe("tiny", SMALL), 64, SPECIALS), tmp_path / "v", vilt.recipe("tiny", SMALL))
    with pytest.raises(UserError, match="is a 'vilt' model"):
        family.build_model(family.recipe("tiny", {**SMALL, "init_from": str(tmp_path / "v")}), 64, SPECIALS)
    with pytest.raises(UserError, match="not a vlforge model directory"):
        family.build_model(family.recipe("tiny", {**SMALL, "init_from": str(tmp_path)}), 64, SPECIALS)


def test_one_checkpoint_is_dual_and_fusion_encoder() -> None:
    torch.manual_seed(0)
    family = get_family("vlmo")
    assert {"retrieval", "itm"} <= family.capabilities
    model = family.build_model(family.recipe("tiny", SMALL), 64, SPECIALS).eval()
    b = batch(4)
    with torch.no_grad():
        img, txt = family.encode_images(model, b.pixel_values), family.encode_texts(model, b.input_ids, b.attention_mask)
        scores = family.score_pairs(model, b.pixel_values, b.input_ids, b.attention_mask)
    assert img.shape == txt.shape == (4, 128) and scores.shape == (4,)


def test_loss_weights_are_the_released_ones() -> None:
    """microsoft/unilm vlmo/modules/objectives.py: compute_mlm returns the image-text MLM loss x 0.25, ITM and the
    (already 0.5-averaged) ITC unscaled; the training step sums them. The recipes and the step use exactly that."""
    family = get_family("vlmo")
    released = {"itc_weight": 1.0, "itm_weight": 1.0, "mlm_weight": 0.25}
    for name in ("tiny", "base"):
        recipe = family.recipe(name)
        assert {k: getattr(recipe, k) for k in released} == released, name
    assert {k: getattr(family.recipe_cls(), k) for k in released} == released
    torch.manual_seed(0)
    recipe = family.recipe("tiny", {**SMALL, "itm_random_negative_steps": 0})
    model = family.build_model(recipe, 64, SPECIALS)
    out = family.training_step(model, batch(), recipe)
    assert float(out["loss"].detach()) == pytest.approx(float(out["itc"] + out["itm"] + 0.25 * out["mlm"]), rel=1e-5)
    assert float(out["mlm"]) > 0
