"""``vlforge server ...``, ``vlforge deploy`` and ``vlforge runs``: a real Prefect server, scheduled deployments
and the recent flow runs."""
import asyncio
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from vlforge.cli_common import JsonOpt, app, command, emit

server_app = typer.Typer(no_args_is_help=True, help="Start, stop or inspect a local Prefect server (needed for schedules).")
app.add_typer(server_app, name="server")


def _server_table(info: dict) -> Table:
    table = Table(title="prefect server")
    table.add_column("field")
    table.add_column("value")
    for k in ("running", "api_url", "pid", "log"):
        if k in info:
            table.add_row(k, str(info[k]))
    return table


@server_app.command("start")
@command
def server_start(
    out: Console,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 4200,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    as_json: JsonOpt = False,
) -> None:
    """Start a Prefect server (SQLite under $VLFORGE_HOME) in the background and wait until it is healthy."""
    from vlforge import prefect_server as server

    info = server.start(host=host, port=port)
    emit(out, as_json, info, lambda: out.print(_server_table(info)))


@server_app.command("stop")
@command
def server_stop(out: Console, as_json: JsonOpt = False) -> None:
    """Stop the server this home started."""
    from vlforge import prefect_server as server

    info = server.stop()
    emit(out, as_json, info, lambda: out.print("stopped" if info["stopped"] else "no server was running"))


@server_app.command("status")
@command
def server_status(out: Console, as_json: JsonOpt = False) -> None:
    """Whether this home's server is running, and where."""
    from vlforge import prefect_server as server

    info = server.status()
    emit(out, as_json, info, lambda: out.print(_server_table(info)))


@app.command("deploy")
@command
def deploy(
    out: Console,
    schedules: Annotated[Optional[Path], typer.Option(help="YAML file of deployments and schedules.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate the file and exit.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Flow runs executed at once.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Register the flows' deployments with their schedules on the running server and serve them (blocks)."""
    from vlforge.errors import UserError
    from vlforge import prefect_server as server
    from vlforge.deployments import load_schedules, serve

    spec = load_schedules(schedules)
    summary = [d.model_dump() for d in spec.deployments]
    if check:
        emit(out, as_json, {"deployments": summary}, lambda: out.print(f"{len(summary)} deployment(s) valid"))
        return
    server.use_running_server()
    import os

    if not os.environ.get("PREFECT_API_URL"):
        raise UserError("schedules need a running Prefect server: run `vlforge server start` (or set PREFECT_API_URL)")
    emit(out, as_json, {"deployments": summary, "api_url": os.environ["PREFECT_API_URL"]},
         lambda: out.print(f"serving {len(summary)} deployment(s) on {os.environ['PREFECT_API_URL']} (Ctrl-C stops)"))
    out.file.flush()
    serve(spec, limit=limit)


@app.command("runs")
@command
def runs(
    out: Console,
    limit: Annotated[int, typer.Option(help="How many runs, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Recent flow runs with state and duration (from the Prefect API)."""
    from vlforge import prefect_server as server

    server.use_running_server()
    rows = asyncio.run(_recent_runs(limit))

    def human() -> None:
        table = Table(title=f"flow runs ({len(rows)})")
        for col in ("flow", "run", "state", "started", "seconds", "deployment"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["flow"], r["name"], r["state"], (r["start_time"] or "")[:19],
                          f"{r['duration_s']:.1f}" if r["duration_s"] is not None else "", r["deployment"] or "")
        out.print(table)

    emit(out, as_json, rows, human)


async def _recent_runs(limit: int) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    from datetime import datetime, timezone

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime

    started = FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(timezone.utc)))
    async with get_client() as client:  # runs due by now (not the queue of future scheduled ones), newest first
        flow_runs = await client.read_flow_runs(flow_run_filter=started, sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit)
        flows = {f.id: f.name for f in await client.read_flows()}
        deployments = {d.id: d.name for d in await client.read_deployments()}
    return [
        {
            "id": str(r.id),
            "name": r.name,
            "flow": flows.get(r.flow_id, str(r.flow_id)),
            "state": r.state_name or (r.state.type.value if r.state else "UNKNOWN"),
            "start_time": r.start_time.isoformat() if r.start_time else None,
            "duration_s": r.total_run_time.total_seconds() if r.total_run_time is not None else None,
            "deployment": deployments.get(r.deployment_id) if r.deployment_id else None,
        }
        for r in flow_runs
    ]


@app.command("reproduce")
@command
def reproduce(
    out: Console,
    ref: Annotated[str, typer.Argument(help="Artifact REF to rebuild with its ancestors.")],
    ray_address: Annotated[Optional[str], typer.Option(help="Existing Ray cluster for the training stage.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-run the DAG that made an artifact with caching off; report whether each content hash matches."""
    from vlforge.components.reproduce import reproduce as rebuild
    from vlforge.settings import open_catalog

    rows = rebuild(ref, open_catalog(), ray_address)

    def human() -> None:
        table = Table(title="reproduce")
        for col in ("kind", "name", "artifact", "expected", "rebuilt", "match"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["kind"], r["name"], r["id"][:12], r["expected"][:12], r["rebuilt"][:12],
                          "yes" if r["match"] else f"NO {', '.join(r['mismatched_files'])}")
        out.print(table)

    emit(out, as_json, rows, human)
    if not all(r["match"] for r in rows):
        raise typer.Exit(1)
