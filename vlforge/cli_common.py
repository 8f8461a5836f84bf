"""What every ``vlforge`` sub-command shares: the typer apps and the global ``--verbose`` option, stdout protection
for ``--json``, the one-line error contract (UserError -> ``error: ...`` on stderr, exit code 2) and output
helpers."""
import functools
import inspect
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from vlforge.environment import configure_environment
from vlforge.errors import UserError

configure_environment()
from vlforge.prefect_server import use_running_server  # noqa: E402  (after the environment is set)

use_running_server()  # a server this home started is used by every command

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Reproducible vision-language pretraining as one DAG.")
run_app = typer.Typer(no_args_is_help=True, help="Run the whole pipeline or one stage.")
catalog_app = typer.Typer(no_args_is_help=True, help="Browse the artifact catalog.")
app.add_typer(run_app, name="run")
app.add_typer(catalog_app, name="catalog")

VERBOSE_ENV = "VLFORGE_VERBOSE"
VerboseOpt = Annotated[bool, typer.Option(
    "--verbose", "-v", help=f"Also show Ray's own log lines (Ray Train reports, worker output); or {VERBOSE_ENV}=1.")]


def set_verbose(verbose: bool) -> None:
    """``--verbose``: ``$VLFORGE_VERBOSE=1`` for this process, read where Ray starts (``ray_runtime.ensure_ray``)."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


@app.callback()
def _global_options(verbose: VerboseOpt = False) -> None:
    set_verbose(verbose)


@run_app.callback()
def _run_options(verbose: VerboseOpt = False) -> None:  # `vlforge run --verbose train ...` works too
    set_verbose(verbose)

RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="Existing Ray cluster (HOST:PORT, auto or ray://...) to run the stage on; default: a "
    "private Ray on loopback (training) or this process.")]
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
    sig = inspect.signature(fn)
    wrapper.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "out"])  # type: ignore[attr-defined]
    return wrapper


def open_catalog():
    from vlforge.settings import open_catalog as open_configured

    return open_configured()


def emit(out: Console, as_json: bool, payload: Any, human: Callable[[], None]) -> None:
    if as_json:
        out.file.write(json.dumps(payload, default=str) + "\n")
        out.file.flush()
    else:
        human()


def artifacts_table(result: dict[str, Any], title: str) -> Table:
    catalog = open_catalog()
    table = Table(title=title)
    for col in ("kind", "artifact", "name", "version", "cached", "seconds"):
        table.add_column(col)
    for kind in ("dataset", "tokenizer", "model", "eval"):
        if kind == "model":
            for stage in result.get("stages", [])[:-1]:  # earlier train stages; the last is the "model" row
                art = catalog.get(stage["model"])
                table.add_row(f"model ({stage['recipe']})", art.short_id, art.name, str(art.version),
                              "yes" if stage["cached"] else "no", "")
        if kind in result:
            art = catalog.get(result[kind])
            seconds = result.get("seconds", {}).get(kind)
            table.add_row(kind, art.short_id, art.name, str(art.version), "yes" if result.get("cached", {}).get(kind) else "no",
                          f"{seconds:.1f}" if seconds is not None else "")
    return table


def artifact_ids(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k in ("dataset", "tokenizer", "model", "eval", "teachers", "stages")} | {"cached": result.get("cached", {})}
