"""Ingest again, fetching only what failed for a transient reason: the latest dataset ingested from the same source
(same source options, same shard settings and crawl settings that shape a sample; how it fetches may change: a
longer timeout, fewer threads) -> a new version of that dataset, the earlier one its parent.

    vlforge run ingest --source urls.parquet --retry-failures [--timeout 30]

The rows it failed for a reason in ``TRANSIENT_FAILURE_REASONS`` are crawled again; its samples are copied from its
shards, never downloaded again, and its other failures stay (``components/data/retry.py``). With nothing to retry
the earlier dataset is the result; with no earlier ingest of the source, a UserError."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from vlforge.catalog import Artifact, Catalog
from vlforge.components.data.card import write_dataset_card
from vlforge.components.data.crawl import FETCH_ONLY_FIELDS, CrawlConfig, crawl
from vlforge.components.data.retry import RetrySelection, merge_retry, select_retry
from vlforge.components.data.shard import CrawlSharder, ShardConfig
from vlforge.components.sources.config import SourceConfig
from vlforge.components.sources.layouts import ARCHIVE_LAYOUTS, TEXT_LAYOUTS
from vlforge.components.sources.tables import SourceRows
from vlforge.components.stages.base import Output, StageResult, fresh_dir, run_stage
from vlforge.components.stages.ingest import (
    ResolvedSource,
    dataset_metrics,
    ingest_config,
    load_source_rows,
    resolve_source,
)
from vlforge.components.stages.keys import stage_key
from vlforge.errors import UserError


@dataclass
class RetryPlan:
    key: str  # the retry's cache key (the earlier dataset is its input)
    parent: Artifact  # the latest dataset ingested from the source
    source: ResolvedSource
    rows: SourceRows
    selection: RetrySelection

    @property
    def retry(self) -> int:
        """How many URLs are fetched again (0: nothing to do, the earlier dataset stands)."""
        return len(self.selection.indices)


def _sample_shaping(crawl: dict) -> dict:
    return {k: v for k, v in crawl.items() if k not in FETCH_ONLY_FIELDS}


def _same_ingest(art: Artifact, cfg: SourceConfig, crawl_cfg: CrawlConfig, shard_cfg: ShardConfig) -> bool:
    """Whether ``art`` was ingested (or retried) from ``cfg`` with the same shard settings and the same crawl settings
    that shape a sample. Stored configs are read through the models, so fields added since compare by default."""
    stored = art.config
    if stored.get("stage", "ingest") not in ("ingest", "ingest_retry") or not isinstance(stored.get("source"), dict):
        return False
    try:
        return (SourceConfig(**stored["source"]) == cfg and ShardConfig(**stored.get("shard", {})) == shard_cfg
                and _sample_shaping(CrawlConfig(**stored.get("crawl", {})).model_dump()) == _sample_shaping(crawl_cfg.model_dump()))
    except (ValidationError, TypeError):  # made by a vlforge whose options differ: not this ingest
        return False


def latest_ingest(cfg: SourceConfig, crawl_cfg: CrawlConfig, shard_cfg: ShardConfig, catalog: Catalog) -> Artifact | None:
    """The dataset most recently ingested from ``cfg`` with these settings (see :func:`_same_ingest`), or None."""
    return next((a for a in catalog.list(kind="dataset") if _same_ingest(a, cfg, crawl_cfg, shard_cfg)), None)


def ingest_retry_plan(cfg: SourceConfig, crawl_cfg: CrawlConfig, shard_cfg: ShardConfig, catalog: Catalog) -> RetryPlan:
    """The earlier dataset and the rows to fetch again (cheap: reads the source and that dataset's index files).
    Raises UserError when the source is not crawled from URLs, was never ingested with these settings, or changed."""
    src = resolve_source(cfg)
    spec = cfg.spec.strip()
    if src.kind == "builtin" or src.kind in TEXT_LAYOUTS or src.kind in ARCHIVE_LAYOUTS:
        raise UserError(f"--retry-failures: source '{spec}' is not fetched from URLs ({src.kind}), nothing in it fails transiently")
    parent = latest_ingest(cfg, crawl_cfg, shard_cfg, catalog)
    if parent is None:
        raise UserError(f"--retry-failures: no dataset was ingested from source '{spec}' with these settings yet; "
                        "ingest it without --retry-failures first")
    label = f"{parent.name}:{parent.version}"
    if parent.config.get("fingerprint") not in (None, src.fingerprint):
        raise UserError(f"source '{spec}' changed since dataset {label} was ingested from it; "
                        "ingest it without --retry-failures")
    rows = load_source_rows(cfg, src.kind, spec)
    selection = select_retry(catalog.path(parent.id), rows.table, spec, label)
    config = {**ingest_config(cfg, crawl_cfg, shard_cfg), "fingerprint": src.fingerprint}
    return RetryPlan(stage_key("ingest_retry", {"dataset": parent.id}, config), parent, src, rows, selection)


def run_ingest_retry(cfg: SourceConfig, crawl_cfg: CrawlConfig, shard_cfg: ShardConfig, catalog: Catalog,
                     ray_address: str | None = None) -> StageResult:
    """Retry the transient failures of the latest ingest of ``cfg`` into a new dataset (metrics ``retried`` and
    ``recovered`` besides an ingest's); with nothing to retry, that ingest's dataset (``cached``)."""
    start = time.perf_counter()
    plan = ingest_retry_plan(cfg, crawl_cfg, shard_cfg, catalog)
    if plan.retry == 0:
        return StageResult(plan.parent, True, time.perf_counter() - start)
    src, parent, selection = plan.source, plan.parent, plan.selection

    def work(folder: Path) -> Output:
        subset = SourceRows(table=plan.rows.table.take(selection.indices), files=plan.rows.files,
                            fingerprint=plan.rows.fingerprint, description=plan.rows.description)
        source = {"kind": src.kind, **src.describe}
        recovered = CrawlSharder(fresh_dir(folder / "recovered"), shard_cfg)
        result = crawl(subset, folder / "crawl", crawl_cfg, ray_address=ray_address, on_shard_done=recovered.add)
        recovered.finish(result, source)
        out = fresh_dir(folder / "dataset")
        manifest = merge_retry(catalog.path(parent.id), selection, recovered.out_dir, recovered.failures, result,
                               plan.rows.table.num_rows, out, shard_cfg, source)
        write_dataset_card(out, parent.name, f"{src.describe.get('spec')} ({src.kind})", manifest)
        metrics = {**dataset_metrics(manifest), "retried": len(selection.indices),
                   "recovered": manifest["samples"] - selection.kept_samples}
        config = {**ingest_config(cfg, crawl_cfg, shard_cfg), "fingerprint": src.fingerprint}
        return Output("dataset", parent.name, out, config, parents=[parent.id], metrics=metrics)

    return run_stage("ingest_retry", plan.key, catalog, work, resume=True)
