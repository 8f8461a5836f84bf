"""Reading user-supplied sources: URL lists and tables of local image paths.

A URL list (parquet, csv, tsv or jsonl with a URL column and a caption column) is what a user with CC3M, LAION
or DataComp metadata has; it may live on any ``fsspec`` filesystem (``s3://``, ``gs://``, ``https://``, ...,
with the user's own credentials). A local table names image files (paths relative to the table) with captions,
like ``shared/data/emoji-noto/pairs.parquet``; a local image folder is images with optional ``<stem>.txt``
caption sidecars. All become the same normalised ``SourceRows`` the crawl consumes."""
from __future__ import annotations

import hashlib
import json
import random
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
    """Rows ready to crawl: url, caption, source_key (stable id), label (class or ''), facts (JSON or ''), and
    for a benchmark layout ``extra`` (JSON: its own split, several captions, task fields; see ``local_image_rows``)."""

    table: pa.Table
    files: dict[str, Path] = field(default_factory=dict)  # names a loopback server must serve (local sources)
    fingerprint: str = ""  # hash of the source's content, for cache keys
    description: dict = field(default_factory=dict)


def is_remote(spec: str | Path) -> bool:
    """A ``protocol://`` path for fsspec (``file://`` included); a plain path is local."""
    return isinstance(spec, str) and "://" in spec


def read_remote_bytes(spec: str) -> bytes:
    """The bytes of an fsspec URL; UserError when it is missing, its protocol unknown or access refused."""
    import fsspec

    try:
        with fsspec.open(spec, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"source table '{spec}' does not exist") from None
    except (ImportError, ValueError) as exc:  # unknown protocol, or its driver (s3fs, gcsfs) is not installed
        raise UserError(f"source table '{spec}' cannot be opened: {str(exc).splitlines()[0]}") from None
    except (OSError, PermissionError) as exc:
        raise UserError(f"source table '{spec}' cannot be read: {str(exc).splitlines()[0] or type(exc).__name__}") from None


def read_parquet(source: object, columns: list[str] | None = None) -> pa.Table:
    """One parquet file (a path or a pyarrow buffer) as a table: ``pq.ParquetFile(...).read``, which, unlike
    ``pq.read_table``, does not import ``pyarrow.dataset`` (~0.35 s at a process's first read)."""
    return pq.ParquetFile(source).read(columns=columns)


def read_table(path: Path | str, data: bytes | None = None) -> pa.Table:
    """Read a parquet/csv/tsv/jsonl table (a local path, or an fsspec URL whose ``data`` may be given already);
    UserError on a missing, unknown or unreadable file."""
    suffix = Path(str(path).split("?", 1)[0]).suffix.lower()
    if is_remote(path):
        source: object = pa.BufferReader(data if data is not None else read_remote_bytes(str(path)))
    else:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"source table '{path}' does not exist")
        source = path
    fmt = TABLE_SUFFIXES.get(suffix)
    if fmt is None:
        raise UserError(f"source table '{path}' has unknown format '{suffix}' (use .parquet, .csv, .tsv or .jsonl)")
    try:
        if fmt == "parquet":
            return read_parquet(source)
        if fmt == "csv":
            return pacsv.read_csv(source)
        if fmt == "tsv":
            return pacsv.read_csv(source, parse_options=pacsv.ParseOptions(delimiter="\t"))
        return pajson.read_json(source)
    except (pa.ArrowInvalid, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"source table '{path}' cannot be read as {fmt}: {first_line}") from None


def read_json_file(path: Path, what: str) -> object:
    """A JSON file, or JSON lines (one value a line: ``.jsonl``, and NLVR2's ``.json``) as a list; UserError
    naming ``what`` when it is missing or neither."""
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise UserError(f"{what} '{path}' is not valid JSON: {exc}") from None


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


def load_url_list(path: Path | str, url_col: str = "url", caption_col: str = "caption", label_col: str | None = None) -> SourceRows:
    """A URL list of remote images (a local path or an fsspec URL). Rows whose URL is empty are dropped (and
    counted)."""
    if is_remote(path):
        data = read_remote_bytes(str(path))
        table, fingerprint = read_table(path, data), hashlib.sha256(data).hexdigest()
    else:
        path = Path(path)
        table, fingerprint = read_table(path), _file_sha256(path)
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
        fingerprint=fingerprint,
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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def local_image_rows(images: list[Path], captions: list[str], keys: list[str], description: dict, *,
                     labels: list[str] | None = None, extras: list[dict] | None = None, salt: str = "") -> SourceRows:
    """Rows for existing local image files, each served by the crawl's loopback server under a numbered name.
    ``extras`` (per row, optional) is what a benchmark layout adds: its own ``split``, several ``captions`` (the
    first is ``caption``), fields of its task; stored as a JSON column ``extra`` that the shard stage unpacks.
    The fingerprint covers each file's key, size and mtime and every row's text, after ``salt`` (the layout's
    own file's hash)."""
    labels = labels or [""] * len(images)
    files: dict[str, Path] = {}
    names, extra_json = [], []
    digest = hashlib.sha256(salt.encode())
    for i, image in enumerate(images):
        name = f"{i:08d}{image.suffix.lower()}"
        files[name] = image.resolve()
        names.append(name)
        extra_json.append(facts_json(extras[i]) if extras else "")
        stat = image.stat()
        digest.update(f"{keys[i]}\0{stat.st_size}\0{stat.st_mtime_ns}\0{captions[i]}\0{labels[i]}\0{extra_json[-1]}\n".encode())
    columns = {"url": names, "caption": captions, "source_key": keys, "label": labels, "facts": [""] * len(names)}
    if extras:
        columns["extra"] = extra_json
    return SourceRows(table=pa.table(columns), files=files, fingerprint=digest.hexdigest(),
                      description={**description, "rows": len(names)})


def image_suffix(data: bytes) -> str:
    """The file suffix of encoded image bytes by their magic number (``.img`` when unknown: the crawl decides)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    return ".img"


def jsonable_fields(fields: dict) -> dict:
    """The fields whose values JSON can hold (a timestamp or raw bytes is left out)."""
    out = {}
    for k, v in fields.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out


@dataclass
class EmbeddedImage:
    """An image held inside an archive (a tar shard, a parquet cell) with what goes with it."""

    data: bytes
    caption: str
    key: str
    label: str = ""
    extra: dict = field(default_factory=dict)


def extracted_rows(images: list[EmbeddedImage], folder: Path, description: dict) -> SourceRows:
    """Rows for images held in archives: each written to ``folder`` (the ingest stage's work folder) and served
    like a local file, so it goes through the same crawl (decode check, resize, guard) as every other source."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:08d}{image_suffix(image.data)}"
        path.write_bytes(image.data)
        paths.append(path)
    return local_image_rows(paths, [im.caption for im in images], [im.key for im in images], description,
                            labels=[im.label for im in images], extras=[im.extra for im in images])


def load_image_folder(folder: Path) -> SourceRows:
    """Every image under ``folder`` (recursively, sorted by relative path); the caption is ``<stem>.txt`` beside the
    image when present, else the file stem with ``_``/``-`` as spaces. The sample key is the relative path."""
    if not folder.is_dir():
        raise UserError(f"source folder '{folder}' does not exist")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"source folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    captions, keys = [], []
    for image in images:
        sidecar = image.with_suffix(".txt")
        captions.append(sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else
                        image.stem.replace("_", " ").replace("-", " "))
        keys.append(image.relative_to(folder).as_posix())
    return local_image_rows(images, captions, keys, {"kind": "folder", "path": str(folder)})


def sniff_table_kind(path: Path, url_col: str = "url", path_col: str = "path") -> str:
    """'local' when the table has the path column and no URL column, else 'url-list'. A local parquet file is
    judged by its schema alone (no read of the rows)."""
    if not is_remote(path) and Path(path).suffix.lower() == ".parquet" and Path(path).is_file():
        try:
            columns = pq.read_schema(path).names
        except Exception:  # noqa: BLE001 - an unreadable file gets read_table's one-line error below
            columns = read_table(path).column_names
    else:
        columns = read_table(path).column_names
    if path_col in columns and url_col not in columns:
        return "local"
    return "url-list"


def facts_json(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def mix_sources(parts: list[tuple[SourceRows, float]], seed: int = 0) -> SourceRows:
    """Mix sources by weight: source ``i`` gives a share ``w_i / sum(w)`` of the rows. The total is the largest
    that needs no source to repeat a row, and each source's rows are a seeded sample without replacement (kept in
    source order), so the mix is reproducible. Sample keys are prefixed with the part's index."""
    if not parts:
        raise UserError("a source mix needs at least one part")
    total_weight = sum(w for _, w in parts)
    n_total = min(int(rows.table.num_rows * total_weight / w) for rows, w in parts)
    tables, files, digest = [], {}, hashlib.sha256(f"mix:{seed}".encode())
    counts = []
    for i, (rows, weight) in enumerate(parts):
        n = min(rows.table.num_rows, round(n_total * weight / total_weight))
        chosen = sorted(random.Random(f"{seed}:{i}").sample(range(rows.table.num_rows), n))
        table = rows.table.take(pa.array(chosen, pa.int64()))
        if rows.files:  # local parts: serve each part's files under a prefixed name
            names = [f"m{i}-{u}" for u in table.column("url").to_pylist()]
            files.update({f"m{i}-{name}": path for name, path in rows.files.items()})
            table = table.set_column(table.column_names.index("url"), "url", pa.array(names, pa.string()))
        keys = [f"{i}:{k}" for k in table.column("source_key").to_pylist()]
        table = table.set_column(table.column_names.index("source_key"), "source_key", pa.array(keys, pa.string()))
        table = table.select(list(NORMALISED_COLUMNS))
        tables.append(table.cast(tables[0].schema) if tables else table)
        counts.append(n)
        digest.update(f"{rows.fingerprint}:{weight}\n".encode())
    return SourceRows(table=pa.concat_tables(tables), files=files, fingerprint=digest.hexdigest(),
                      description={"kind": "mix", "parts": [{**r.description, "weight": w, "rows_taken": n}
                                                            for (r, w), n in zip(parts, counts)]})
