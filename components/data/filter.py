"""Filter stage: a dataset artifact -> a smaller one, each rule recording how many samples it removed.

Sits between ingest and training in the DAG (``vlforge run filter --data REF [--config FILE]``). Rules run in this
order, each on what the previous ones kept, so the funnel reads top to bottom:

1. ``undecodable`` — a sample whose image does not decode (a corrupt image inside a shard) is a counted skip;
2. caption rules — empty, too few / too many words, not text (too small a share of letters);
3. image rules — original image side below ``min_side``, aspect ratio over ``max_aspect_ratio``;
   ``column_below_min`` — a source's own column of ``samples.parquet`` (a shard sidecar's CLIP score, an
   original size, ...) missing or below its ``min_columns`` value;
4. ``exact_duplicate`` — the same image bytes (sha256) as an earlier sample;
5. ``near_duplicate`` — a 64-bit difference hash (dHash: 9x8 greyscale thumbnail, one bit per horizontal
   gradient) within ``near_duplicate_distance`` bits of an earlier kept sample's;
6. ``clip_score`` — DataComp-style: the cosine similarity of image and caption under a catalog model of a dual
   encoder family (``family.encode_images`` / ``encode_texts``); keep pairs at or above ``clip_threshold``,
   or the top ``clip_top_fraction`` of the samples that reached this rule.

Samples keep their key and split; the output is new shards + ``samples.parquet`` + ``manifest.json`` (with the
funnel and per-sample CLIP scores in ``scores.parquet``) + the dataset card, registered by ``stages.run_filter``
with the unfiltered dataset and the scoring model as parents."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from vlforge.components.data.loader import IMAGE_EXTS, RawSample
from vlforge.components.data.shard import _SplitWriter, dataset_splits, read_tar_groups
from vlforge.components.sources.tables import read_parquet

from vlforge.errors import UserError


class FilterConfig(BaseModel):
    """Which rules run. Every field is part of the filter stage's cache key."""

    model_config = ConfigDict(extra="forbid")
    min_caption_words: int = Field(1, ge=0, description="0 keeps empty captions")
    max_caption_words: int | None = Field(None, ge=1)
    min_letter_fraction: float = Field(0.5, ge=0.0, le=1.0, description="share of letters among non-space characters")
    min_side: int = Field(0, ge=0, description="original image side in pixels")
    max_aspect_ratio: float | None = Field(None, ge=1.0)
    exact_duplicates: bool = True
    near_duplicates: bool = True
    near_duplicate_distance: int = Field(4, ge=0, le=64, description="max Hamming distance of 64-bit dHashes")
    min_columns: dict[str, float] = Field(default_factory=dict,
                                          description="samples.parquet column -> smallest value kept (a source's own columns)")
    clip_model: str | None = Field(None, description="model REF of a dual-encoder family; None: no CLIP-score rule")
    clip_threshold: float | None = Field(None, ge=-1.0, le=1.0)
    clip_top_fraction: float | None = Field(None, gt=0.0, le=1.0)
    samples_per_shard: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _clip_rule_is_whole(self) -> FilterConfig:
        chosen = (self.clip_threshold is not None) + (self.clip_top_fraction is not None)
        if self.clip_model and chosen != 1:
            raise ValueError("clip_model needs exactly one of clip_threshold or clip_top_fraction")
        if not self.clip_model and chosen:
            raise ValueError("clip_threshold/clip_top_fraction need clip_model")
        return self


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: robust to resizing and re-encoding, so re-crawled copies of one image collide."""
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def letter_fraction(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


def caption_rule(caption: str, cfg: FilterConfig) -> str | None:
    words = len(caption.split())
    if not caption.strip():
        return "caption_empty" if cfg.min_caption_words > 0 else None
    if words < cfg.min_caption_words:
        return "caption_too_short"
    if cfg.max_caption_words is not None and words > cfg.max_caption_words:
        return "caption_too_long"
    if letter_fraction(caption) < cfg.min_letter_fraction:
        return "caption_not_text"
    return None


def image_rule(width: int, height: int, cfg: FilterConfig) -> str | None:
    if min(width, height) < cfg.min_side:
        return "image_too_small"
    if cfg.max_aspect_ratio is not None and max(width, height) / max(1, min(width, height)) > cfg.max_aspect_ratio:
        return "image_bad_aspect"
    return None


RULES = ("undecodable", "caption_empty", "caption_too_short", "caption_too_long", "caption_not_text",
         "image_too_small", "image_bad_aspect", "column_below_min", "exact_duplicate", "near_duplicate", "clip_score")


def column_rule(row: dict, cfg: FilterConfig) -> str | None:
    """``column_below_min`` when a ``min_columns`` column is missing (None) or below its minimum."""
    for name, lowest in cfg.min_columns.items():
        value = row.get(name)
        if not isinstance(value, (int, float)) or value < lowest:
            return "column_below_min"
    return None


class ClipScorer:
    """Image-caption cosine similarity under a catalog model of a dual-encoder family."""

    def __init__(self, model_dir: Path, batch_size: int = 64) -> None:
        import torch
        from vlforge.components.models.registry import read_family_file
        from vlforge.components.tokenizer import load_tokenizer

        self.torch = torch
        self.family, self.recipe = read_family_file(model_dir)
        if "retrieval" not in self.family.capabilities:
            raise UserError(f"clip_model '{model_dir.name}' is a {self.family.name} model, not a dual encoder")
        self.model = self.family.load(model_dir).eval()
        self.tokenizer = load_tokenizer(model_dir)
        self.transform = self.family.image_transform(self.recipe)
        self.batch_size = batch_size

    def scores(self, images: list[Image.Image], captions: list[str]) -> np.ndarray:
        torch = self.torch
        out: list[np.ndarray] = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                pixels = torch.stack([self.transform(im) for im in images[i : i + self.batch_size]])
                enc = self.tokenizer(captions[i : i + self.batch_size], padding="max_length", truncation=True,
                                     max_length=self.recipe.max_text_length, return_tensors="pt")
                img = torch.nn.functional.normalize(self.family.encode_images(self.model, pixels).float(), dim=-1)
                txt = torch.nn.functional.normalize(
                    self.family.encode_texts(self.model, enc["input_ids"], enc["attention_mask"]).float(), dim=-1)
                out.append((img * txt).sum(-1).numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _samples(dataset_dir: Path) -> list[tuple[str, RawSample | None]]:
    """(split, sample) for every sample group of every shard, in manifest order; None for a group without an image.
    A shard that is not a readable tar makes the whole input unusable (UserError)."""
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    out: list[tuple[str, RawSample | None]] = []
    for split in dataset_splits(manifest["splits"]):
        for name in manifest["splits"].get(split, {}).get("shards", []):
            try:
                groups = list(read_tar_groups(dataset_dir / name))
            except (tarfile.TarError, OSError) as exc:
                raise UserError(f"dataset shard '{name}' is not a readable tar ({exc})") from None
            for key, members in groups:
                image = next((members[e] for e in IMAGE_EXTS if e in members), None)
                if image is None:
                    out.append((split, None))
                    continue
                try:
                    meta = json.loads(members.get("json", b"{}"))
                except ValueError:
                    meta = {}
                out.append((split, RawSample(key, image, members.get("txt", b"").decode("utf-8", errors="replace"), meta)))
    return out


def filter_dataset(dataset_dir: Path, out_dir: Path, cfg: FilterConfig, model_dir: Path | None = None) -> dict:
    """Apply the rules to the dataset in ``dataset_dir`` and write the filtered dataset into ``out_dir``."""
    source_manifest = json.loads((dataset_dir / "manifest.json").read_text())
    index_table = read_parquet(dataset_dir / "samples.parquet")
    for name in cfg.min_columns:
        if name not in index_table.column_names or not (pa.types.is_integer(index_table.schema.field(name).type)
                                                        or pa.types.is_floating(index_table.schema.field(name).type)):
            raise UserError(f"filter min_columns: the dataset has no numeric column '{name}' "
                            f"(samples.parquet columns: {', '.join(index_table.column_names)})")
    index = {r["key"]: r for r in index_table.to_pylist()}
    items = _samples(dataset_dir)
    removed: Counter[str] = Counter()
    kept: list[tuple[str, RawSample, Image.Image]] = []
    exact: set[str] = set()
    near: list[int] = []
    for split, sample in items:
        if sample is None:
            removed["undecodable"] += 1
            continue
        try:
            with Image.open(io.BytesIO(sample.image)) as im:
                image = im.convert("RGB")
        except Exception:  # noqa: BLE001 - any decoder failure: a corrupt image is a counted skip
            removed["undecodable"] += 1
            continue
        row = index.get(sample.key, {})
        width = int(row.get("original_width") or image.width)
        height = int(row.get("original_height") or image.height)
        rule = caption_rule(sample.caption, cfg) or image_rule(width, height, cfg) or column_rule(row, cfg)
        if rule is None and cfg.exact_duplicates:
            digest = hashlib.sha256(sample.image).hexdigest()
            rule = "exact_duplicate" if digest in exact else None
            exact.add(digest)
        if rule is None and cfg.near_duplicates:
            h = dhash(image)
            if any((h ^ other).bit_count() <= cfg.near_duplicate_distance for other in near):
                rule = "near_duplicate"
            else:
                near.append(h)
        if rule is not None:
            removed[rule] += 1
            continue
        kept.append((split, sample, image))

    scores: dict[str, float] = {}
    if cfg.clip_model and kept:
        if model_dir is None:
            raise UserError("clip_model is set but no model directory was given")
        values = ClipScorer(model_dir).scores([k[2] for k in kept], [k[1].caption for k in kept])
        scores = {k[1].key: float(v) for k, v in zip(kept, values)}
        before = len(kept)
        if cfg.clip_threshold is not None:
            kept = [k for k in kept if scores[k[1].key] >= cfg.clip_threshold]
        else:  # the top fraction by score; ties broken by dataset order, so the count is exact
            n_keep = max(1, round(before * cfg.clip_top_fraction))  # type: ignore[operator]
            best = set(np.argsort(-values, kind="stable")[:n_keep].tolist())
            kept = [k for i, k in enumerate(kept) if i in best]
        removed["clip_score"] += before - len(kept)

    out_dir.mkdir(parents=True, exist_ok=True)
    splits = dataset_splits(source_manifest["splits"])
    writers = {s: _SplitWriter(out_dir, s, cfg.samples_per_shard) for s in splits}
    columns = ("key", "split", "shard", "caption", "label", "facts", "url", "width", "height", "original_width", "original_height")
    # a source's own columns (several captions, a benchmark's fields, a shard sidecar's uid or scores) are kept
    extra_columns = [c for c in next(iter(index.values()), {}) if c not in columns]
    new_index: dict[str, list[Any]] = {c: [] for c in columns}
    for split, sample, image in kept:
        raw = _raw_members(sample)
        shard = writers[split].write(sample.key, raw)
        row = index.get(sample.key, {})
        values = {"key": sample.key, "split": split, "shard": shard, "caption": sample.caption,
                  "label": row.get("label") or sample.meta.get("label") or "", "facts": row.get("facts") or "",
                  "url": row.get("url") or sample.meta.get("url") or "", "width": image.width, "height": image.height,
                  "original_width": int(row.get("original_width") or image.width),
                  "original_height": int(row.get("original_height") or image.height)}
        for c in columns:
            new_index[c].append(values[c])
    shards = [s for split in splits for s in writers[split].close()]
    table = pa.table(new_index)
    for c in extra_columns:
        table = table.append_column(c, pa.array([index.get(k, {}).get(c) for k in new_index["key"]]))
    pq.write_table(table, out_dir / "samples.parquet")
    pq.write_table(pa.Table.from_pylist(shards) if shards else pa.table({"shard": pa.array([], pa.string())}),
                   out_dir / "shards.parquet")
    if scores:
        pq.write_table(pa.table({"key": list(scores), "clip_score": list(scores.values())}), out_dir / "scores.parquet")
    remaining = len(items)
    funnel = [{"rule": "input", "removed": 0, "remaining": remaining}]
    for rule in RULES:
        if removed.get(rule):
            remaining -= removed[rule]
            funnel.append({"rule": rule, "removed": removed[rule], "remaining": remaining})
    counts = Counter(new_index["split"])
    manifest = {
        "format": "webdataset",
        "source": {"kind": "filter", "parent_samples": len(items), **{k: v for k, v in source_manifest.items() if k == "source"}},
        "samples": len(new_index["key"]),
        "splits": {s: {"samples": counts.get(s, 0), "shards": [x["shard"] for x in shards if x["split"] == s]} for s in splits},
        "shards": shards,
        "attempted": len(items),
        "failures_by_reason": {r: removed[r] for r in RULES if removed.get(r)},
        "removed_by_rule": {r: removed.get(r, 0) for r in RULES},
        "funnel": funnel,
        "labels": sorted({x for x in new_index["label"] if x}),
        "has_facts": any(new_index["facts"]),
        "filter": cfg.model_dump(),
    }
    if "captions" in extra_columns:
        manifest["captions"] = sum(len(c or [""]) for c in table.column("captions").to_pylist())
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def _raw_members(sample: RawSample) -> dict[str, bytes]:
    """The sample's tar members (image bytes untouched: filtering never re-encodes)."""
    ext = _image_ext(sample.image)
    return {ext: sample.image, "txt": sample.caption.encode(), "json": json.dumps(sample.meta, sort_keys=True).encode()}


def _image_ext(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"
