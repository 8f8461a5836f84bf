"""Evaluate: a model + a dataset split -> an eval report (each task's metrics beside an untrained baseline's,
per-sample rows, plots). The tasks are checked against the family and the data before anything runs.

    vlforge run eval --model clip-shapes --data shapes --suite default"""
from __future__ import annotations

import json
from pathlib import Path

from vlforge.catalog import Artifact, Catalog
from vlforge.components.models.registry import get_family
from vlforge.components.stages.base import Output, StageResult, on_cluster, require_kind, run_stage
from vlforge.components.stages.keys import stage_key
from vlforge.errors import UserError

SPLITS = ("train", "validation", "all")  # every dataset's; a benchmark layout may add its own (``test``)


def _check_split(split: str, dataset_dir: Path) -> None:
    manifest = dataset_dir / "manifest.json"
    present = list(json.loads(manifest.read_text())["splits"]) if manifest.is_file() else []
    allowed = [*SPLITS[:2], *(s for s in present if s not in SPLITS), "all"]
    if split not in allowed:
        raise UserError(f"--split '{split}' is not one of {', '.join(allowed)}")


def eval_plan(model_ref: str, data_ref: str, tasks: list[str], split: str, catalog: Catalog) -> tuple[str, Artifact, Artifact]:
    """Check the eval stage's inputs and key it: ``(key, model, dataset)``. The key fingerprints the runner, the
    modules of the tasks asked for and the model's family."""
    from vlforge.components.evaluation.tasks import check_fit, dataset_offers, get_task

    model = require_kind(catalog, model_ref, "model", "--model")
    dataset = require_kind(catalog, data_ref, "dataset", "--data")
    family = get_family(model.family or "")
    _check_split(split, catalog.path(dataset.id))
    if not tasks:
        raise UserError("no evaluation task given")
    check_fit(tasks, family, dataset_offers(catalog.path(dataset.id), split), dataset.name)
    runners = sorted({get_task(t).run.partition(":")[0] for t in tasks})
    key = stage_key("eval", {"model": model.id, "dataset": dataset.id}, {"tasks": sorted(tasks), "split": split},
                    [family.name], runners)
    return key, model, dataset


def eval_suite(model_ref: str, data_ref: str, suite: str, split: str, catalog: Catalog) -> tuple[list[str], dict[str, str]]:
    """The tasks of ``suite`` that fit the model's family and the dataset split, and why the others do not."""
    from vlforge.components.evaluation.tasks import dataset_offers, suite_tasks

    model = require_kind(catalog, model_ref, "model", "--model")
    dataset = require_kind(catalog, data_ref, "dataset", "--data")
    _check_split(split, catalog.path(dataset.id))
    tasks, skipped = suite_tasks(suite, get_family(model.family or ""), dataset_offers(catalog.path(dataset.id), split))
    if not tasks:
        raise UserError(f"no task of suite '{suite}' fits model '{model_ref}' and dataset '{data_ref}'")
    return tasks, skipped


def run_eval(model_ref: str, data_ref: str, tasks: list[str], split: str, catalog: Catalog,
             ray_address: str | None = None) -> StageResult:
    key, model, dataset = eval_plan(model_ref, data_ref, tasks, split, catalog)

    def work(folder: Path) -> Output:
        from vlforge.components.evaluation.runner import evaluate

        metrics = on_cluster(ray_address, evaluate, catalog.path(model.id), catalog.path(dataset.id), split,
                             sorted(tasks), folder)
        return Output("eval", f"{model.name}-eval", folder, {"tasks": sorted(tasks), "split": split},
                      [model.id, dataset.id], {k: round(v, 6) for k, v in metrics.items()}, model.family)

    return run_stage("eval", key, catalog, work)
