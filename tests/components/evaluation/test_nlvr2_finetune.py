"""NLVR2 fine-tuned as ViLT and VLMo measure it (``nlvr2_finetune``): offered only with train statements and a
fusion encoder, the two pooled pairs are the ones the ITM head reads, a copy fine-tunes (the checkpoint is never
changed), seeded, and it learns a statement's truth from its train split; scored with NLVR2's own metrics."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from eval_fixtures import make_dataset, one_torch_thread, shapes_dataset, tiny_clip_dir, write_shapes_dataset  # noqa: F401
from vlforge.components.data.loader import read_split
from vlforge.components.evaluation import nlvr2_finetune
from vlforge.components.evaluation.nlvr2 import nlvr2_metrics
from vlforge.components.evaluation.tasks import EvalContext, check_fit, dataset_offers, fit_gap, get_task, run_task
from vlforge.components.models.registry import get_family, read_family_file, special_token_ids
from vlforge.components.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

from vlforge.errors import UserError

# a wide initialisation: at the recipes' 0.088 an untrained tiny model's pooled vectors are nearly all the same
# (cosine 0.9997 between pairs), and breaking that takes far more steps than a test affords
SMALL = {"image_size": 32, "patch_size": 8, "max_text_length": 16, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
         "initializer_range": 0.5}
TRAIN_PAIRS = 8  # of 12: pairs 0-7 train, 8-11 validation


def nlvr2_split_extra(i: int, scene) -> dict:
    """Scene 2k is pair k's left image, 2k+1 its right; pair k's two statements: the left scene's caption (true) and
    "nothing at all" (false), a truth the text alone tells."""
    k = i // 2
    split, prefix = ("train", "train") if k < TRAIN_PAIRS else ("validation", "dev")
    pair = f"{prefix}-1-{k}"
    if i % 2:
        return {"nlvr2_pair": pair, "nlvr2_side": "right", "split": split}
    right = f"shapes-0-{i + 1:06d}"
    statements = [{"identifier": f"{pair}-0", "sentence": scene.caption, "label": True, "right": right},
                  {"identifier": f"{pair}-1", "sentence": "nothing at all", "label": False, "right": right}]
    return {"nlvr2_pair": pair, "nlvr2_side": "left", "nlvr2": statements, "split": split}


@pytest.fixture(scope="module")
def nlvr2_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "nlvr2", 24, with_facts=False, extra=nlvr2_split_extra)


def _save_tiny(family_name: str, out: Path, captions_from: Path, **overrides) -> Path:
    captions = pq.read_table(captions_from / "samples.parquet", columns=["caption"]).column("caption").to_pylist()
    train_tokenizer([*captions, "nothing at all"], out, TokenizerConfig(vocab_size=128))
    tokenizer = load_tokenizer(out)
    family = get_family(family_name)
    recipe = family.recipe("tiny", {**SMALL, **overrides})
    torch.manual_seed(2)
    family.save(family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer)), out, recipe)
    return out


@pytest.fixture(scope="module")
def tiny_vilt_dir(tmp_path_factory: pytest.TempPathFactory, nlvr2_dataset: Path) -> Path:
    return _save_tiny("vilt", tmp_path_factory.mktemp("model") / "vilt", nlvr2_dataset)


@pytest.fixture(scope="module")
def tiny_vlmo_dir(tmp_path_factory: pytest.TempPathFactory, nlvr2_dataset: Path) -> Path:
    return _save_tiny("vlmo", tmp_path_factory.mktemp("model") / "vlmo", nlvr2_dataset, num_layers=2, vlffn_start_layer=1)


def context(model_dir: Path, dataset: Path, split: str = "validation") -> EvalContext:
    family, recipe = read_family_file(model_dir)
    return EvalContext(family, family.load(model_dir).eval(), recipe, load_tokenizer(model_dir), read_split(dataset, split),
                       lambda: read_split(dataset, "train"))


def test_offered_only_with_train_statements_and_a_fusion_encoder(tiny_vilt_dir: Path, tiny_clip_dir: Path,
                                                                 nlvr2_dataset: Path, make_dataset) -> None:
    spec = get_task("nlvr2_finetune")
    vilt, clip = read_family_file(tiny_vilt_dir)[0], read_family_file(tiny_clip_dir)[0]
    offers = dataset_offers(nlvr2_dataset, "validation")
    assert {"nlvr2", "nlvr2_train"} <= offers and "nlvr2_train" not in dataset_offers(nlvr2_dataset, "train")
    check_fit(["nlvr2_finetune"], vilt, offers, "nlvr2")
    assert fit_gap(spec, get_family("vlmo"), offers) is None
    with pytest.raises(UserError, match="family 'clip' lacks capability fused_features"):
        check_fit(["nlvr2_finetune"], clip, offers, "nlvr2")
    dev_only = make_dataset("dev-only", 8, with_facts=False,
                            extra=lambda i, scene: {**nlvr2_split_extra(i, scene), "split": "validation"})
    with pytest.raises(UserError, match="lacks NLVR2 statements in a train split"):
        check_fit(["nlvr2_finetune"], vilt, dataset_offers(dev_only, "validation"), "dev-only")


def test_fused_features_are_what_the_itm_head_reads(tiny_vilt_dir: Path, tiny_vlmo_dir: Path, nlvr2_dataset: Path) -> None:
    for model_dir in (tiny_vilt_dir, tiny_vlmo_dir):
        ctx = context(model_dir, nlvr2_dataset)
        pixels = ctx.pixels(ctx.images()[:3])
        ids, mask = ctx.tokens([s.caption for s in ctx.samples[:3]])
        pooled = ctx.family.fused_features(ctx.model, pixels, ids, mask)
        assert pooled.shape == (3, SMALL["hidden_size"]) and pooled.requires_grad
        core = ctx.model
        itm = core.itm_score(pooled) if ctx.family.name == "vilt" else core.itm_head(pooled)
        assert torch.allclose(itm[:, 1] - itm[:, 0], ctx.family.score_pairs(ctx.model, pixels, ids, mask), atol=1e-5)


@pytest.mark.parametrize("which", ["vilt", "vlmo"])
def test_nlvr2_finetune_learns_from_the_train_split(which: str, request: pytest.FixtureRequest, nlvr2_dataset: Path,
                                                    monkeypatch) -> None:
    model_dir = request.getfixturevalue(f"tiny_{which}_dir")
    monkeypatch.setattr(nlvr2_finetune, "EPOCHS", 8)  # 16 train statements: one step a pass
    ctx = context(model_dir, nlvr2_dataset)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    out = run_task("nlvr2_finetune", ctx)
    assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())  # the checkpoint is untouched
    m, rows = out.metrics, out.rows
    assert m["nlvr2_finetune_train_statements"] == 2 * TRAIN_PAIRS and m["nlvr2_finetune_statements"] == 8
    assert all(i.startswith("dev-") for i in rows["identifier"])  # scored on the evaluated split only
    expected = nlvr2_metrics(rows["identifier"], rows["label"], rows["prediction"])
    assert m["nlvr2_finetune_accuracy"] == expected["nlvr2_accuracy"]
    assert m["nlvr2_finetune_consistency"] == expected["nlvr2_consistency"]
    assert rows["prediction"] == [p > 0.5 for p in rows["probability_true"]]
    assert m["nlvr2_finetune_accuracy"] > m["nlvr2_finetune_majority"], m  # it learned the truth from train
    assert run_task("nlvr2_finetune", context(model_dir, nlvr2_dataset)).metrics == m  # seeded
