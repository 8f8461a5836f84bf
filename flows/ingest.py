"""Ingest flow: a source (builtin, URL list or local table) -> crawled, split, catalogued webdataset.

    vlforge run ingest --source builtin:shapes
"""
from __future__ import annotations

from prefect import flow
from vlforge.components.data.crawl import CrawlConfig
from vlforge.components.data.shard import ShardConfig
from vlforge.components.pipeline_config import SourceConfig
from vlforge.components.stages import ingest_key
from vlforge.flows.common import run_cached
from vlforge.flows.stages import ingest_task


@flow(name="ingest", log_prints=True)
def ingest_flow(source: SourceConfig, crawl: CrawlConfig, shard: ShardConfig) -> dict:
    key, _ = ingest_key(source, crawl, shard)
    dataset, cached = run_cached(ingest_task, key, source=source, crawl=crawl, shard=shard)
    return {"dataset": dataset, "cached": {"dataset": cached}}


if __name__ == "__main__":
    ingest_flow.serve(name="ingest", parameters={"source": SourceConfig(), "crawl": CrawlConfig(), "shard": ShardConfig()})
