"""Running evaluation tasks on a model directory and a dataset directory; writes an eval report folder.

The eval stage (``components/stages.py``) calls ``evaluate`` after checking that every task fits the family and
the data (``tasks.check_fit``). Every task runs twice: on the trained checkpoint and on an untrained model of the
same family and recipe (built with the recipe's seed), so each metric has a baseline computed the same way,
stored as ``baseline_<metric>``; ``baseline=False`` skips that second run (the stage decides: ``options.py``).
The NLU probe of the trained model also runs on the text encoder its text side started from (``text_encoder``, or
found from the model's recipe: ``nlu_probe.find_text_encoder``) unless ``EvalOptions.text_encoder`` is off.
The models run on one device (``EvalOptions.device``: a GPU when there is one), batched by ``EvalContext``.

A report folder holds ``report.json`` (per task: its metrics, the baseline's, the headline metric and notes; the device,
whether the baseline ran, and zero-shot classification's class names and templates where the eval gave them),
``per_sample/<task>.parquet`` (the trained model's output for every item: ranks, predictions, answers) and the
tasks' PNGs (``retrieval.png``, ``retrieval_examples.png``, confusion matrices, VQA accuracy by question type,
generated-caption samples)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from vlforge.components.data.loader import read_split
from vlforge.components.evaluation.nlu_probe import TextEncoder, find_text_encoder
from vlforge.components.evaluation.options import EvalOptions, class_renames, resolve_device
from vlforge.components.evaluation.tasks import (
    TASKS,
    EvalContext,
    check_fit,
    dataset_offers,
    run_task,
)
from vlforge.components.models.registry import (
    Family,
    Recipe,
    model_seen_formats,
    read_family_file,
    special_token_ids,
)
from vlforge.components.tokenizer import load_tokenizer

from vlforge.errors import UserError

BASELINE_PREFIX = "baseline_"


def untrained_model(family: Family, recipe: Recipe, tokenizer) -> torch.nn.Module:
    """The family's model at initialisation (the recipe's seed): the baseline every metric is shown beside."""
    torch.manual_seed(recipe.seed)
    return family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer)).eval()


def evaluate(model_dir: Path, dataset_dir: Path, split: str, tasks: list[str], out_dir: Path,
             baseline: bool = True, options: EvalOptions | None = None,
             text_encoder: TextEncoder | None = None) -> dict[str, float]:
    """Run ``tasks`` and write the report to ``out_dir``; returns the flat metrics (baseline ones prefixed)."""
    options = options or EvalOptions()
    if "nlu_probe" in tasks and options.text_encoder:
        text_encoder = text_encoder or find_text_encoder(model_dir)
    else:
        text_encoder = None
    family, recipe = read_family_file(model_dir)
    check_fit(tasks, family, dataset_offers(dataset_dir, split), dataset_dir.name)
    device = resolve_device(options.device)
    renames = class_renames(options, dataset_dir, dataset_dir.name)
    samples = read_split(dataset_dir, split)
    if not samples:
        raise UserError(f"dataset '{dataset_dir.name}' has no samples in split '{split}'")
    tokenizer = load_tokenizer(model_dir)
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    train_cache: list = []

    def train_samples() -> list:
        if not train_cache:
            train_cache.extend(read_split(dataset_dir, "train"))
        return train_cache

    models = {"trained": family.load(model_dir).eval()}
    if baseline:
        models["untrained"] = untrained_model(family, recipe, tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "per_sample").mkdir(exist_ok=True)
    report: dict = {"family": family.name, "split": split, "tasks": {}, "samples": len(samples),
                    "device": str(device), "baseline": baseline}
    if options.classnames is not None or options.templates is not None:
        report["zero_shot"] = {k: list(v) for k, v in (("classnames", options.classnames),
                                                        ("templates", options.templates)) if v is not None}
    flat: dict[str, float] = {}
    images = None
    for which in list(models):
        model = models.pop(which)  # the trained model leaves the device before the untrained one comes
        ctx = EvalContext(family, model, recipe, tokenizer, samples, train_samples, manifest=manifest,
                          classnames=renames, templates=options.templates, device=device,
                          seen_formats=model_seen_formats(model_dir),
                          text_encoder=text_encoder if which == "trained" else None)
        del model
        ctx._images = images  # decoded once, shared by the trained and the untrained model
        images = ctx.images() if manifest.get("format") != "text" else None
        for name in tasks:
            output = run_task(name, ctx)
            measured = [k for k in TASKS[name].headlines if k in output.metrics]
            entry = report["tasks"].setdefault(name, {"headline": (measured or [TASKS[name].headline])[0]})
            if which == "trained":
                entry["metrics"] = output.metrics
                if output.notes:
                    entry["notes"] = output.notes
                flat.update(output.metrics)
                if output.rows is not None:
                    pq.write_table(pa.table(output.rows), out_dir / "per_sample" / f"{name}.parquet")
                for filename, write in output.plots.items():
                    write(out_dir / filename)
            else:
                entry["baseline"] = output.metrics
                flat.update({BASELINE_PREFIX + k: v for k, v in output.metrics.items()})
        del ctx
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return flat
