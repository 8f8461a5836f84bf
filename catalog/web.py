"""``vlforge catalog serve``: a read-only web browser of the catalog, on the standard library's HTTP server.

Where it sits: beside the CLI, over the same :class:`~vlforge.catalog.store.Catalog`; it never writes. It reads
the evaluation layer for two things: the headline rule (``components/evaluation/headline.py``) and the leaderboard
(``components/evaluation/leaderboard.py``). Pages:

* ``/``                  index with search and filters (kind, family, tag, alias, sort by a metric); an eval shows
                         its tasks' headline metrics beside the untrained baseline's
* ``/a/<id>``            one artifact: its card (markdown rendered, raw HTML shown as text), metrics, for a model
                         its training plot, its training and validation curves (``loss`` and ``val_*`` of
                         ``train_log.jsonl``) and the evaluations made of it, other plots (its PNG files), samples
                         of a dataset, config, files with sizes and hashes, and its lineage both ways
* ``/leaderboard``       every evaluated model on every task, headline metric beside the untrained baseline, and
                         its chart (``/leaderboard/chart.png``)
* ``/compare?id=..&id=..`` artifacts side by side (config keys, metrics, parents)
* ``/file/<id>/<path>``  one file of an artifact, looked up in the index by exact path (never joined onto the
                         filesystem from the URL, so no traversal), checked against its hash, served with its type

Captions, names and configs come from the internet, so every value goes through :func:`html.escape`; the pages
also carry a Content-Security-Policy that allows no script at all, and files that a browser would render as
active content (HTML, SVG, JS) are served as plain text.
"""
from __future__ import annotations

import html
import json
import math
import mimetypes
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import markdown
from vlforge.catalog.store import Artifact, Catalog, Query
from vlforge.components.evaluation.headline import headline_metrics, untrained_value
from vlforge.components.evaluation.leaderboard import chart_png, leaderboard_rows

from vlforge.errors import UserError

__all__ = ["make_server"]

_PAGE_SIZE = 100
_SAMPLES_SHOWN = 12
_ACTIVE_TYPES = {"text/html", "image/svg+xml", "application/javascript", "text/javascript", "application/xhtml+xml"}
_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'"
_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;max-width:1200px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}pre{background:#f6f6f6;padding:8px;
overflow:auto;white-space:pre-wrap}img.plot{max-width:480px;border:1px solid #ddd;margin:4px}code{font-size:12px}
.kind{font-weight:bold;color:#555}nav a{margin-right:1em}#card{border:1px solid #ddd;padding:0 1em;max-width:900px}
svg.curve{border:1px solid #ddd;margin:4px;background:#fff}"""
_TRAIN_LOG = "train_log.jsonl"  # written by components/training/loop.py beside a model's weights
_CURVE_W, _CURVE_H, _CURVE_PAD = 320, 150, 34
_CHART_LOCK = threading.Lock()  # pyplot is not thread-safe and the server is threaded


def _e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _link(artifact: Artifact) -> str:
    return (f'<a href="/a/{artifact.id}" class="artifact-link" data-kind="{_e(artifact.kind)}">'
            f'{_e(artifact.name)}:{artifact.version}</a> <span class="kind">{_e(artifact.kind)}</span> '
            f'<code>{artifact.short_id}</code>')


def _page(title: str, body: str) -> bytes:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_STYLE}</style>'
            f'</head><body><nav><a href="/">catalog</a><a href="/leaderboard">leaderboard</a></nav><h1>{_e(title)}</h1>'
            f'{body}</body></html>').encode()


def _table(headers: list[str], rows: list[list[str]], css_id: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    cells = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table{f" id={css_id!r}" if css_id else ""}><tr>{head}</tr>{cells}</table>'


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` so nested configs compare key by key (compare page and ``catalog diff``)."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat |= flatten(item, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): value}


class _SafeLinks(markdown.treeprocessors.Treeprocessor):
    """Drop link targets and image sources a card could use to leave the page: links may be relative, http(s) or
    mailto; images only relative (the page's CSP allows images from this server alone)."""

    def run(self, root: Any) -> None:
        for element in root.iter():
            for attribute, allowed in (("href", ("", "http", "https", "mailto")), ("src", ("",))):
                value = element.get(attribute)
                if value is None:
                    continue
                plain = "".join(ch for ch in html.unescape(value) if ch.isprintable() and not ch.isspace())
                if urlsplit(plain).scheme.lower() not in allowed or plain.startswith("//"):
                    del element.attrib[attribute]


def render_markdown(text: str) -> str:
    """A card's markdown as HTML (headings, lists, tables, code, emphasis, links). Raw HTML in the card is shown
    as text, never passed through: cards quote captions from the internet."""
    md = markdown.Markdown(extensions=["tables", "fenced_code", "sane_lists"], output_format="html")
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    md.treeprocessors.register(_SafeLinks(md), "safe_links", 5)  # after the inline patterns (20) made the links
    return md.convert(text)


def _headline_cell(artifact: Artifact, most: int = 4) -> str:
    """An artifact's headline metrics for the index: an eval's per task (with the untrained baseline), anything
    else's own numeric metrics."""
    tasks = artifact.config.get("tasks", []) if artifact.kind == "eval" else []
    shown = []
    for key, value in headline_metrics(artifact.metrics, tasks if isinstance(tasks, list) else [], most=most):
        baseline = untrained_value(artifact.metrics, key)
        shown.append(f"{key}={value:.4g}" + ("" if baseline is None else f" (untrained {baseline:.4g})"))
    return _e(", ".join(shown))


def _curve_svg(name: str, points: list[tuple[float, float]]) -> str:
    """One series by step as an inline SVG line chart (no script, so the page's CSP is unchanged)."""
    w, h, pad = _CURVE_W, _CURVE_H, _CURVE_PAD
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)

    def at(x: float, y: float) -> tuple[float, float]:
        return (pad + (x - x0) / ((x1 - x0) or 1) * (w - 2 * pad),
                h - pad - (y - y0) / ((y1 - y0) or 1) * (h - 2 * pad))

    line = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in (at(x, y) for x, y in points))
    last_x, last_y = at(*points[-1])
    marks = f'<circle cx="{last_x:.1f}" cy="{last_y:.1f}" r="2" fill="#4477aa"/>'
    return (f'<svg class="curve" data-series="{_e(name)}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            f'role="img" aria-label="{_e(name)} by step"><text x="{pad}" y="14" font-size="12">{_e(name)}</text>'
            f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#999"/>'
            f'<text x="2" y="{pad + 4}" font-size="9">{y1:.3g}</text>'
            f'<text x="2" y="{h - pad}" font-size="9">{y0:.3g}</text>'
            f'<text x="{pad}" y="{h - pad + 14}" font-size="9">step {x0:g}</text>'
            f'<text x="{w - pad}" y="{h - pad + 14}" font-size="9" text-anchor="end">{x1:g}</text>'
            f'<polyline fill="none" stroke="#4477aa" stroke-width="1.5" points="{line}"/>{marks}</svg>')


def training_curves(log_text: str) -> dict[str, list[tuple[float, float]]]:
    """``{series: [(step, value), ...]}`` from a training log (JSON lines): the training ``loss`` and every
    ``val_*`` metric an in-training evaluation logged. Lines that are not JSON objects are skipped."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for line in log_text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
            continue
        for key, value in row.items():
            if (key == "loss" or key.startswith("val_")) and isinstance(value, (int, float)) \
                    and not isinstance(value, bool) and math.isfinite(value):
                curves.setdefault(key, []).append((float(row["step"]), float(value)))
    return curves


def _figure(artifact: Artifact, relpath: str) -> str:
    return (f'<figure style="display:inline-block"><img class="plot" alt="{_e(relpath)}" '
            f'src="/file/{artifact.id}/{quote(relpath)}"><figcaption>{_e(relpath)}</figcaption></figure>')


class _Handler(BaseHTTPRequestHandler):
    catalog: Catalog
    server_version = "vlforge-catalog"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: the CLI's stdout is for the one "serving on" line

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        try:
            if url.path == "/":
                self._send(200, "text/html; charset=utf-8", self._index(params))
            elif match := re.fullmatch(r"/a/([0-9a-f]{64})", url.path):
                self._send(200, "text/html; charset=utf-8", self._artifact(match.group(1)))
            elif url.path == "/compare":
                self._send(200, "text/html; charset=utf-8", self._compare(params.get("id", [])))
            elif url.path == "/leaderboard":
                self._send(200, "text/html; charset=utf-8", self._leaderboard())
            elif url.path == "/leaderboard/chart.png":
                self._leaderboard_chart()
            elif match := re.fullmatch(r"/file/([0-9a-f]{64})/(.+)", url.path):
                self._file(match.group(1), unquote(match.group(2)))
            else:
                self._send(404, "text/html; charset=utf-8", _page("not found", f"<p>no page {_e(url.path)}</p>"))
        except UserError as exc:
            self._send(404, "text/html; charset=utf-8", _page("not found", f"<p>{_e(exc)}</p>"))

    def _send(self, status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # ------------------------------------------------------------------ pages

    def _index(self, params: dict[str, list[str]]) -> bytes:
        def one(key: str) -> str | None:
            return (params.get(key) or [""])[0].strip() or None

        query = Query(kind=one("kind"), family=one("family"), text=one("q"), tag=one("tag"), alias=one("alias"),
                      sort_metric=one("sort"))
        total = self.catalog.count(query)
        artifacts = self.catalog.search(query, limit=_PAGE_SIZE)
        facets = self.catalog.facets()

        def select(key: str) -> str:
            options = "".join(f'<option value="{_e(v)}"{" selected" if v == one(key) else ""}>{_e(v)}</option>'
                              for v in facets[key])
            return f'<label>{key} <select name="{key}"><option value="">any</option>{options}</select></label> '

        form = (f'<form method="get" action="/" id="search"><input type="search" name="q" id="q" '
                f'value="{_e(one("q") or "")}" placeholder="name, family or id prefix"> '
                f'{select("kind")}{select("family")}{select("tag")}{select("alias")}'
                f'<label>sort by metric <input name="sort" size="10" value="{_e(one("sort") or "")}"></label> '
                f'<button type="submit">search</button></form>')
        rows = [[f'<input type="checkbox" name="id" value="{a.id}" form="compare">', _link(a), _e(a.family or ""),
                 _e(", ".join(a.aliases)), _e(", ".join(a.tags)), _e(a.created_at[:19]),
                 _headline_cell(a)] for a in artifacts]
        body = (f'{form}<p id="count">{total} artifact(s){f", first {_PAGE_SIZE} shown" if total > _PAGE_SIZE else ""}'
                f'</p><form method="get" action="/compare" id="compare"><button type="submit">compare selected'
                f'</button></form>'
                + _table(["", "artifact", "family", "aliases", "tags", "created", "headline metrics"], rows,
                         "artifacts"))
        return _page("vlforge catalog", body)

    def _tree(self, node: dict[str, Any], key: str) -> str:
        items = "".join(f"<li>{_link(child['artifact'])}{self._tree(child, key)}</li>" for child in node[key])
        return f"<ul>{items}</ul>" if items else ""

    def _artifact(self, artifact_id: str) -> bytes:
        a = self.catalog.get(artifact_id)
        parts = [f'<p><span class="kind">{_e(a.kind)}</span> <code id="artifact-id">{a.id}</code> · family '
                 f'{_e(a.family or "-")} · aliases {_e(", ".join(a.aliases) or "-")} · tags '
                 f'{_e(", ".join(a.tags) or "-")} · created {_e(a.created_at)} · code {_e(a.code_version or "unknown")}'
                 f'</p>']
        siblings = [s for s in self.catalog.search(Query(name=a.name), limit=20) if s.id != a.id]
        if siblings:
            parts.append("<p>compare with: " + " ".join(
                f'<a href="/compare?id={a.id}&amp;id={s.id}">{_e(s.name)}:{s.version}</a>' for s in siblings) + "</p>")
        card = next((f for f in a.files if f.path.lower() == "readme.md"), None)
        view = self.catalog.path(a.id) if a.files else None
        if card and view is not None:
            parts.append('<h2>Card</h2><div id="card">'
                         + render_markdown((view / card.path).read_text(encoding="utf-8", errors="replace")) + "</div>")
        parts.append("<h2>Metrics</h2>" + _table(["metric", "value"], [[_e(k), _e(v)] for k, v in
                                                                        sorted(a.metrics.items())], "metrics"))
        plots = [f for f in a.files if f.path.lower().endswith(".png")]
        if a.kind == "model":
            parts.append(self._training(a, view, [f for f in plots if f.path == "loss.png"]))
            plots = [f for f in plots if f.path != "loss.png"]
        if plots:
            parts.append("<h2>Plots and samples</h2>" + "".join(_figure(a, f.path) for f in plots[:24]))
        if view is not None and any(f.path == "samples.parquet" for f in a.files):
            parts.append("<h2>Samples</h2>" + self._samples(view / "samples.parquet"))
        parts.append('<h2>Lineage</h2><h3>Made from</h3><div id="ancestors">'
                     + (self._tree(self.catalog.lineage_tree(a.id), "parents") or "<p>nothing (a root)</p>")
                     + '</div><h3>Made from it</h3><div id="descendants">'
                     + (self._tree(self.catalog.descendants_tree(a.id), "children") or "<p>nothing yet</p>") + "</div>")
        parts.append('<h2>Config</h2><pre id="config">' + _e(json.dumps(a.config, indent=2, sort_keys=True)) + "</pre>")
        parts.append("<h2>Files</h2>" + _table(["path", "bytes", "sha256"], [
            [f'<a href="/file/{a.id}/{quote(f.path)}">{_e(f.path)}</a>', f"{f.size:,}", f"<code>{f.sha256}</code>"]
            for f in a.files], "files"))
        parts.append("<h2>Environment</h2>" + _table(["package", "version"], [[_e(k), _e(v)] for k, v in
                                                                            sorted(a.packages.items())]))
        return _page(f"{a.kind} {a.name}:{a.version}", "".join(parts))

    def _training(self, model: Artifact, view: Any, loss_plot: list[Any]) -> str:
        """A model's training plot, its curves from the training log, and the evaluations made of it."""
        parts = ['<h2>Training</h2><div id="training">']
        parts.extend(_figure(model, f.path) for f in loss_plot)
        log = next((f for f in model.files if f.path == _TRAIN_LOG), None)
        curves = training_curves((view / log.path).read_text(encoding="utf-8", errors="replace")) \
            if log is not None and view is not None else {}
        if curves:
            validation = sorted(k for k in curves if k != "loss")
            parts.append('<div id="curves">' + "".join(_curve_svg(k, curves[k]) for k in ["loss", *validation]
                                                        if k in curves) + "</div>")
            if not validation:
                parts.append("<p>No validation curves: the run logged no <code>val_*</code> metrics.</p>")
        parts.append("</div>")
        evals = [e for e in self.catalog.descendants(model.id) if e.kind == "eval" and e.parents[:1] == [model.id]]
        if evals:
            rows = [[_link(e), _e(e.config.get("split", "")), _headline_cell(e, most=8)] for e in evals]
            parts.append("<h2>Evaluations</h2>" + _table(["eval", "split", "headline metrics"], rows, "evaluations"))
        return "".join(parts)

    def _leaderboard(self) -> bytes:
        rows = leaderboard_rows(self.catalog)
        if not rows:
            return _page("leaderboard", "<p>No eval reports yet: run <code>vlforge run eval</code> or "
                                        "<code>vlforge run pipeline</code>.</p>")
        # the NLU probe's comparison with the text encoder the model started from, where some eval made one
        compared = any(r.get("visual_extension_delta") is not None for r in rows)
        table = _table(["family", "model", "task", "metric", "value", "untrained", "data", "split", "config", "code",
                        "eval", *(("text encoder", "visual extension delta") if compared else ())], [[
                            _e(r["family"]), f'<a href="/a/{r["model_id"]}">{_e(r["model"])}</a>', _e(r["task"]),
                            _e(r["metric"]), f'{r["value"]:.4f}',
                            "-" if r["baseline"] is None else f'{r["baseline"]:.4f}',
                            f'<a href="/a/{r["data_id"]}">{_e(r["data"])}</a>', _e(r["split"]), _e(r["config"]),
                            f'<code>{_e(r["code_version"][:12] or "-")}</code>',
                            f'<a href="/a/{r["eval_id"]}">{r["eval_id"][:12]}</a>',
                            *((_e(r.get("text_encoder") or "-"), "-" if r.get("visual_extension_delta") is None
                               else f'{r["visual_extension_delta"]:+.4f}') if compared else ())] for r in rows],
                       "leaderboard")
        return _page("leaderboard", "<p>Each value is the task's headline metric on the named data split; "
                     "<em>untrained</em> is the same metric for an untrained model of the same family and recipe.</p>"
                     + table + '<p><img class="plot" id="leaderboard-chart" alt="headline metric per task" '
                     'src="/leaderboard/chart.png"></p>')

    def _leaderboard_chart(self) -> None:
        rows = leaderboard_rows(self.catalog)
        if not rows:
            self._send(404, "text/html; charset=utf-8", _page("not found", "<p>no eval reports yet</p>"))
            return
        with _CHART_LOCK:
            png = chart_png(rows)
        self._send(200, "image/png", png, {"Cache-Control": "no-cache"})

    def _samples(self, path: Any) -> str:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = [c for c in ("key", "caption", "label", "split") if c in table.column_names]
        rows = table.select(columns).slice(0, _SAMPLES_SHOWN).to_pylist()
        return _table(columns, [[_e(row[c]) for c in columns] for row in rows], "samples")

    def _compare(self, ids: list[str]) -> bytes:
        if len(ids) < 2:
            return _page("compare", "<p>Pick at least two artifacts on the index to compare.</p>")
        arts = [self.catalog.get(ref) for ref in ids[:6]]
        head = ["", *[_link(a) for a in arts]]
        configs = [flatten(a.config) for a in arts]
        rows = [["<b>kind</b>", *[_e(a.kind) for a in arts]], ["<b>family</b>", *[_e(a.family or "") for a in arts]],
                ["<b>created</b>", *[_e(a.created_at[:19]) for a in arts]],
                ["<b>parents</b>", *["<br>".join(f'<a href="/a/{p}">{p[:12]}</a>' for p in a.parents) for a in arts]]]
        for key in sorted(set().union(*(a.metrics for a in arts))):
            rows.append([f"metric <b>{_e(key)}</b>", *[_e(a.metrics.get(key, "")) for a in arts]])
        for key in sorted(set().union(*configs)):
            values = [json.dumps(c.get(key)) if key in c else "" for c in configs]
            mark = " *" if len(set(values)) > 1 else ""
            rows.append([f"config {_e(key)}{mark}", *[_e(v) for v in values]])
        table = "<table id='compare-table'><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows) + "</table>"
        return _page("compare", "<p>* marks config keys that differ.</p>" + table)

    def _file(self, artifact_id: str, relpath: str) -> None:
        artifact = self.catalog.get(artifact_id)
        entry = next((f for f in artifact.files if f.path == relpath), None)
        if entry is None:
            self._send(404, "text/html; charset=utf-8", _page("not found", f"<p>{_e(artifact.name)} has no file "
                                                                           f"{_e(relpath)}</p>"))
            return
        data = (self.catalog.path(artifact_id) / entry.path).read_bytes()  # path() checks the hashes
        content_type = mimetypes.guess_type(entry.path)[0] or "application/octet-stream"
        if content_type in _ACTIVE_TYPES:
            content_type = "text/plain"
        if content_type.startswith("text/") or content_type == "application/json":
            content_type += "; charset=utf-8"
        self._send(200, content_type, data, {"Cache-Control": "max-age=3600, immutable", "ETag": f'"{entry.sha256}"'})

    def do_POST(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", b"read-only\n", {"Allow": "GET, HEAD"})

    do_PUT = do_DELETE = do_PATCH = do_POST


def make_server(catalog: Catalog, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """A threaded HTTP server over ``catalog`` bound to ``host:port`` (port 0: any free one); call
    ``serve_forever()`` on it. Raises :class:`UserError` if the address cannot be bound."""
    handler = type("CatalogHandler", (_Handler,), {"catalog": catalog})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise UserError(f"cannot serve the catalog on {host}:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    return server
