"""The Karpathy split files of COCO and Flickr30k (``dataset_coco.json``, ``dataset_flickr30k.json``, from
Karpathy & Fei-Fei, "Deep Visual-Semantic Alignments for Generating Image Descriptions", CVPR 2015) as a source:
one sample per image with all of its captions, in the file's own splits.

    vlforge run ingest --source karpathy:dataset_flickr30k.json --images flickr30k-images/

The file is ``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw", "tokens"}, ...]}, ...]}``;
an image lives at ``IMAGES/filepath/filename`` (COCO names ``train2014``/``val2014`` in ``filepath``; Flickr30k
has none). Splits: ``train`` and ``restval`` train (the usual "train + restval" of the COCO 5k test protocol),
``val`` is ``validation``, ``test`` is ``test``; the file's own split stays in ``benchmark_split``."""
from __future__ import annotations

import hashlib
from pathlib import Path

from vlforge.components.sources.tables import SourceRows, local_image_rows, read_json_file

from vlforge.errors import UserError

SPLITS = {"train": "train", "restval": "train", "val": "validation", "test": "test"}
SHOWN_MISSING = 3


def _sentence(s: object) -> str:
    if isinstance(s, dict):
        return str(s.get("raw") or " ".join(s.get("tokens") or [])).strip()
    return str(s).strip()


def load_karpathy(path: Path, images: Path | None = None) -> SourceRows:
    """The rows of a Karpathy file; every image must exist under ``images`` (default: the file's folder)."""
    data = read_json_file(path, "karpathy file")
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"karpathy file '{path}' has no 'images' list")
    root = (images or path.parent).expanduser()
    files, captions, keys, extras, missing = [], [], [], [], []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("filename"):
            raise UserError(f"karpathy file '{path}' image {n} has no 'filename'")
        rel = f"{entry['filepath']}/{entry['filename']}" if entry.get("filepath") else str(entry["filename"])
        split = str(entry.get("split", ""))
        if split not in SPLITS:
            raise UserError(f"karpathy file '{path}' image '{rel}' has split '{split}' (one of {', '.join(SPLITS)})")
        image = root / rel
        if not image.is_file():
            missing.append(rel)
            continue
        sentences = [t for t in (_sentence(s) for s in entry.get("sentences") or []) if t]
        files.append(image)
        captions.append(sentences[0] if sentences else "")
        keys.append(rel)
        extras.append({"split": SPLITS[split], "benchmark_split": split, "captions": sentences})
    if missing:
        raise UserError(f"karpathy file '{path}': {len(missing)} of {len(entries)} images are missing under '{root}' "
                        f"({', '.join(missing[:SHOWN_MISSING])}{', ...' if len(missing) > SHOWN_MISSING else ''})")
    salt = hashlib.sha256(path.read_bytes()).hexdigest()
    return local_image_rows(files, captions, keys, {"kind": "karpathy", "path": str(path), "images": str(root),
                                                    "captions": sum(len(e["captions"]) for e in extras)},
                            extras=extras, salt=salt)
