"""Reading user-supplied sources: URL lists and tables of local image paths.

A URL list (parquet, csv, tsv or jsonl with a URL column and a caption column) is what a user with CC3M, LAION
or DataComp metadata has. A local table names image files (paths relative to the table) with captions, like
``shared/data/emoji-noto/pairs.parquet``. Both become the same normalised ``SourceRows`` the crawl consumes."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from vlforge.errors import UserError

TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
NORMALISED_COLUMNS = ("url", "caption", "source_key", "label", "facts")


@dataclass
class SourceRows:
    """Rows ready to crawl: url, caption, source_key (stable id), label (class or ''), facts (JSON or '')."""

    table: pa.Table
    files: dict[str, Path] = field(default_factory=dict)  # names a loopback server must serve (local sources)
    fingerprint: str = ""  # hash of the source's content, for cache keys
    description: dict = field(default_factory=dict)


def read_table(path: Path) -> pa.Table:
    """Read a parquet/csv/tsv/jsonl table; UserError on a missing, unknown or unreadable file."""
    if not path.is_file():
        raise UserError(f"source table '{path}' does not exist")
    fmt = TABLE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"source table '{path}' has unknown format '{path.suffix}' (use .parquet, .csv, .tsv or .jsonl)")
    try:
        if fmt == "parquet":
            return pq.read_table(path)
        if fmt == "csv":
            return pacsv.read_csv(path)
        if fmt == "tsv":
            return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t"))
        return pajson.read_json(path)
    except (pa.ArrowInvalid, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"source table '{path}' cannot be read as {fmt}: {first_line}") from None


def _require_columns(path: Path, table: pa.Table, *names: str) -> None:
    for name in names:
        if name not in table.column_names:
            raise UserError(
                f"source table '{path}' has no column '{name}' (columns: {', '.join(table.column_names) or 'none'})"
            )


def _as_str_list(table: pa.Table, name: str) -> list[str]:
    return ["" if v is None else str(v) for v in table.column(name).to_pylist()]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_url_list(path: Path, url_col: str = "url", caption_col: str = "caption", label_col: str | None = None) -> SourceRows:
    """A URL list of remote images. Rows whose URL is empty are dropped (and counted)."""
    table = read_table(path)
    _require_columns(path, table, url_col, caption_col, *([label_col] if label_col else []))
    urls = _as_str_list(table, url_col)
    captions = _as_str_list(table, caption_col)
    labels = _as_str_list(table, label_col) if label_col else [""] * len(urls)
    keep = [i for i, u in enumerate(urls) if u.strip()]
    if not keep:
        raise UserError(f"source table '{path}' has no rows with a URL in column '{url_col}'")
    rows = pa.table(
        {
            "url": [urls[i].strip() for i in keep],
            "caption": [captions[i] for i in keep],
            "source_key": [hashlib.sha256(f"{urls[i]}\n{captions[i]}".encode()).hexdigest()[:20] for i in keep],
            "label": [labels[i] for i in keep],
            "facts": [""] * len(keep),
        }
    )
    return SourceRows(
        table=rows,
        fingerprint=_file_sha256(path),
        description={"kind": "url-list", "path": str(path), "rows": table.num_rows, "empty_urls": len(urls) - len(keep)},
    )


def load_local_table(
    path: Path, path_col: str = "path", caption_col: str = "caption", label_col: str | None = None, key_col: str | None = None
) -> SourceRows:
    """A table of local image files (paths relative to the table's folder) with captions."""
    table = read_table(path)
    _require_columns(path, table, path_col, caption_col, *([label_col] if label_col else []), *([key_col] if key_col else []))
    if table.num_rows == 0:
        raise UserError(f"source table '{path}' is empty")
    base = path.parent.resolve()
    paths = _as_str_list(table, path_col)
    captions = _as_str_list(table, caption_col)
    labels = _as_str_list(table, label_col) if label_col else [""] * len(paths)
    keys = _as_str_list(table, key_col) if key_col else paths
    files: dict[str, Path] = {}
    names: list[str] = []
    digest = hashlib.sha256(_file_sha256(path).encode())
    for i, rel in enumerate(paths):
        image = (base / rel).resolve()
        if not image.is_file():
            raise UserError(f"source table '{path}' row {i}: image file '{rel}' does not exist")
        name = f"{i:08d}{image.suffix.lower()}"
        files[name] = image
        names.append(name)
        stat = image.stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    rows = pa.table(
        {
            "url": names,  # completed with the loopback server's base URL at crawl time
            "caption": captions,
            "source_key": keys,
            "label": labels,
            "facts": [""] * len(names),
        }
    )
    return SourceRows(
        table=rows, files=files, fingerprint=digest.hexdigest(), description={"kind": "local-table", "path": str(path), "rows": len(names)}
    )


def sniff_table_kind(path: Path, url_col: str = "url", path_col: str = "path") -> str:
    """'local' when the table has the path column and no URL column, else 'url-list'."""
    table = read_table(path)
    if path_col in table.column_names and url_col not in table.column_names:
        return "local"
    return "url-list"


def facts_json(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
