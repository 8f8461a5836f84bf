"""``vlforge catalog serve``: a read-only web browser of the catalog, on the standard library's HTTP server.

Where it sits: beside the CLI, over the same :class:`~vlforge.catalog.store.Catalog`; it never writes. Pages:

* ``/``                  index with search and filters (kind, family, tag, alias, sort by a metric)
* ``/a/<id>``            one artifact: card, metrics, plots (its PNG files), samples of a dataset, config, files
                         with sizes and hashes, and its lineage both ways as nested lists of links
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
import mimetypes
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from vlforge.catalog.store import Artifact, Catalog, Query

from vlforge.errors import UserError

__all__ = ["make_server"]

_PAGE_SIZE = 100
_SAMPLES_SHOWN = 12
_ACTIVE_TYPES = {"text/html", "image/svg+xml", "application/javascript", "text/javascript", "application/xhtml+xml"}
_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'"
_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;max-width:1200px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}pre{background:#f6f6f6;padding:8px;
overflow:auto;white-space:pre-wrap}img.plot{max-width:480px;border:1px solid #ddd;margin:4px}code{font-size:12px}
.kind{font-weight:bold;color:#555}nav a{margin-right:1em}"""


def _e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _link(artifact: Artifact) -> str:
    return (f'<a href="/a/{artifact.id}" class="artifact-link" data-kind="{_e(artifact.kind)}">'
            f'{_e(artifact.name)}:{artifact.version}</a> <span class="kind">{_e(artifact.kind)}</span> '
            f'<code>{artifact.short_id}</code>')


def _page(title: str, body: str) -> bytes:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_STYLE}</style>'
            f'</head><body><nav><a href="/">catalog</a></nav><h1>{_e(title)}</h1>{body}</body></html>').encode()


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
                 _e(", ".join(f"{k}={v}" for k, v in sorted(a.metrics.items())[:4]))] for a in artifacts]
        body = (f'{form}<p id="count">{total} artifact(s){f", first {_PAGE_SIZE} shown" if total > _PAGE_SIZE else ""}'
                f'</p><form method="get" action="/compare" id="compare"><button type="submit">compare selected'
                f'</button></form>'
                + _table(["", "artifact", "family", "aliases", "tags", "created", "metrics"], rows, "artifacts"))
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
            parts.append('<h2>Card</h2><pre id="card">'
                         + _e((view / card.path).read_text(encoding="utf-8", errors="replace")) + "</pre>")
        parts.append("<h2>Metrics</h2>" + _table(["metric", "value"], [[_e(k), _e(v)] for k, v in
                                                                        sorted(a.metrics.items())], "metrics"))
        plots = [f for f in a.files if f.path.lower().endswith(".png")]
        if plots:
            parts.append("<h2>Plots and samples</h2>" + "".join(
                f'<figure style="display:inline-block"><img class="plot" alt="{_e(f.path)}" '
                f'src="/file/{a.id}/{quote(f.path)}"><figcaption>{_e(f.path)}</figcaption></figure>' for f in plots[:24]))
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
