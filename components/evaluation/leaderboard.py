"""The family leaderboard: one row per (model, dataset split, task) from the eval reports in the catalog, its
headline metric beside the untrained baseline computed the same way, and the versions that produced it.

Read by ``vlforge leaderboard`` (``vlforge/cli_eval.py``), the leaderboard flow (``flows/leaderboard.py``, which
also publishes it as a Prefect table artifact) and the web catalog's ``/leaderboard`` page (``catalog/web.py``).
When a model was evaluated on the same data and task more than once the newest report wins. ``write_html`` renders
the rows and a bar chart per task to one self-contained page.

An NLU-probe row of a model whose text side started from a text encoder also names that encoder (``text_encoder``)
and carries the visual extensions' effect (``visual_extension_delta``: the model's headline minus the encoder's
under the same fine-tuning, Iki & Aizawa 2021); every other row has None there, and the page shows the two columns
only when some row has them."""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import tempfile
from pathlib import Path

from vlforge.catalog import Artifact, Catalog
from vlforge.components.evaluation.headline import headline_metrics, untrained_value
from vlforge.components.evaluation.nlu_probe import DELTA
from vlforge.components.evaluation.tasks import TASKS

COLUMNS = ("family", "model", "task", "metric", "value", "baseline", "data", "split", "config", "code_version",
           "model_id", "data_id", "eval_id", "text_encoder", "visual_extension_delta")
COMPARISON = ("text_encoder", "visual_extension_delta")  # shown where some row has them


def config_version(config: dict) -> str:
    """A short hash of a training config (the recipe's values), so two rows show whether the same config made them."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def leaderboard_rows(catalog: Catalog) -> list[dict]:
    rows: list[dict] = []
    seen: set[tuple[str, str, str, str]] = set()
    for ev in catalog.list(kind="eval"):  # newest first
        if len(ev.parents) < 2:
            continue
        model, data = catalog.get(ev.parents[0]), catalog.get(ev.parents[1])
        split = str(ev.config.get("split", ""))
        for task in ev.config.get("tasks", []):
            if task not in TASKS or (model.id, data.id, split, task) in seen:
                continue
            headline = headline_metrics(ev.metrics, [task], most=0)
            if not headline:
                continue
            (metric, value), = headline
            seen.add((model.id, data.id, split, task))
            rows.append({
                "family": model.family or "", "model": f"{model.name}:v{model.version}", "task": task, "metric": metric,
                "value": value, "baseline": untrained_value(ev.metrics, metric),
                "data": f"{data.name}:v{data.version}", "split": split,
                "config": f"{model.config.get('recipe', '?')}@{config_version(model.config)}",
                "code_version": ev.code_version or "", "model_id": model.id, "data_id": data.id, "eval_id": ev.id,
                **text_encoder_cells(catalog, ev, task),
            })
    rows.sort(key=lambda r: (r["task"], r["data"], -r["value"], r["family"], r["model"]))
    return rows


def text_encoder_cells(catalog: Catalog, ev: Artifact, task: str) -> dict[str, str | float | None]:
    """The NLU probe's comparison with the text encoder, where the eval made one: the encoder as ``name:vN`` (a
    folder outside the catalog: its path) and the delta; None for both elsewhere."""
    delta = ev.metrics.get(DELTA)
    if task != "nlu_probe" or not isinstance(delta, (int, float)):
        return {"text_encoder": None, "visual_extension_delta": None}
    ref = ev.config.get("nlu_text_encoder_id")
    encoder = catalog.get(ref) if ref and catalog.exists(ref) else None
    name = (f"{encoder.name}:v{encoder.version}" if encoder else
            str(ref)[:12] if ref else str(ev.config.get("nlu_text_encoder") or "?"))  # the id still says which
    return {"text_encoder": name, "visual_extension_delta": float(delta)}


def chart_png(rows: list[dict]) -> bytes:
    """The leaderboard's bar chart (a panel per task, trained beside untrained) as PNG bytes."""
    from vlforge.components.evaluation.plots import plot_leaderboard

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chart.png"
        plot_leaderboard(rows, path)
        return path.read_bytes()


def render_html(rows: list[dict]) -> str:
    compared = any(r.get("visual_extension_delta") is not None for r in rows)
    columns = [c for c in COLUMNS if compared or c not in COMPARISON]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = io.StringIO()
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            text = f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))
            if c.endswith("_id"):
                text = text[:12]
            cells.append(f"<td>{html.escape(text)}</td>")
        body.write(f"<tr>{''.join(cells)}</tr>\n")
    encoded = base64.b64encode(chart_png(rows)).decode() if rows else ""
    chart = f'<img alt="headline metric per task" src="data:image/png;base64,{encoded}">' if rows else \
        "<p>No eval reports yet.</p>"
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>vlforge leaderboard</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}</style></head><body>\n"
        "<h1>vlforge leaderboard</h1>\n<p>Each value is the task's headline metric on the named data split; "
        "<em>baseline</em> is the same metric for an untrained model of the same family and recipe. "
        "config = recipe@hash of its values; code_version = the git commit that produced the report."
        + (" visual_extension_delta = the NLU probe's headline minus that of the text encoder the model started "
           "from (text_encoder), fine-tuned the same way." if compared else "") + "</p>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n{body.getvalue()}</tbody></table>\n{chart}\n</body></html>\n"
    )


def write_html(rows: list[dict], path: Path) -> Path:
    """Write the page atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".leaderboard-", suffix=".html", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(render_html(rows))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the page is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
