"""The ``vlforge`` command: run the pipeline or one stage, browse the catalog.

    vlforge run pipeline [--config FILE] [--json]
    vlforge run ingest --source SOURCE [--name NAME] [--set crawl.image_size=64 ...] [--json]
    vlforge run tokenizer --data REF [--set vocab_size=1024] [--json]
    vlforge run train --family clip --data REF [--recipe tiny] [--steps N] [--set KEY=VALUE ...] [--json]
    vlforge run eval --model REF --data REF [--task retrieval] [--split validation] [--json]
    vlforge catalog list|show|lineage ...
    vlforge families

Bad input gives one line on stderr naming what is wrong and exit code 2, and registers nothing. With ``--json``
stdout carries exactly one JSON document; everything libraries print goes to stderr."""


import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from vlforge.environment import configure_environment
from vlforge.errors import UserError

configure_environment()

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Reproducible vision-language pretraining as one DAG.")
run_app = typer.Typer(no_args_is_help=True, help="Run the whole pipeline or one stage.")
catalog_app = typer.Typer(no_args_is_help=True, help="Browse the artifact catalog.")
app.add_typer(run_app, name="run")
app.add_typer(catalog_app, name="catalog")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config field: KEY=VALUE (repeatable).")]
err_console = Console(stderr=True)


@contextmanager
def _stdout_to_stderr() -> Iterator[Console]:
    """Send everything written to fd 1 (Ray, Prefect, tqdm, prints) to stderr; yield a console on the real stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(os.dup(saved), "w", buffering=1)
    try:
        yield Console(file=out, soft_wrap=True, width=shutil.get_terminal_size((140, 24)).columns)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        out.close()


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command with stdout protected, UserError -> one line + exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _stdout_to_stderr() as out:
                return fn(*args, out=out, **kwargs)
        except UserError as exc:
            err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    # typer must not see the injected ``out`` parameter
    import inspect

    sig = inspect.signature(fn)
    wrapper.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "out"])  # type: ignore[attr-defined]
    return wrapper


def _catalog():
    from vlforge.catalog import Catalog
    from vlforge.settings import catalog_root

    return Catalog(catalog_root())


def _emit(out: Console, as_json: bool, payload: Any, human: Callable[[], None]) -> None:
    if as_json:
        out.file.write(json.dumps(payload, default=str) + "\n")
        out.file.flush()
    else:
        human()


def _artifacts_table(result: dict[str, Any], title: str) -> Table:
    catalog = _catalog()
    table = Table(title=title)
    for col in ("kind", "artifact", "name", "version", "cached", "seconds"):
        table.add_column(col)
    for kind in ("dataset", "tokenizer", "model", "eval"):
        if kind in result:
            art = catalog.get(result[kind])
            seconds = result.get("seconds", {}).get(kind)
            table.add_row(kind, art.short_id, art.name, str(art.version), "yes" if result.get("cached", {}).get(kind) else "no",
                          f"{seconds:.1f}" if seconds is not None else "")
    return table


def _ids(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k in ("dataset", "tokenizer", "model", "eval")} | {"cached": result.get("cached", {})}


def _split_sections(pairs: dict[str, Any], sections: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {s: {} for s in sections}
    for key, value in pairs.items():
        section, dot, field = key.partition(".")
        if not dot or section not in sections:
            raise UserError(f"--set '{key}' must name a section: {', '.join(s + '.FIELD' for s in sections)}")
        out[section][field] = value
    return out


# --------------------------------------------------------------------------------------------------- run
@run_app.command("pipeline")
@command
def run_pipeline(
    out: Console,
    config: Annotated[Optional[Path], typer.Option(help="Pipeline config (YAML); default: the embedded demo config.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole DAG: ingest -> tokenizer -> train -> eval, registering every artifact."""
    from vlforge.components.models.registry import get_family
    from vlforge.components.pipeline_config import load_pipeline_config
    from vlforge.components.stages import resolve_source

    cfg = load_pipeline_config(config)
    resolve_source(cfg.source)
    get_family(cfg.train.family).recipe(cfg.train.recipe, cfg.train.overrides)
    from vlforge.flows.pipeline import pipeline_flow

    start = time.perf_counter()
    result = pipeline_flow(cfg)
    wall = time.perf_counter() - start
    payload = _ids(result) | {"metrics": result["metrics"], "seconds": result["seconds"], "wall_time_s": wall}

    def human() -> None:
        out.print(_artifacts_table(result, "vlforge pipeline"))
        m = result["metrics"]
        summary = Table(title="evaluation (validation split)")
        for col in ("i2t R@1", "i2t R@5", "t2i R@1", "t2i R@5", "zero-shot top-1", "wall time"):
            summary.add_column(col)
        fmt = lambda k: f"{m[k]:.3f}" if k in m else "-"  # noqa: E731
        summary.add_row(fmt("i2t_r1"), fmt("i2t_r5"), fmt("t2i_r1"), fmt("t2i_r5"), fmt("zs_top1"), f"{wall:.1f} s")
        out.print(summary)

    _emit(out, as_json, payload, human)


@run_app.command("ingest")
@command
def run_ingest(
    out: Console,
    source: Annotated[str, typer.Option(help="builtin:shapes[?n=..], a URL list (.parquet/.csv/.tsv/.jsonl) or a local-paths table.")],
    name: Annotated[Optional[str], typer.Option(help="Dataset name in the catalog.")] = None,
    url_col: str = "url",
    caption_col: str = "caption",
    path_col: str = "path",
    label_col: Annotated[Optional[str], typer.Option(help="Column with a class label (for zero-shot classification).")] = None,
    key_col: Annotated[Optional[str], typer.Option(help="Column with a stable sample id (local tables).")] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Crawl a source with img2dataset and shard it into a catalogued webdataset."""
    from pydantic import ValidationError

    from vlforge.components.pipeline_config import PipelineConfig, SourceConfig, parse_assignments, validation_message
    from vlforge.components.stages import ingest_key

    sections = _split_sections(parse_assignments(set_ or []), ("crawl", "shard"))
    defaults = PipelineConfig()
    src = SourceConfig(spec=source, name=name, url_col=url_col, caption_col=caption_col, path_col=path_col,
                       label_col=label_col, key_col=key_col)
    validated = {}
    for section, model in (("crawl", defaults.crawl), ("shard", defaults.shard)):
        try:
            validated[section] = model.model_validate(model.model_dump() | sections[section])
        except ValidationError as exc:
            raise UserError(validation_message(f"--set {section}.*", exc).replace("field '", f"field '{section}.")) from None
    crawl, shard = validated["crawl"], validated["shard"]
    ingest_key(src, crawl, shard)  # validates the source before anything starts
    from vlforge.flows.ingest import ingest_flow

    result = ingest_flow(src, crawl, shard)
    _emit(out, as_json, _ids(result), lambda: out.print(_artifacts_table(result, "vlforge ingest")))


@run_app.command("tokenizer")
@command
def run_tokenizer(
    out: Console,
    data: Annotated[str, typer.Option(help="Dataset REF.")],
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a tokenizer on a dataset's training captions."""
    from pydantic import ValidationError

    from vlforge.components.pipeline_config import PipelineConfig, parse_assignments, validation_message

    base = PipelineConfig().tokenizer
    try:
        cfg = base.model_validate(base.model_dump() | parse_assignments(set_ or []))
    except ValidationError as exc:
        raise UserError(validation_message("--set", exc)) from None
    art = _catalog().get(data)
    if art.kind != "dataset":
        raise UserError(f"--data '{data}' is a {art.kind}, not a dataset")
    from vlforge.flows.train import tokenizer_flow

    result = tokenizer_flow(art.id, cfg)
    _emit(out, as_json, _ids(result), lambda: out.print(_artifacts_table(result, "vlforge tokenizer")))


@run_app.command("train")
@command
def run_train(
    out: Console,
    family: Annotated[str, typer.Option(help="Model family (see `vlforge families`).")],
    data: Annotated[str, typer.Option(help="Dataset REF.")],
    recipe: Annotated[str, typer.Option(help="Named recipe of the family.")] = "tiny",
    steps: Annotated[Optional[int], typer.Option(help="Override the recipe's number of steps.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Tokenizer REF; default: train one on the dataset.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Existing Ray cluster to train on.")] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pretrain a family on a catalog dataset with Ray Train and register the checkpoint."""
    from vlforge.components.models.registry import get_family
    from vlforge.components.pipeline_config import PipelineConfig, parse_assignments

    overrides = parse_assignments(set_ or [])
    if steps is not None:
        overrides["steps"] = steps
    get_family(family).recipe(recipe, overrides)
    catalog = _catalog()
    art = catalog.get(data)
    if art.kind != "dataset":
        raise UserError(f"--data '{data}' is a {art.kind}, not a dataset")
    if tokenizer is not None and catalog.get(tokenizer).kind != "tokenizer":
        raise UserError(f"--tokenizer '{tokenizer}' is a {catalog.get(tokenizer).kind}, not a tokenizer")
    from vlforge.flows.train import train_flow

    result = train_flow(family, art.id, recipe, overrides, tokenizer, PipelineConfig().tokenizer, ray_address)
    _emit(out, as_json, _ids(result), lambda: out.print(_artifacts_table(result, "vlforge train")))


@run_app.command("eval")
@command
def run_eval(
    out: Console,
    model: Annotated[str, typer.Option(help="Model REF.")],
    data: Annotated[str, typer.Option(help="Dataset REF.")],
    task: Annotated[Optional[list[str]], typer.Option(help="Task (repeatable): retrieval, zero_shot_classification.")] = None,
    split: Annotated[str, typer.Option(help="validation, train or all.")] = "validation",
    as_json: JsonOpt = False,
) -> None:
    """Score a catalog model on a catalog dataset and register the eval report."""
    from vlforge.components.stages import eval_plan

    tasks = task or ["retrieval"]
    eval_plan(model, data, tasks, split, _catalog())
    from vlforge.flows.evaluate import eval_flow

    result = eval_flow(model, data, tasks, split)
    metrics = _catalog().get(result["eval"]).metrics

    def human() -> None:
        out.print(_artifacts_table(result, "vlforge eval"))
        table = Table(title="metrics")
        table.add_column("metric")
        table.add_column("value")
        for k, v in sorted(metrics.items()):
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
        out.print(table)

    _emit(out, as_json, _ids(result) | {"metrics": metrics}, human)


# ----------------------------------------------------------------------------------------------- catalog
def _entry(art: Any) -> dict[str, Any]:
    return art.model_dump(mode="json") | {"short_id": art.short_id}


@catalog_app.command("list")
@command
def catalog_list(
    out: Console,
    kind: Annotated[Optional[str], typer.Option(help="dataset, tokenizer, model or eval.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Only this name.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List artifacts, newest first."""
    if kind is not None and kind not in ("dataset", "tokenizer", "model", "eval"):
        raise UserError(f"--kind '{kind}' is not one of dataset, tokenizer, model, eval")
    arts = _catalog().list(kind=kind, name=name)

    def human() -> None:
        table = Table(title=f"catalog ({len(arts)} artifacts)")
        for col in ("id", "kind", "name", "version", "family", "aliases", "created", "headline"):
            table.add_column(col)
        for a in arts:
            headline = ", ".join(f"{k}={a.metrics[k]:.3g}" for k in ("i2t_r1", "t2i_r1", "final_loss", "samples", "vocab_size")
                                 if isinstance(a.metrics.get(k), (int, float)))
            table.add_row(a.short_id, a.kind, a.name, str(a.version), a.family or "", ",".join(a.aliases), a.created_at[:19], headline)
        out.print(table)

    _emit(out, as_json, [_entry(a) for a in arts], human)


@catalog_app.command("show")
@command
def catalog_show(out: Console, ref: Annotated[str, typer.Argument(help="Artifact REF.")], as_json: JsonOpt = False) -> None:
    """Show one artifact: files, config, metrics, parents, environment."""
    catalog = _catalog()
    art = catalog.get(ref)
    entry = _entry(art) | {"path": str(catalog.path(art.id))}

    def human() -> None:
        out.print(f"[bold]{art.kind} {art.name}:{art.version}[/bold]  {art.id}")
        out.print(f"family: {art.family or '-'}   aliases: {', '.join(art.aliases) or '-'}   created: {art.created_at}")
        out.print(f"code: {art.code_version or 'unknown'}   files at: {entry['path']}")
        for p in art.parents:
            parent = catalog.get(p)
            out.print(f"parent: {parent.kind} {parent.name}:{parent.version} {parent.short_id}")
        table = Table(title="files")
        table.add_column("path")
        table.add_column("bytes", justify="right")
        table.add_column("sha256")
        for f in art.files:
            table.add_row(f.path, str(f.size), f.sha256[:16])
        out.print(table)
        out.print("config:", json.dumps(art.config, indent=2, sort_keys=True), markup=False)
        out.print("metrics:", json.dumps(art.metrics, indent=2, sort_keys=True), markup=False)

    _emit(out, as_json, entry, human)


@catalog_app.command("lineage")
@command
def catalog_lineage(out: Console, ref: Annotated[str, typer.Argument(help="Artifact REF.")], as_json: JsonOpt = False) -> None:
    """What an artifact came from (a tree of parents) and what was made from it."""
    catalog = _catalog()
    tree_data = catalog.lineage_tree(ref)
    descendants = catalog.descendants(ref)

    def to_json(node: dict) -> dict:
        a = node["artifact"]
        return {"id": a.id, "kind": a.kind, "name": a.name, "version": a.version, "parents": [to_json(p) for p in node["parents"]]}

    def label(a: Any) -> str:
        return f"{a.kind} [bold]{a.name}[/bold]:{a.version} {a.short_id}"

    def human() -> None:
        def add(tree: Tree, node: dict) -> None:
            for p in node["parents"]:
                add(tree.add(label(p["artifact"])), p)

        root = Tree(label(tree_data["artifact"]) + "  [dim](made from)[/dim]")
        add(root, tree_data)
        out.print(root)
        if descendants:
            down = Tree("[dim]made from it[/dim]")
            for d in descendants:
                down.add(label(d))
            out.print(down)

    _emit(out, as_json, {"tree": to_json(tree_data), "descendants": [d.id for d in descendants]}, human)


@app.command("families")
@command
def families(out: Console, as_json: JsonOpt = False) -> None:
    """List the model families and their recipes."""
    from vlforge.components.models.registry import family_names, get_family

    rows = [{"family": n, "recipes": get_family(n).recipe_names(), "capabilities": sorted(get_family(n).capabilities),
             "paper": get_family(n).paper} for n in family_names()]

    def human() -> None:
        table = Table(title="model families")
        for col in ("family", "recipes", "capabilities", "paper"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["family"], ", ".join(r["recipes"]), ", ".join(r["capabilities"]), r["paper"])
        out.print(table)

    _emit(out, as_json, rows, human)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
