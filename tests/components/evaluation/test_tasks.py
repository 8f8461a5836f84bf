"""The task registry: what fits which family and dataset, the one-line errors, and the suite."""
from pathlib import Path

import pytest
from eval_fixtures import make_dataset, one_torch_thread, shapes_dataset  # noqa: F401  (fixtures)
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
        "retrieval", "zero_shot_classification", "linear_probe", "vqa", "nlvr", "grounding", "nlu_probe"]
    assert set(skipped) == {"itm", "captioning", "vqa_few_shot", "vqav2", "nlvr2", "nlvr2_finetune", "detection"}
    assert "lacks capability itm" in skipped["itm"]


def test_tasks_that_do_not_fit_give_one_line(make_dataset) -> None:
    clip = get_family("clip")
    plain = make_dataset("plain", 12, with_facts=False, labels=False)
    data = dataset_offers(plain, "all")
    assert data == {"captions"}
    check_fit(["retrieval"], clip, data, "plain")
    cases = {
        "itm": "family 'clip' lacks capability itm that task 'itm' needs",
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
