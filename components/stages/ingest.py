"""Ingest: a source (builtin scenes, a URL list, a local table, an image folder, a weighted mix) -> a crawled,
split, sharded and carded dataset artifact.

    vlforge run ingest --source builtin:shapes"""
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
from vlforge.components.data.shard import CrawlSharder, ShardConfig
from vlforge.components.sources.config import SourceConfig
from vlforge.components.sources import shapes
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
    kind: str  # builtin | url-list | local | folder | mix
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


def load_source_rows(cfg: SourceConfig, kind: str, spec: str) -> SourceRows:
    """The rows (url or path, caption, label, key) of a resolved source of ``kind``."""
    if kind == "mix":
        if not cfg.mix:
            raise UserError("source 'mix' needs a list of parts under source.mix")
        parts = []
        for part in cfg.mix:
            if part.spec.strip().startswith("builtin:") or part.spec.strip() == "mix":
                raise UserError(f"source.mix part '{part.spec}': only URL lists, local tables and image folders mix")
            sub = SourceConfig(**part.model_dump(exclude={"weight"}))
            parts.append((load_source_rows(sub, resolve_source(sub).kind, part.spec.strip()), part.weight))
        return mix_sources(parts, cfg.mix_seed)
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


def ingest_key(cfg: SourceConfig, crawl_cfg: CrawlConfig, shard_cfg: ShardConfig) -> tuple[str, ResolvedSource]:
    src = resolve_source(cfg)
    config = {**ingest_config(cfg, crawl_cfg, shard_cfg), "fingerprint": src.fingerprint}
    return stage_key("ingest", {}, config), src


def run_ingest(cfg: SourceConfig, crawl_cfg: CrawlConfig, shard_cfg: ShardConfig, catalog: Catalog,
               ray_address: str | None = None) -> StageResult:
    key, src = ingest_key(cfg, crawl_cfg, shard_cfg)

    def work(folder: Path) -> Output:
        rows = _builtin_rows(src.describe, folder) if src.kind == "builtin" else load_source_rows(cfg, src.kind, cfg.spec.strip())
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
        metrics = {
            "samples": manifest["samples"],
            "train_samples": manifest["splits"]["train"]["samples"],
            "validation_samples": manifest["splits"]["validation"]["samples"],
            "attempted": manifest["attempted"],
            "failed": manifest["attempted"] - manifest["samples"],
            "shards": len(manifest["shards"]),
        }
        return Output("dataset", src.name, sharder.out_dir, ingest_config(cfg, crawl_cfg, shard_cfg), metrics=metrics)

    return run_stage("ingest", key, catalog, work, resume=True)
