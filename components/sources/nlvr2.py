"""NLVR2 (Suhr et al., "A Corpus for Reasoning About Natural Language Grounded in Photographs", ACL 2019) as a
source: one sample per image; each pair's left image carries the statements about the pair, with their truth
and the right image's key, for the ``nlvr2`` task (``components/evaluation/nlvr2.py``).

    vlforge run ingest --source nlvr2:dev.json --images dev/

The file is NLVR2's JSON lines, one statement a line: ``{"identifier": "dev-850-0-0", "sentence", "label":
"True"|"False", ...}``. The identifier is ``split-set-pair-sentence``; the pair's images are
``split-set-pair-img0.png`` (left) and ``-img1.png`` (right), found by name anywhere under ``--images`` (default:
the file's folder; NLVR2's train images sit in numbered subfolders). Splits: ``train``, ``dev`` -> validation,
``test1`` -> test. The split comes from each identifier, so one file may hold several: ``nlvr2_finetune`` trains on
the train statements, which it finds beside the evaluated ones when the files are concatenated
(``cat train.json dev.json > train_dev.json``, ``--images`` the folder above both image folders)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from vlforge.components.sources.tables import IMAGE_SUFFIXES, SourceRows, local_image_rows, read_json_file

from vlforge.errors import UserError

SPLITS = {"train": "train", "dev": "validation", "test1": "test", "test2": "test"}
SHOWN = 3


def images_by_name(root: Path) -> dict[str, Path]:
    """Image files under ``root`` by file stem (the first in sorted order wins)."""
    if not root.is_dir():
        raise UserError(f"nlvr2 image folder '{root}' does not exist")
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(p.stem, p)
    return found


def _label(value: object, path: Path, identifier: str) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise UserError(f"nlvr2 file '{path}' statement '{identifier}' has label {value!r} (True or False)")
    return text == "true"


def load_nlvr2(path: Path, images: Path | None = None) -> SourceRows:
    lines = read_json_file(path, "nlvr2 file")  # NLVR2 ships JSON lines named .json
    if isinstance(lines, dict):
        lines = [lines]
    if not isinstance(lines, list) or not lines:
        raise UserError(f"nlvr2 file '{path}' has no statements")
    root = (images or path.parent).expanduser()
    files = images_by_name(root)
    pairs: dict[str, list[dict]] = {}
    for n, line in enumerate(lines, start=1):
        identifier = str(line.get("identifier", "")) if isinstance(line, dict) else ""
        parts = identifier.split("-")
        if len(parts) != 4 or not line.get("sentence"):
            raise UserError(f"nlvr2 file '{path}' line {n} has no identifier split-set-pair-sentence and sentence")
        pair = identifier.rsplit("-", 1)[0]
        pairs.setdefault(pair, []).append({"identifier": identifier, "sentence": str(line["sentence"]),
                                           "label": _label(line.get("label"), path, identifier)})
    missing = sorted(f"{p}-img{side}" for p in pairs for side in (0, 1) if f"{p}-img{side}" not in files)
    if missing:
        raise UserError(f"nlvr2 file '{path}': {len(missing)} of {2 * len(pairs)} images are missing under '{root}' "
                        f"({', '.join(missing[:SHOWN])}{', ...' if len(missing) > SHOWN else ''})")
    images_out, keys, extras = [], [], []
    for pair, statements in pairs.items():
        split = SPLITS.get(pair.split("-", 1)[0])
        left, right = files[f"{pair}-img0"], files[f"{pair}-img1"]
        right_key = right.relative_to(root).as_posix()
        for side, image in (("left", left), ("right", right)):
            images_out.append(image)
            keys.append(image.relative_to(root).as_posix())
            extra = {"nlvr2_pair": pair, "nlvr2_side": side, **({"split": split} if split else {})}
            if side == "left":
                extra["nlvr2"] = [{**s, "right": right_key} for s in statements]
            extras.append(extra)
    salt = hashlib.sha256(path.read_bytes()).hexdigest()
    return local_image_rows(images_out, [""] * len(images_out), keys,
                            {"kind": "nlvr2", "path": str(path), "images": str(root), "statements": len(lines)},
                            extras=extras, salt=salt)

