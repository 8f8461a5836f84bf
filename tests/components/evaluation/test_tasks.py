"""The task registry: what fits which family and dataset, the one-line errors, and the suite."""
from pathlib import Path

import pytest
from eval_fixtures import clip_context, make_dataset, one_torch_thread, shapes_dataset, tiny_clip_dir  # noqa: F401  (fixtures)
from vlforge.components.evaluation.tasks import (
    CAPABILITIES,
    TASKS,
    check_fit,
    dataset_offers,
    family_offers,
    suite_tasks,
)
from vlforge.components.models.registry import get_family

from vlforge.errors import UserError


def test_every_task_names_known_capabilities_and_a_runner() -> None:
    import importlib

    for spec in TASKS.values():
        assert all(cap in CAPABILITIES for need in spec.model_any for cap in need), spec.name
        module, _, fn = spec.run.partition(":")
        assert callable(getattr(importlib.import_module(module), fn)), spec.run


def test_clip_offers_and_suite(shapes_dataset: Path) -> None:
    clip = get_family("clip")
    assert {"retrieval", "pair_scoring", "image_features"} <= family_offers(clip)
    data = dataset_offers(shapes_dataset, "validation")
    assert data == {"captions", "labels", "train_labels", "facts", "boxes"}
    # the probe fits on train: scored on train (or all) it would grade its own fit, so it does not fit there
    assert dataset_offers(shapes_dataset, "train") == {"captions", "labels", "facts", "boxes"}
    assert "linear_probe" in suite_tasks("default", clip, dataset_offers(shapes_dataset, "all"))[1]
    tasks, skipped = suite_tasks("default", clip, data)
    assert tasks == [
        "retrieval", "zero_shot_classification", "linear_probe", "itm", "vqa", "nlvr", "grounding", "nlu_probe"]
    assert set(skipped) == {"captioning", "vqa_few_shot", "vqav2", "nlvr2", "nlvr2_finetune", "detection"}


def test_tasks_that_do_not_fit_give_one_line(make_dataset) -> None:
    clip = get_family("clip")
    plain = make_dataset("plain", 12, with_facts=False, labels=False)
    data = dataset_offers(plain, "all")
    assert data == {"captions"}
    check_fit(["retrieval"], clip, data, "plain")
    cases = {
        "nlvr2_finetune": "family 'clip' lacks capability fused_features that task 'nlvr2_finetune' needs",
        "captioning": "family 'clip' lacks capability generate that task 'captioning' needs",
        "vqa": "dataset 'plain' lacks scene facts per sample (builtin:shapes datasets), which task 'vqa' needs",
        "zero_shot_classification": "dataset 'plain' lacks a class label",
        "nope": "unknown evaluation task 'nope'",
    }
    for task, message in cases.items():
        with pytest.raises(UserError) as err:
            check_fit([task], clip, data, "plain")
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="unknown suite 'big'"):
        suite_tasks("big", clip, data)


def test_a_dual_encoder_is_scored_on_itm_by_its_cosine(tiny_clip_dir: Path, shapes_dataset: Path) -> None:
    """CLIP as the ITM reference: the true caption against the swapped one ranked by cosine similarity; no yes/no
    accuracy (a cosine has no threshold); text-lm, with neither a head nor embeddings, cannot run the task."""
    from vlforge.components.evaluation.tasks import run_task

    ctx = clip_context(tiny_clip_dir, shapes_dataset, "all")
    out = run_task("itm", ctx)
    assert out.metrics["itm_scored_by_cosine"] == 1.0 and "itm_accuracy" not in out.metrics
    pos, neg = out.rows["pos_cosine"], out.rows["neg_cosine"]
    assert out.metrics["itm_pair_accuracy"] == pytest.approx(sum(p > n for p, n in zip(pos, neg)) / len(pos))
    assert all(-1.0001 <= v <= 1.0001 for v in pos + neg)
    with pytest.raises(UserError, match="lacks capability itm or retrieval"):
        check_fit(["itm"], get_family("text-lm"), frozenset({"captions"}), "plain")
