"""``vlforge leaderboard``: every family on every task it was evaluated on, side by side (rows from
``components/evaluation/leaderboard.py``), also written to ``$VLFORGE_HOME/leaderboard.html``.

    vlforge leaderboard [--json] [--publish]

``--publish`` runs the leaderboard flow (``flows/leaderboard.py``), which also publishes a Prefect table artifact."""
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vlforge.cli_common import JsonOpt, app, command, emit, open_catalog


def _short_version(version: str) -> str:
    return version[:12] + ("+dirty" if version.endswith("+dirty") else "")


@app.command("leaderboard")
@command
def leaderboard(
    out: Console,
    publish: Annotated[bool, typer.Option("--publish", help="Also publish a Prefect table artifact (runs the flow).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare every evaluated model on every task: headline metric, untrained baseline, data/config/code versions
    and, for the NLU probe of a model started from a text encoder, that encoder and the visual extension's delta."""
    from vlforge.components.evaluation.leaderboard import leaderboard_rows, write_html
    from vlforge.settings import vlforge_home

    if publish:
        from vlforge.flows.leaderboard import leaderboard_flow

        rows = leaderboard_flow()["rows"]
    else:
        rows = leaderboard_rows(open_catalog())
        write_html(rows, vlforge_home() / "leaderboard.html")

    def human() -> None:
        table = Table(title=f"leaderboard ({vlforge_home() / 'leaderboard.html'})")
        compared = any(r.get("visual_extension_delta") is not None for r in rows)  # the NLU probe's text encoder
        for col in ("family", "model", "task", "metric", "value", "baseline", "data", "config", "code_version",
                    *(("text_encoder", "visual_extension_delta") if compared else ())):
            table.add_column(col)
        for r in rows:
            delta = r.get("visual_extension_delta")
            table.add_row(r["family"], r["model"], r["task"], r["metric"], f"{r['value']:.4f}",
                          "-" if r["baseline"] is None else f"{r['baseline']:.4f}", f"{r['data']} ({r['split']})",
                          r["config"], _short_version(r["code_version"]),
                          *((r.get("text_encoder") or "-", "-" if delta is None else f"{delta:+.4f}") if compared else ()))
        out.print(table)

    emit(out, as_json, rows, human)
