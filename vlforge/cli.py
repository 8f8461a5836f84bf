"""The ``vlforge`` command: run the pipeline or one stage, browse the catalog.

    vlforge run pipeline [--config FILE] [--json]
    vlforge run ingest --source SOURCE [--name NAME] [--allow-host HOST[:PORT] ...] [--timeout S] [--retries N]
                       [--max-bytes N] [--min-side PX] [--set crawl.image_size=64 ...] [--json]
                       [--images DIR] [--classnames FILE] [--templates FILE]   (benchmark layouts)
    vlforge run filter --data REF [--config FILE] [--json]
    vlforge run tokenizer --data REF [--set vocab_size=1024] [--json]
    vlforge run train --family clip --data REF[=WEIGHT] [--data ...] [--recipe tiny] [--steps N] [--set KEY=VALUE ...] [--json]
    vlforge run eval --model REF --data REF [--task retrieval ... | --suite default] [--split validation] [--json]
                     [--classnames FILE] [--templates FILE] [--baseline|--no-baseline] [--device auto|cpu|cuda[:N]]
                     [--no-text-encoder]
    vlforge leaderboard [--json]
    vlforge catalog list|show|lineage ...
    vlforge families

Bad input gives one line on stderr naming what is wrong and exit code 2, and registers nothing. With ``--json``
stdout carries exactly one JSON document; everything libraries print goes to stderr."""
import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from vlforge import cli_catalog, cli_orchestration  # noqa: F401  (register their commands)
from vlforge import cli_eval  # noqa: F401  (registers the leaderboard command)
from vlforge import cli_import  # noqa: F401  (registers `vlforge import model`)
from vlforge.cli_common import (
    JsonOpt,
    RayAddressOpt,
    SetOpt,
    app,
    artifact_ids,
    artifacts_table,
    command,
    emit,
    err_console,
    open_catalog,
    run_app,
)
from vlforge.components.training.ray_runtime import check_ray_address
from vlforge.errors import UserError


# --------------------------------------------------------------------------------------------------- run
@run_app.command("pipeline")
@command
def run_pipeline(
    out: Console,
    config: Annotated[Optional[Path], typer.Option(help="Pipeline config (YAML); default: the embedded demo config.")] = None,
    ray_address: RayAddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole DAG: ingest -> tokenizer -> train -> eval, registering every artifact."""
    from vlforge.components.pipeline_config import load_pipeline_config
    from vlforge.components.stages import check_train_stages, resolve_source

    cfg = load_pipeline_config(config)
    if ray_address:
        cfg.train.ray_address = ray_address
    check_ray_address(cfg.train.ray_address)
    resolve_source(cfg.source)
    check_train_stages(cfg.train.family, cfg.train.recipe, cfg.train.overrides, cfg.train.then)
    from vlforge.flows.pipeline import pipeline_flow

    start = time.perf_counter()
    result = pipeline_flow(cfg)
    wall = time.perf_counter() - start
    payload = artifact_ids(result) | {"metrics": result["metrics"], "seconds": result["seconds"], "wall_time_s": wall}

    def human() -> None:
        out.print(artifacts_table(result, "vlforge pipeline"))
        from vlforge.components.evaluation.headline import untrained_value

        summary = Table(title=f"evaluation ({cfg.eval.split} split)")
        for col in (*(k for k, _v in result["headline"]), "wall time"):
            summary.add_column(col)
        summary.add_row(*(f"{v:.3f}" + ("" if (b := untrained_value(result["metrics"], k)) is None
                                         else f" (untrained {b:.3f})") for k, v in result["headline"]), f"{wall:.1f} s")
        out.print(summary)

    emit(out, as_json, payload, human)


@run_app.command("ingest")
@command
def run_ingest(
    out: Console,
    source: Annotated[str, typer.Option(help="builtin:shapes[?n=..], a URL list (.parquet/.csv/.tsv/.jsonl), a local-paths table, an image folder, `mix` with --mix, or a benchmark layout: karpathy:FILE.json, imagefolder:DIR, vqav2:QUESTIONS.json,ANNOTATIONS.json, nlvr2:FILE.json, glue:DIR.")],
    name: Annotated[Optional[str], typer.Option(help="Dataset name in the catalog.")] = None,
    url_col: str = "url",
    caption_col: str = "caption",
    path_col: str = "path",
    label_col: Annotated[Optional[str], typer.Option(help="Column with a class label (for zero-shot classification).")] = None,
    key_col: Annotated[Optional[str], typer.Option(help="Column with a stable sample id (local tables).")] = None,
    allow_host: Annotated[Optional[list[str]], typer.Option(help="HOST[:PORT] the crawler may fetch even if private/loopback (repeatable).")] = None,
    timeout: Annotated[Optional[int], typer.Option(help="Seconds per request (crawl.timeout).")] = None,
    retries: Annotated[Optional[int], typer.Option(help="Retries per URL (crawl.retries).")] = None,
    max_bytes: Annotated[Optional[int], typer.Option(help="Largest download in bytes (crawl.max_bytes).")] = None,
    min_side: Annotated[Optional[int], typer.Option(help="Smallest original image side in pixels (crawl.min_image_size).")] = None,
    mix: Annotated[Optional[list[str]], typer.Option(help="With --source mix: SOURCE=WEIGHT (repeatable), sources mixed by weight.")] = None,
    images: Annotated[Optional[str], typer.Option(help="Image root of a karpathy:, vqav2: or nlvr2: source (default: the file's folder).")] = None,
    classnames: Annotated[Optional[str], typer.Option(help="imagefolder: class names, one a line in folder order (default: the folder names).")] = None,
    templates: Annotated[Optional[str], typer.Option(help="imagefolder: zero-shot prompt templates, one a line with {}.")] = None,
    retry_failures: Annotated[bool, typer.Option("--retry-failures", help="Fetch again only the URLs the latest ingest of this source (same settings; fetch ones such as --timeout may change) failed for a transient reason (timeout, connection error, HTTP 5xx/429); keep its samples and other failures, register a new version.")] = False,
    ray_address: RayAddressOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Crawl a source with img2dataset and shard it into a catalogued webdataset.

    With --json: {"dataset": ID, "samples": N, "failures": {reason: count}, "retried": N, "recovered": N,
    "cached": {...}}, plus "captions": N where images have several captions."""
    from vlforge.components.pipeline_config import ingest_configs, parse_assignments
    from vlforge.components.stages import ingest_key, ingest_retry_plan

    src, crawl, shard = ingest_configs(
        source, name=name, mix=mix, images=images, classnames=classnames, templates=templates,
        columns={"url_col": url_col, "caption_col": caption_col, "path_col": path_col, "label_col": label_col,
                 "key_col": key_col},
        crawl={"allow_hosts": allow_host, "timeout": timeout, "retries": retries, "max_bytes": max_bytes,
               "min_image_size": min_side},
        assignments=parse_assignments(set_ or []))
    ingest_key(src, crawl, shard)  # validates the source before anything starts
    plan = ingest_retry_plan(src, crawl, shard, open_catalog()) if retry_failures else None
    check_ray_address(ray_address)
    if plan is not None and plan.retry == 0:
        result = {"dataset": plan.parent.id, "cached": {"dataset": True}}
        err_console.print(f"nothing to retry: dataset {plan.parent.name}:{plan.parent.version} ({plan.parent.short_id}) "
                          f"has no transient failures", highlight=False)
    else:
        from vlforge.flows.ingest import ingest_flow

        result = ingest_flow(src, crawl, shard, ray_address, retry_failures)
    dataset = open_catalog().get(result["dataset"])
    manifest = json.loads((open_catalog().path(dataset.id) / "manifest.json").read_text())
    failures = manifest["failures_by_reason"]
    retried = dataset.metrics.get("retried", 0) if plan is not None and plan.retry else 0
    recovered = dataset.metrics.get("recovered", 0) if plan is not None and plan.retry else 0
    payload = artifact_ids(result) | {"samples": manifest["samples"], "failures": failures, "retried": retried,
                                      "recovered": recovered}
    if "captions" in manifest:  # several captions per image (a benchmark layout)
        payload["captions"] = manifest["captions"]

    def human() -> None:
        out.print(artifacts_table(result, "vlforge ingest"))
        captions = f" ({manifest['captions']} captions)" if "captions" in manifest else ""
        out.print(f"{manifest['samples']} samples{captions} of {manifest['attempted']} rows; failures: "
                  + (", ".join(f"{k}={v}" for k, v in failures.items()) or "none"))
        if plan is not None and plan.retry:
            out.print(f"retried {retried} URLs that had failed transiently: {recovered} recovered")

    emit(out, as_json, payload, human)


@run_app.command("filter")
@command
def run_filter(
    out: Console,
    data: Annotated[str, typer.Option(help="Dataset REF to filter.")],
    config: Annotated[Optional[Path], typer.Option(help="Filter rules (YAML over FilterConfig); default: the default rules.")] = None,
    ray_address: RayAddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Filter a dataset (duplicates, caption/image rules, CLIP score) into a new catalogued dataset.

    With --json: {"dataset": ID, "samples": N, "funnel": {rule: removed}, "cached": {...}}."""
    from pydantic import ValidationError

    from vlforge.components.data.filter import FilterConfig
    from vlforge.components.pipeline_config import read_yaml_mapping, validation_message
    from vlforge.components.stages import filter_plan

    raw = read_yaml_mapping(config, "a mapping of filter rules") if config is not None else {}
    try:
        cfg = FilterConfig(**raw)
    except ValidationError as exc:
        raise UserError(validation_message(f"config file '{config}'", exc)) from None
    filter_plan(data, cfg, open_catalog())  # validates the refs before anything starts
    check_ray_address(ray_address)
    from vlforge.flows.filter import filter_flow

    result = filter_flow(data, cfg, ray_address)
    manifest = json.loads((open_catalog().path(result["dataset"]) / "manifest.json").read_text())
    funnel = {f["rule"]: f["removed"] for f in manifest["funnel"] if f["rule"] != "input"}
    payload = artifact_ids(result) | {"samples": manifest["samples"], "input_samples": manifest["attempted"], "funnel": funnel}

    def human() -> None:
        out.print(artifacts_table(result, "vlforge filter"))
        out.print(f"{manifest['attempted']} -> {manifest['samples']} samples; removed: "
                  + (", ".join(f"{k}={v}" for k, v in funnel.items()) or "none"))

    emit(out, as_json, payload, human)


@run_app.command("tokenizer")
@command
def run_tokenizer(
    out: Console,
    data: Annotated[str, typer.Option(help="Dataset REF.")],
    ray_address: RayAddressOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a tokenizer on a dataset's training captions."""
    from vlforge.components.pipeline_config import PipelineConfig, parse_assignments, section_config

    cfg = section_config(PipelineConfig().tokenizer, parse_assignments(set_ or []), "--set")
    art = open_catalog().get(data)
    if art.kind != "dataset":
        raise UserError(f"--data '{data}' is a {art.kind}, not a dataset")
    check_ray_address(ray_address)
    from vlforge.flows.train import tokenizer_flow

    result = tokenizer_flow(art.id, cfg, ray_address)
    emit(out, as_json, artifact_ids(result), lambda: out.print(artifacts_table(result, "vlforge tokenizer")))


@run_app.command("train")
@command
def run_train(
    out: Console,
    family: Annotated[str, typer.Option(help="Model family (see `vlforge families`).")],
    data: Annotated[list[str], typer.Option(help="Dataset REF; repeat as REF=WEIGHT to mix datasets by weight (each "
                                            "sample drawn from REF with probability WEIGHT / total).")],
    recipe: Annotated[str, typer.Option(help="Named recipe of the family.")] = "tiny",
    steps: Annotated[Optional[int], typer.Option(help="Override the recipe's number of steps.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Tokenizer REF; default: train one on the (first) "
                                                     "dataset.")] = None,
    ray_address: RayAddressOpt = None,
    teacher: Annotated[Optional[list[str]], typer.Option(help="Teacher model REF (repeatable); default: train the "
                                                         "family's teachers in the DAG.")] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pretrain a family on a catalog dataset with Ray Train and register the checkpoint."""
    from vlforge.components.pipeline_config import PipelineConfig, parse_assignments
    from vlforge.components.stages import check_train_stages

    overrides = parse_assignments(set_ or [])
    if steps is not None:
        overrides["steps"] = steps
    check_train_stages(family, recipe, overrides, ())  # before any stage runs or registers anything

    check_ray_address(ray_address)
    catalog = open_catalog()
    from vlforge.components.stages import parse_data_options, teacher_overrides, training_data

    datasets = training_data(parse_data_options(data), catalog)  # the mix's errors, before the tokenizer trains
    data_ids = datasets[0][0].id if len(datasets) == 1 else {art.id: w for art, w in datasets}
    if tokenizer is not None and catalog.get(tokenizer).kind != "tokenizer":
        raise UserError(f"--tokenizer '{tokenizer}' is a {catalog.get(tokenizer).kind}, not a tokenizer")
    overrides.update(teacher_overrides(family, teacher or [], catalog))
    from vlforge.flows.train import train_flow

    result = train_flow(family, data_ids, recipe, overrides, tokenizer, PipelineConfig().tokenizer, ray_address)
    emit(out, as_json, artifact_ids(result), lambda: out.print(artifacts_table(result, "vlforge train")))


@run_app.command("eval")
@command
def run_eval(
    out: Console,
    model: Annotated[str, typer.Option(help="Model REF.")],
    data: Annotated[str, typer.Option(help="Dataset REF.")],
    task: Annotated[Optional[list[str]], typer.Option(help="Task (repeatable); `vlforge families` lists each family's.")] = None,
    suite: Annotated[Optional[str], typer.Option(help="Run every task of a suite that fits the model and data "
                                                 "(default when no --task is given): default.")] = None,
    split: Annotated[str, typer.Option(help="validation, train, all, or a benchmark's own split (test).")] = "validation",
    classnames: Annotated[Optional[Path], typer.Option(help="Zero-shot classification: class names, one a line, "
                                                       "line i naming the dataset's class i (overrides its own).")] = None,
    templates: Annotated[Optional[Path], typer.Option(help="Zero-shot classification: prompt templates, one a line "
                                                      "with {} for the class name (overrides the dataset's).")] = None,
    baseline: Annotated[Optional[bool], typer.Option("--baseline/--no-baseline", help="Also score an untrained model "
                        "of the same recipe (default: when the split has at most 10,000 samples).")] = None,
    device: Annotated[str, typer.Option(help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N.")] = "auto",
    text_encoder: Annotated[bool, typer.Option("--text-encoder/--no-text-encoder", help="NLU probe: also fine-tune "
                            "the text encoder the model started from (text_init) and report the delta.")] = True,
    ray_address: RayAddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a catalog model on a catalog dataset and register the eval report."""
    from vlforge.components.evaluation.options import EvalOptions
    from vlforge.components.stages import eval_plan, eval_suite

    if task and suite:
        raise UserError("give --task or --suite, not both")
    skipped: dict[str, str] = {}
    if not task:
        tasks, skipped = eval_suite(model, data, suite or "default", split, open_catalog())
    else:
        tasks = task
    options = EvalOptions.from_files(classnames, templates, baseline, device, text_encoder)
    eval_plan(model, data, tasks, split, open_catalog(), options)
    check_ray_address(ray_address)
    from vlforge.flows.evaluate import eval_flow

    result = eval_flow(model, data, tasks, split, ray_address, options)
    evaluation = open_catalog().get(result["eval"])
    metrics = evaluation.metrics

    def human() -> None:
        out.print(artifacts_table(result, "vlforge eval"))
        table = Table(title="metrics")
        table.add_column("metric")
        table.add_column("value")
        for k, v in sorted(metrics.items()):
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
        out.print(table)

    emit(out, as_json, artifact_ids(result) | {"tasks": sorted(tasks), "skipped": skipped, "metrics": metrics,
                                               "baseline": evaluation.config.get("baseline"),
                                               "device": evaluation.config.get("device")}, human)


@app.command("families")
@command
def families(out: Console, as_json: JsonOpt = False) -> None:
    """List the model families and their recipes."""
    from vlforge.components.models.registry import family_names, get_family

    from vlforge.components.evaluation.tasks import TASKS, family_offers

    def row(name: str) -> dict:
        fam = get_family(name)
        offers = family_offers(fam)
        return {"family": name, "recipes": fam.recipe_names(), "objectives": list(fam.objectives),
                "capabilities": sorted(fam.capabilities),
                "eval_tasks": [t.name for t in TASKS.values() if any(need <= offers for need in t.model_any)],
                "teachers": {f: list(fams) for f, fams in fam.teachers.items()}, "paper": fam.paper}

    rows = [row(n) for n in family_names()]

    def human() -> None:
        table = Table(title="model families")
        for col in ("family", "recipes", "objectives", "eval tasks", "teachers", "paper"):
            table.add_column(col)
        for r in rows:
            teachers = "; ".join(f"{f}: {'/'.join(v)}" for f, v in r["teachers"].items())
            table.add_row(r["family"], ", ".join(r["recipes"]), ", ".join(r["objectives"]), ", ".join(r["eval_tasks"]),
                          teachers, r["paper"])
        out.print(table)

    emit(out, as_json, rows, human)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
