"""Webdataset / img2dataset tar shards a user already has (DataComp, LAION, a crawl of their own, another vlforge
dataset's shards) as a source: nothing is fetched again.

    vlforge run ingest --source 'wds:datacomp/shards/{00000000..00000127}.tar'
    vlforge run ingest --source wds:datacomp/shards/

DIR_OR_PATTERN is a folder (every ``*.tar`` in it) or a pattern with webdataset's brace ranges and/or ``*``.
A sample is a tar's key group: an image (``jpg``/``jpeg``/``png``/``webp``), its caption (``txt``) and its
``json``; img2dataset's parquet sidecar beside a tar (same stem) adds its row for the sample's key. Every field of
the json and the sidecar but img2dataset's bookkeeping (``EXCLUDED``) is kept as a column of ``samples.parquet``
(DataComp's ``uid``, CLIP scores, licence, ...; the original ``url`` as ``original_url``), usable by the filter
stage. The split is the sample's own ``split`` field, else the tar's name prefix (``train-000000.tar``,
``val-...``, ``test-...``), else the usual split by key. The sample key is the ``uid`` where there is one, else
``<tar stem>/<key>``. The images are re-encoded by the crawl like any other source (same size and checks)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vlforge.components.data.shard import read_tar_groups
from vlforge.components.sources.tables import (
    EmbeddedImage,
    SourceRows,
    extracted_rows,
    jsonable_fields,
    read_parquet,
)

from vlforge.errors import UserError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
EXCLUDED = frozenset({"key", "caption", "status", "error_message", "width", "height", "original_width",
                      "original_height", "exif", "sha256", "md5", "url", "split"})
SPLIT_NAMES = {"train": "train", "val": "validation", "valid": "validation", "validation": "validation", "test": "test"}


def find_tars(spec: str) -> list[Path]:
    """The tar files of a folder or a pattern (brace ranges as webdataset expands them, then ``*``), sorted."""
    from braceexpand import braceexpand

    path = Path(spec).expanduser()
    if path.is_dir():
        tars = sorted(path.glob("*.tar"))
    else:
        tars = []
        for one in braceexpand(spec):
            p = Path(one).expanduser()
            tars += sorted(p.parent.glob(p.name)) if any(c in p.name for c in "*?[") else ([p] if p.is_file() else [])
        tars = sorted(set(t for t in tars if t.suffix == ".tar"))
    if not tars:
        raise UserError(f"wds source '{spec}' matches no .tar files")
    return tars


def scan_wds(spec: str) -> tuple[str, dict]:
    """(fingerprint, description) from the tars' and sidecars' names, sizes and mtimes, without reading them."""
    tars = find_tars(spec)
    digest = hashlib.sha256()
    for tar in tars:
        for f in (tar, tar.with_suffix(".parquet")):
            if f.is_file():
                stat = f.stat()
                digest.update(f"{f.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest(), {"kind": "wds", "path": spec, "tars": len(tars)}


def _fields(meta: dict) -> dict:
    out = jsonable_fields({k: v for k, v in meta.items() if k not in EXCLUDED and not k.startswith("__")})
    if meta.get("url"):
        out["original_url"] = meta["url"]
    return out


def _split_from_name(tar: Path) -> str | None:
    return SPLIT_NAMES.get(tar.stem.split("-", 1)[0].lower()) if "-" in tar.stem else None


def load_wds(spec: str, work: Path) -> SourceRows:
    """Every sample of the shards, its image written under ``work`` for the crawl."""
    images: list[EmbeddedImage] = []
    tars = find_tars(spec)
    without_image = 0
    for tar in tars:
        sidecar_path = tar.with_suffix(".parquet")
        sidecar = {str(r.get("key")): r for r in read_parquet(sidecar_path).to_pylist()} if sidecar_path.is_file() else {}
        name_split = _split_from_name(tar)
        try:
            groups = list(read_tar_groups(tar))
        except Exception as exc:  # noqa: BLE001 - any reader failure means the file is not a usable tar
            raise UserError(f"wds shard '{tar}' is not a readable tar ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        for key, members in groups:
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            if ext is None:
                without_image += 1
                continue
            try:
                meta = json.loads(members["json"]) if "json" in members else {}
            except ValueError:
                meta = {}
            meta = {**meta, **sidecar.get(key, {})} if isinstance(meta, dict) else dict(sidecar.get(key, {}))
            caption = members["txt"].decode("utf-8", errors="replace") if "txt" in members else str(meta.get("caption") or "")
            extra = _fields(meta)
            split = SPLIT_NAMES.get(str(meta.get("split", "")).lower()) or name_split
            if split:
                extra["split"] = split
            images.append(EmbeddedImage(members[ext], caption, str(meta.get("uid") or f"{tar.stem}/{key}"), extra=extra))
    if not images:
        raise UserError(f"wds source '{spec}' holds no samples with an image ({', '.join(IMAGE_EXTS)})")
    _, description = scan_wds(spec)
    return extracted_rows(images, work, {**description, "without_image": without_image})
