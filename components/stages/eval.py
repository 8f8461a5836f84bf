"""Evaluate: a model + a dataset split -> an eval report (each task's metrics beside an untrained baseline's,
per-sample rows, plots). The tasks and the options (``components/evaluation/options.py``: class names, templates,
baseline, device) are checked against the family and the data before anything runs. The NLU probe of a model
whose text side started from a catalog text encoder (``text_init``, back an ``init_from`` chain) scores that
encoder too; its id is in the eval's config (``nlu_text_encoder_id``) and lineage (a parent after the dataset).

    vlforge run eval --model clip-shapes --data shapes --suite default
    vlforge run eval --model clip-in1k --data in1k --task zero_shot_classification --templates t.txt --device cuda"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from vlforge.catalog import Artifact, Catalog
from vlforge.components.models.registry import get_family
from vlforge.components.stages.base import Output, StageResult, on_cluster, require_kind, run_stage
from vlforge.components.stages.keys import stage_key
from vlforge.errors import UserError

if TYPE_CHECKING:
    from vlforge.components.evaluation.nlu_probe import TextEncoder
    from vlforge.components.evaluation.options import EvalOptions

SPLITS = ("train", "validation", "all")  # every dataset's; a benchmark layout may add its own (``test``)


def _check_split(split: str, dataset_dir: Path) -> None:
    manifest = dataset_dir / "manifest.json"
    present = list(json.loads(manifest.read_text())["splits"]) if manifest.is_file() else []
    allowed = [*SPLITS[:2], *(s for s in present if s not in SPLITS), "all"]
    if split not in allowed:
        raise UserError(f"--split '{split}' is not one of {', '.join(allowed)}")


def eval_plan(model_ref: str, data_ref: str, tasks: list[str], split: str, catalog: Catalog,
              options: EvalOptions | None = None) -> tuple[str, Artifact, Artifact]:
    """Check the eval stage's inputs and key it: ``(key, model, dataset)``. The key fingerprints the runner, the
    modules of the tasks asked for, the model's family and that of the text encoder the NLU probe also runs, and
    holds the options that change a number (class names, templates, whether the baseline runs, ``text_encoder``),
    not the device."""
    from vlforge.components.evaluation.options import EvalOptions, class_renames, resolve_device
    from vlforge.components.evaluation.tasks import check_fit, dataset_offers, get_task

    model = require_kind(catalog, model_ref, "model", "--model")
    dataset = require_kind(catalog, data_ref, "dataset", "--data")
    family = get_family(model.family or "")
    _check_split(split, catalog.path(dataset.id))
    if not tasks:
        raise UserError("no evaluation task given")
    check_fit(tasks, family, dataset_offers(catalog.path(dataset.id), split), dataset.name)
    options = options or EvalOptions()
    given = [f for f, v in (("--classnames", options.classnames), ("--templates", options.templates)) if v is not None]
    if given and "zero_shot_classification" not in tasks:
        raise UserError(f"{' and '.join(given)} apply to task zero_shot_classification, which this eval does not run")
    resolve_device(options.device)
    class_renames(options, catalog.path(dataset.id), dataset.name)
    runners = sorted({get_task(t).run.partition(":")[0] for t in tasks})
    families = [family.name, *_encoder_family(model, tasks, options, catalog)]
    key = stage_key("eval", {"model": model.id, "dataset": dataset.id}, eval_config(tasks, split, options,
                    catalog.path(dataset.id)), families, runners)
    return key, model, dataset


def _encoder_family(model: Artifact, tasks: list[str], options: EvalOptions, catalog: Catalog) -> list[str]:
    """The family of the text encoder the NLU probe will also run (its code is part of the key), or none."""
    from vlforge.components.evaluation.nlu_probe import probe_family

    encoder = _text_encoder(model, tasks, options, catalog)
    found = probe_family(encoder) if encoder is not None else None
    return [found[0].name] if isinstance(found, tuple) else []


def _text_encoder(model: Artifact, tasks: list[str], options: EvalOptions, catalog: Catalog) -> TextEncoder | None:
    """The text encoder the NLU probe compares the model with, found through the catalog, or None."""
    from vlforge.components.evaluation.nlu_probe import find_text_encoder

    if "nlu_probe" not in tasks or not options.text_encoder:
        return None
    return find_text_encoder(catalog.path(model.id), catalog, model)


def eval_config(tasks: list[str], split: str, options: EvalOptions, dataset_dir: Path) -> dict:
    """The eval's keyed config: its tasks, split and the options that change a number (``EvalOptions.key_config``)."""
    from vlforge.components.evaluation.options import split_size

    return {"tasks": sorted(tasks), "split": split, **options.key_config(split_size(dataset_dir, split), tasks)}


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
             ray_address: str | None = None, options: EvalOptions | None = None) -> StageResult:
    from vlforge.components.evaluation.options import EvalOptions

    options = options or EvalOptions()
    key, model, dataset = eval_plan(model_ref, data_ref, tasks, split, catalog, options)

    def work(folder: Path) -> Output:
        from vlforge.components.evaluation.nlu_probe import DELTA
        from vlforge.components.evaluation.runner import evaluate

        config = eval_config(tasks, split, options, catalog.path(dataset.id))
        encoder = _text_encoder(model, tasks, options, catalog)
        metrics = on_cluster(ray_address, evaluate, catalog.path(model.id), catalog.path(dataset.id), split,
                             sorted(tasks), folder, config["baseline"], options, encoder)
        report = json.loads((folder / "report.json").read_text())
        notes = report["tasks"].get("nlu_probe", {}).get("notes", {})
        if encoder is not None:  # the catalog's id where it has the encoder, else the folder the recipe names
            config |= {"nlu_text_encoder_id": encoder.id} if encoder.id else {"nlu_text_encoder": str(encoder.path)}
        if "nlu_text_encoder_note" in notes:
            config["nlu_text_encoder_note"] = notes["nlu_text_encoder_note"]
        compared = encoder is not None and encoder.id and DELTA in metrics
        return Output("eval", f"{model.name}-eval", folder, config | {"device": report["device"]},
                      [model.id, dataset.id, *([encoder.id] if compared else [])],
                      {k: round(v, 6) for k, v in metrics.items()}, model.family)

    return run_stage("eval", key, catalog, work)
