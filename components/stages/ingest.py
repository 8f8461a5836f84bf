"""Ingest: a source (builtin scenes, a URL list, a local table, an image folder, a weighted mix, a benchmark
layout) -> a crawled, split, sharded and carded dataset artifact.

    vlforge run ingest --source builtin:shapes
    vlforge run ingest --source karpathy:dataset_flickr30k.json --images flickr30k-images/

A benchmark layout or an archive of images is ``LAYOUT:PATH`` (``components/sources/layouts.py``); its samples
keep the benchmark's own splits and, where it has them, several captions per image; a text-only layout (GLUE)
is written without a crawl."""
from __future__ import annotations

import hashlib
import importlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlforge.catalog import Catalog
from vlforge.components.data.card import write_dataset_card
from vlforge.components.data.crawl import CrawlConfig, check_nonempty, crawl
from vlforge.components.data.shard import CrawlSharder, ShardConfig, write_text_dataset
from vlforge.components.sources.config import SourceConfig
from vlforge.components.sources import shapes
from vlforge.components.sources.layouts import (
    ARCHIVE_LAYOUTS,
    LAYOUTS,
    TEXT_LAYOUTS,
    check_layout_options,
    layout_of,
)
from vlforge.components.sources.tables import (
    SourceRows,
    is_remote,
    load_image_folder,
    load_local_table,
    load_url_list,
    mix_sources,
    read_parquet,
    sniff_table_kind,
)
from vlforge.components.stages.base import Output, StageResult, fresh_dir, run_stage
from vlforge.components.stages.keys import stage_key
from vlforge.errors import UserError


@dataclass
class ResolvedSource:
    kind: str  # builtin | url-list | local | folder | mix | a LAYOUT:PATH prefix (sources/layouts.py)
    name: str
    fingerprint: str
    describe: dict[str, Any]


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "dataset"
    return name if name[0].isalnum() else f"d{name}"


def resolve_source(cfg: SourceConfig) -> ResolvedSource:
    """Validate a source and fingerprint its content without crawling it (cheap; runs before any work)."""
    spec = cfg.spec.strip()
    if not spec:
        raise UserError("source is empty")
    layout = layout_of(spec)
    check_layout_options(cfg, layout and layout[0])
    if layout is not None:
        kind, path = layout
        if not path.strip():
            raise UserError(f"source '{spec}' names no path after '{kind}:'")
        if kind in ARCHIVE_LAYOUTS:
            fingerprint, description = ARCHIVE_LAYOUTS[kind][0](cfg, path.strip())
        else:
            rows = load_source_rows(cfg, kind, spec)
            fingerprint, description = rows.fingerprint, rows.description
        name = _safe_name(cfg.name or Path(path.split(",", 1)[0].rstrip("/")).stem.split("{", 1)[0].strip("-_*") or kind)
        return ResolvedSource(kind, name, fingerprint, {"spec": spec, **description})
    if spec.startswith("builtin:"):
        params = shapes.parse_builtin_source(spec)
        code = hashlib.sha256(Path(shapes.__file__).read_bytes()).hexdigest()
        fp = hashlib.sha256(json.dumps({**params, "code": code}, sort_keys=True).encode()).hexdigest()
        return ResolvedSource("builtin", _safe_name(cfg.name or params["name"]), fp, {"spec": spec, **params})
    if spec == "mix" or cfg.mix:
        rows = load_source_rows(cfg, "mix", spec)
        return ResolvedSource("mix", _safe_name(cfg.name or "mix"), rows.fingerprint, {"spec": "mix", **rows.description})
    if is_remote(spec):  # an fsspec URL list (s3://, gs://, https://, file://, ...)
        rows = load_source_rows(cfg, "url-list", spec)
        name = _safe_name(cfg.name or Path(spec.split("?", 1)[0]).stem)
        return ResolvedSource("url-list", name, rows.fingerprint, {"spec": spec, **rows.description})
    path = Path(spec).expanduser()
    if path.is_dir():
        kind = "folder"
    else:
        kind = "local" if sniff_table_kind(path, cfg.url_col, cfg.path_col) == "local" else "url-list"
    rows = load_source_rows(cfg, kind, spec)
    name = _safe_name(cfg.name or path.stem)
    return ResolvedSource(kind, name, rows.fingerprint, {"spec": str(path.resolve()), **rows.description})


def load_source_rows(cfg: SourceConfig, kind: str, spec: str, work: Path | None = None) -> SourceRows:
    """The rows (url or path, caption, label, key) of a resolved source of ``kind``; images held in archives
    (``ARCHIVE_LAYOUTS``) are written under ``work``."""
    if kind == "mix":
        if not cfg.mix:
            raise UserError("source 'mix' needs a list of parts under source.mix")
        parts = []
        for part in cfg.mix:
            if part.spec.strip().startswith("builtin:") or part.spec.strip() == "mix" or layout_of(part.spec.strip()):
                raise UserError(f"source.mix part '{part.spec}': only URL lists, local tables and image folders mix")
            sub = SourceConfig(**part.model_dump(exclude={"weight"}))
            parts.append((load_source_rows(sub, resolve_source(sub).kind, part.spec.strip()), part.weight))
        return mix_sources(parts, cfg.mix_seed)
    if kind in ARCHIVE_LAYOUTS:
        if work is None:
            raise ValueError(f"a {kind}: source's rows need a work folder to extract its images into")
        return ARCHIVE_LAYOUTS[kind][1](cfg, spec.partition(":")[2].strip(), work)
    if kind in LAYOUTS:
        return LAYOUTS[kind](cfg, spec.partition(":")[2].strip())
    if is_remote(spec):
        return load_url_list(spec, cfg.url_col, cfg.caption_col, cfg.label_col)
    path = Path(spec).expanduser()
    if kind == "folder":
        return load_image_folder(path)
    if kind == "local":
        return load_local_table(path, cfg.path_col, cfg.caption_col, cfg.label_col, cfg.key_col)
    return load_url_list(path, cfg.url_col, cfg.caption_col, cfg.label_col)


def _builtin_rows(params: dict, work: Path) -> SourceRows:
    table_path = shapes.generate_shapes(work / "generated", n=params["n"], seed=params["seed"], image_size=params["image_size"])
    rows = load_local_table(table_path, "path", "caption", "label", "key")
    facts = read_parquet(table_path, columns=["facts"]).column("facts")
    rows.table = rows.table.set_column(rows.table.column_names.index("facts"), "facts", facts)
    rows.description = {"kind": "builtin", **params}
    return rows


def ingest_config(cfg: SourceConfig, crawl_cfg: CrawlConfig, shard_cfg: ShardConfig) -> dict[str, Any]:
    return {"source": cfg.model_dump(), "crawl": crawl_cfg.model_dump(), "shard": shard_cfg.model_dump()}


def dataset_metrics(manifest: dict) -> dict[str, Any]:
    """A crawled dataset's catalog metrics, from its manifest."""
    return {
        "samples": manifest["samples"],
        **{f"{s}_samples": v["samples"] for s, v in manifest["splits"].items()},  # train, validation[, test]
        "attempted": manifest["attempted"],
        "failed": manifest["attempted"] - manifest["samples"],
        "shards": len(manifest["shards"]),
        **({"captions": manifest["captions"]} if "captions" in manifest else {}),
    }


def ingest_key(cfg: SourceConfig, crawl_cfg: CrawlConfig, shard_cfg: ShardConfig) -> tuple[str, ResolvedSource]:
    src = resolve_source(cfg)
    config = {**ingest_config(cfg, crawl_cfg, shard_cfg), "fingerprint": src.fingerprint}
    return stage_key("ingest", {}, config), src


def run_ingest(cfg: SourceConfig, crawl_cfg: CrawlConfig, shard_cfg: ShardConfig, catalog: Catalog,
               ray_address: str | None = None) -> StageResult:
    key, src = ingest_key(cfg, crawl_cfg, shard_cfg)

    def work(folder: Path) -> Output:
        if src.kind in TEXT_LAYOUTS:
            return _text_dataset(folder)
        rows = _builtin_rows(src.describe, folder) if src.kind == "builtin" else \
            load_source_rows(cfg, src.kind, cfg.spec.strip(),
                             fresh_dir(folder / "extracted") if src.kind in ARCHIVE_LAYOUTS else None)
        # each crawl shard is sharded as soon as img2dataset finishes it, while the crawl goes on; the card's
        # plotting library is imported meanwhile too (~0.5 s)
        sharder = CrawlSharder(fresh_dir(folder / "dataset"), shard_cfg)
        warm = threading.Thread(target=importlib.import_module, args=("matplotlib.figure",), daemon=True)
        warm.start()
        result = crawl(rows, folder / "crawl", crawl_cfg, ray_address=ray_address, on_shard_done=sharder.add)
        check_nonempty(result, cfg.spec)
        manifest = sharder.finish(result, {"kind": src.kind, **src.describe})
        warm.join()
        if manifest["samples"] == 0:
            raise UserError(f"source '{cfg.spec}' yielded no decodable images")
        write_dataset_card(sharder.out_dir, src.name, f"{src.describe.get('spec')} ({src.kind})", manifest)
        # the source's fingerprint lets `--retry-failures` tell an unchanged URL list from an edited one
        return Output("dataset", src.name, sharder.out_dir, {**ingest_config(cfg, crawl_cfg, shard_cfg), "fingerprint": src.fingerprint},
                      metrics=dataset_metrics(manifest))

    def _text_dataset(folder: Path) -> Output:
        rows = load_source_rows(cfg, src.kind, cfg.spec.strip())
        out = fresh_dir(folder / "dataset")
        manifest = write_text_dataset(rows.table, out, {"kind": src.kind, **src.describe})
        write_dataset_card(out, src.name, f"{src.describe.get('spec')} ({src.kind})", manifest)
        metrics = {"samples": manifest["samples"], "attempted": manifest["attempted"], "failed": 0, "shards": 0,
                   **{f"{s}_samples": v["samples"] for s, v in manifest["splits"].items()}}
        return Output("dataset", src.name, out, ingest_config(cfg, crawl_cfg, shard_cfg), metrics=metrics)

    return run_stage("ingest", key, catalog, work, resume=True)
