"""Parquet files with the image bytes inside (the layout of image datasets on the Hugging Face hub) as a source.

    vlforge run ingest --source parquet-images:train-00000-of-00001.parquet --caption-col text

The image column is a struct ``{bytes, path}`` (the ``datasets`` ``Image`` feature) or a binary column: the one
named ``image`` when there is one, else the only such column. The caption is ``--caption-col`` (default
``caption``), the label ``--label-col``, the sample key ``--key-col`` (default: ``<file name>:<row>``), the
split a ``split`` column where there is one. Every other column that is not bytes is kept as a column of
``samples.parquet``. A row without image bytes is counted (``rows_without_image``) and left out."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vlforge.components.sources.tables import (
    EmbeddedImage,
    SourceRows,
    extracted_rows,
    jsonable_fields,
    read_parquet,
)
from vlforge.components.sources.wds import SPLIT_NAMES

from vlforge.errors import UserError


def _is_image_column(field: pa.Field) -> bool:
    t = field.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields))


def image_column(path: Path, schema: pa.Schema) -> str:
    candidates = [f.name for f in schema if _is_image_column(f)]
    if "image" in candidates:
        return "image"
    if len(candidates) != 1:
        found = ", ".join(candidates) or "none"
        raise UserError(f"parquet-images file '{path}' needs one image column (a struct {{bytes, path}} or binary, or "
                        f"one named 'image'); found: {found}")
    return candidates[0]


def scan_parquet_images(path: Path, caption_col: str, label_col: str | None, key_col: str | None) -> tuple[str, dict]:
    """(fingerprint, description) from the file's bytes and schema (the columns are checked, the rows not read)."""
    if not path.is_file():
        raise UserError(f"parquet-images file '{path}' does not exist")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"parquet-images file '{path}' cannot be read as parquet: {str(exc).splitlines()[0]}") from None
    image = image_column(path, schema)
    for col in (caption_col, label_col, key_col):
        if col and col not in schema.names:
            raise UserError(f"parquet-images file '{path}' has no column '{col}' (columns: {', '.join(schema.names)})")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest, {"kind": "parquet-images", "path": str(path), "image_column": image}


def load_parquet_images(path: Path, work: Path, caption_col: str = "caption", label_col: str | None = None,
                        key_col: str | None = None) -> SourceRows:
    """Every row with image bytes, its image written under ``work`` for the crawl."""
    _, description = scan_parquet_images(path, caption_col, label_col, key_col)
    table = read_parquet(path)
    image_col = description["image_column"]
    kept_columns = [f.name for f in table.schema
                    if f.name not in (image_col, caption_col, label_col, key_col, "split") and not _is_image_column(f)]
    images, without = [], 0
    for i, row in enumerate(table.to_pylist()):
        cell = row[image_col]
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            without += 1
            continue
        extra = jsonable_fields({c: row[c] for c in kept_columns})
        split = SPLIT_NAMES.get(str(row.get("split") or "").lower())
        if split:
            extra["split"] = split
        key = str(row[key_col]) if key_col else f"{path.name}:{i}"
        label = "" if not label_col or row[label_col] is None else str(row[label_col])
        images.append(EmbeddedImage(bytes(data), "" if row[caption_col] is None else str(row[caption_col]), key, label, extra))
    if not images:
        raise UserError(f"parquet-images file '{path}' has no row with image bytes in column '{image_col}'")
    return extracted_rows(images, work, {**description, "rows_without_image": without})
