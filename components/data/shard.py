"""Shard stage: turn img2dataset's crawl output into split webdataset shards plus a manifest.

Each good sample gets a stable key (a hash of its source key), a split chosen deterministically from that key
(so a sample keeps its split whatever else is crawled) unless its source names one (a benchmark's own splits:
``train``, ``validation``, ``test``, ...), and lands in ``{split}-{n:06d}.tar`` in source order. A source row's
``extra`` (a JSON object, see ``components/sources/tables.py``) travels with the sample: ``split`` picks the
split, ``captions`` (several captions of one image; the first is the sample's ``caption``) and every other key
become columns of ``samples.parquet`` and fields of the sample's json.
Tars are written with fixed metadata (mtime 0, uid 0, sorted members) so the same input gives byte-identical
shards and the dataset artifact's id is reproducible. The manifest (pyarrow) records every shard's sha256 and
sample count, per-split totals and failures by reason; ``samples.parquet`` indexes every sample. A sample whose
image does not decode is a counted skip (``undecodable``), never an error."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from vlforge.components.data.crawl import CrawlResult, finished_crawl_shards, local_url

SPLITS = ("train", "validation")  # every dataset has these two; a benchmark source may add more (``test``)
# the columns of ``samples.parquet`` every sample has; a source's extra fields follow them
INDEX_COLUMNS = ("key", "split", "shard", "caption", "label", "facts", "url", "width", "height", "original_width",
                 "original_height")


class ShardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples_per_shard: int = Field(256, ge=1)
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_salt: str = "vlforge-split-v1"


def sample_key(source_key: str) -> str:
    return hashlib.sha256(source_key.encode()).hexdigest()[:16]


def split_of(key: str, config: ShardConfig) -> str:
    """Deterministic split by key: the same sample is in the same split in every crawl of every size."""
    h = int(hashlib.sha256(f"{config.split_salt}:{key}".encode()).hexdigest()[:12], 16) / float(1 << 48)
    return "validation" if h < config.validation_fraction else "train"


def read_tar_groups(path: Path):
    """Yield (sample key, {extension: bytes}) groups in tar order, read with webdataset's tar iterator and key
    grouping (``tar_file_iterator`` + ``group_by_keys``), without decoding anything."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with open(path, "rb") as stream:
        files = ({**f, "__url__": str(path)} for f in tar_file_iterator(stream))
        for sample in group_by_keys(files):
            yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class _SplitWriter:
    def __init__(self, out_dir: Path, split: str, per_shard: int) -> None:
        self.out_dir, self.split, self.per_shard = out_dir, split, per_shard
        self.shards: list[dict] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def write(self, key: str, members: dict[str, bytes]) -> str:
        if self._tar is None or self._count >= self.per_shard:
            self._close()
            name = f"{self.split}-{len(self.shards):06d}.tar"
            self._tar = tarfile.open(self.out_dir / name, "w", format=tarfile.USTAR_FORMAT)
            self.shards.append({"shard": name, "split": self.split, "samples": 0})
            self._count = 0
        for ext in sorted(members):
            _add(self._tar, f"{key}.{ext}", members[ext])
        self._count += 1
        self.shards[-1]["samples"] += 1
        return self.shards[-1]["shard"]

    def _close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def close(self) -> list[dict]:
        self._close()
        for s in self.shards:
            data = (self.out_dir / s["shard"]).read_bytes()
            s["sha256"] = hashlib.sha256(data).hexdigest()
            s["bytes"] = len(data)
        return self.shards


class CrawlSharder:
    """Splits img2dataset's crawl shards into split shards one crawl shard at a time, so that the ingest stage can
    shard each crawl shard as soon as img2dataset finishes it, while the crawl goes on (``crawl(on_shard_done=...)``),
    and only the last one is left for after the crawl. Crawl shards must be added in name order (the crawl hands them
    over that way); ``finish`` adds any finished one not added yet, so the output is byte-identical to sharding
    every crawl shard after the crawl (``shard_crawl``). Images are decode-checked at libjpeg's 1/8 DCT scale (the
    whole entropy-coded stream is still read, so a truncated or corrupt JPEG still fails). That checks img2dataset's
    output, which it re-encodes from what it decoded: a source image cut short never gets this far, the crawl's
    guard refuses it (``guard.image_truncation``, counted as ``truncated``)."""

    def __init__(self, out_dir: Path, config: ShardConfig) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir, self.config = out_dir, config
        self.writers = {s: _SplitWriter(out_dir, s, config.samples_per_shard) for s in SPLITS}
        self.extras: list[dict] = []  # per indexed sample: its source's extra fields (split taken out)
        self.index: dict[str, list] = {k: [] for k in INDEX_COLUMNS}
        self.failures: Counter = Counter()
        self.seen: set[str] = set()
        self.added: list[str] = []

    def add(self, crawl_tar: Path, served_from: str | None, rejected: set[str]) -> None:
        """Shard one finished crawl shard, leaving out ``rejected`` keys (downloads over ``max_side``)."""
        if self.added and crawl_tar.stem <= self.added[-1]:
            raise ValueError(f"crawl shard {crawl_tar.name} added after {self.added[-1]}: crawl shards go in name order")
        self.added.append(crawl_tar.stem)
        failures = self.failures
        # img2dataset writes a shard in download-completion order; its keys (row numbers) give a stable order, so
        # a resumed crawl and an uninterrupted one give byte-identical shards.
        for crawl_key, members in sorted(read_tar_groups(crawl_tar), key=lambda g: g[0]):
            if crawl_key in rejected:
                continue
            meta = json.loads(members.get("json", b"{}"))
            image_ext = next((e for e in ("jpg", "png", "webp") if e in members), None)
            if image_ext is None:
                failures["undecodable"] += 1
                continue
            try:
                width, height = _checked_size(members[image_ext])
            except Exception:  # noqa: BLE001 - any decoder failure means the sample is unusable
                failures["undecodable"] += 1
                continue
            key = sample_key(meta.get("source_key") or meta.get("url") or "")
            if key in self.seen:
                failures["duplicate"] += 1
                continue
            self.seen.add(key)
            extra = json.loads(meta["extra"]) if meta.get("extra") else {}
            split = extra.pop("split", None) or split_of(key, self.config)
            caption = members.get("txt", b"").decode("utf-8", errors="replace")
            record = {**extra,
                "caption": caption,
                "label": meta.get("label") or "",
                "facts": json.loads(meta["facts"]) if meta.get("facts") else None,
                "url": local_url(meta.get("url") or "", served_from),
                "source_key": meta.get("source_key"),
                "width": width,
                "height": height,
            }
            row = {"key": key, "split": split, "caption": caption, "label": record["label"], "facts": meta.get("facts") or "",
                   "url": record["url"] or "", "width": width, "height": height,
                   "original_width": int(meta.get("original_width") or width),
                   "original_height": int(meta.get("original_height") or height)}
            self._write(row, {image_ext: members[image_ext], "txt": caption.encode(),
                              "json": json.dumps(record, sort_keys=True).encode()}, extra)

    def keep(self, row: dict, members: dict[str, bytes], extra: dict) -> None:
        """Add a sample of an earlier dataset unchanged: its index ``row`` (``samples.parquet``'s, whose ``split``
        it keeps), its tar ``members`` and its source's extra fields. Samples go in source order, as ``add``'s do."""
        if row["key"] in self.seen:
            self.failures["duplicate"] += 1
            return
        self.seen.add(row["key"])
        self._write(row, members, extra)

    def _write(self, row: dict, members: dict[str, bytes], extra: dict) -> None:
        split = row["split"]
        if split not in self.writers:
            self.writers[split] = _SplitWriter(self.out_dir, split, self.config.samples_per_shard)
        row = {**row, "shard": self.writers[split].write(row["key"], members)}
        for col, values in self.index.items():
            values.append(row[col])
        self.extras.append(extra)

    def finish(self, crawl: CrawlResult, source: dict) -> dict:
        """Add the finished crawl shards not added yet, close the shards and write ``samples.parquet``,
        ``shards.parquet``, ``failures.parquet`` and ``manifest.json``. Returns the manifest."""
        rejected = set(crawl.rejected_keys)
        for part in finished_crawl_shards(Path(crawl.output_dir)):
            if part.stem not in self.added:  # cut off by a kill and never resumed: its rows count as not_attempted
                self.add(part.with_suffix(".tar"), crawl.served_from, rejected)
        return self.close(crawl.attempted, crawl.failures_by_reason, Path(crawl.failures_path), source)

    def close(self, attempted: int, crawl_failures: dict[str, int], failures_path: Path, source: dict) -> dict:
        """Close the shards and write the index files and the manifest: ``attempted`` rows, the crawl's failures by
        reason (those of ``failures_path``, a crawl's ``failures.parquet``) besides this sharder's own. Returns the
        manifest."""
        out_dir, index = self.out_dir, self.index
        failures = Counter(crawl_failures)
        failures.update(self.failures)
        splits = dataset_splits(self.writers)
        shards = [s for split in splits for s in self.writers[split].close()]
        pq.write_table(_with_extra_columns(pa.table(index), self.extras), out_dir / "samples.parquet")
        pq.write_table(pa.Table.from_pylist(shards), out_dir / "shards.parquet")
        counts = Counter(index["split"])
        labels = sorted({lbl for lbl in index["label"] if lbl})
        manifest = {
            "format": "webdataset",
            "source": source,
            "samples": len(index["key"]),
            "splits": {s: {"samples": counts.get(s, 0), "shards": [x["shard"] for x in shards if x["split"] == s]} for s in splits},
            "shards": shards,
            "attempted": attempted,
            "failures_by_reason": dict(sorted(failures.items())),
            "labels": labels,
            "has_facts": any(index["facts"]),
        }
        if any("captions" in e for e in self.extras):
            manifest["captions"] = sum(len(e.get("captions") or [c]) for e, c in zip(self.extras, index["caption"]))
        if failures_path.is_file():
            (out_dir / "failures.parquet").write_bytes(failures_path.read_bytes())
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return manifest


def write_text_dataset(table: pa.Table, out_dir: Path, source: dict) -> dict:
    """A text-only dataset (a GLUE task: ``key``, ``split``, ``caption``, ``label``): ``samples.parquet`` and a
    manifest of format ``text`` with no shards (``loader.read_split`` reads its samples from the index)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_dir / "samples.parquet")
    counts = Counter(table.column("split").to_pylist())
    manifest = {
        "format": "text",
        "source": source,
        "samples": table.num_rows,
        "splits": {s: {"samples": counts.get(s, 0), "shards": []} for s in dataset_splits(counts)},
        "shards": [],
        "attempted": table.num_rows,
        "failures_by_reason": {},
        "labels": sorted({lbl for lbl in table.column("label").to_pylist() if lbl}),
        "has_facts": False,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def dataset_splits(present) -> list[str]:
    """``train`` and ``validation``, then any other split present (a benchmark's ``test``, ...) by name."""
    return [*SPLITS, *sorted(set(present) - set(SPLITS))]


def _with_extra_columns(table: pa.Table, extras: list[dict]) -> pa.Table:
    """``table`` with one column per key of the samples' extra fields (None where a sample lacks it); nested
    values (lists of dicts, dicts) and columns whose rows disagree on a type are stored as JSON text, a list of
    strings (``captions``) as a list column."""
    for name in sorted({k for e in extras for k in e}):
        if name in table.column_names:
            continue
        values = [e.get(name) for e in extras]
        as_json = [None if v is None else json.dumps(v, sort_keys=True) for v in values]
        if any(isinstance(v, dict) or (isinstance(v, list) and not all(isinstance(x, str) for x in v)) for v in values):
            column = pa.array(as_json, pa.string())
        else:
            try:
                column = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                column = pa.array(as_json, pa.string())
        table = table.append_column(name, column)
    return table


def _checked_size(data: bytes) -> tuple[int, int]:
    """The image's (width, height), after decoding it in full (a JPEG at 1/8 scale); raises if it does not decode."""
    with Image.open(io.BytesIO(data)) as im:
        size = im.size
        im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
        im.load()
        return size


def shard_crawl(crawl: CrawlResult, out_dir: Path, config: ShardConfig, source: dict) -> dict:
    """Write split shards, ``samples.parquet`` and ``manifest.json`` into ``out_dir`` (which must be empty/new) from
    every finished crawl shard. Returns the manifest. Images that do not decode are dropped and counted as
    ``undecodable``."""
    return CrawlSharder(out_dir, config).finish(crawl, source)
