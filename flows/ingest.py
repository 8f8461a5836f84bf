"""Ingest flow: a source (builtin, URL list or local table) -> crawled, split, catalogued webdataset.

    vlforge run ingest --source builtin:shapes
    vlforge run ingest --source urls.parquet --retry-failures
"""
from __future__ import annotations

import re

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from vlforge.components.data.crawl import CrawlConfig
from vlforge.components.data.shard import ShardConfig
from vlforge.components.sources.config import SourceConfig
from vlforge.components.stages import ingest_key, ingest_retry_plan
from vlforge.flows.common import open_catalog, run_cached
from vlforge.flows.stages import ingest_retry_task, ingest_task


@flow(name="ingest", log_prints=True)
def ingest_flow(source: SourceConfig, crawl: CrawlConfig, shard: ShardConfig, ray_address: str | None = None,
                retry_failures: bool = False) -> dict:
    if retry_failures:  # fetch again only what the latest ingest of this source failed for a transient reason
        plan = ingest_retry_plan(source, crawl, shard, open_catalog())
        if plan.retry == 0:
            return {"dataset": plan.parent.id, "cached": {"dataset": True}}
        dataset, cached = run_cached(ingest_retry_task, plan.key, source=source, crawl=crawl, shard=shard,
                                     ray_address=ray_address)
    else:
        key, _ = ingest_key(source, crawl, shard)
        dataset, cached = run_cached(ingest_task, key, source=source, crawl=crawl, shard=shard, ray_address=ray_address)
    publish_dataset_card(dataset)
    return {"dataset": dataset, "cached": {"dataset": cached}}


def publish_dataset_card(dataset_id: str) -> str:
    """Publish the dataset's card (its README.md) as a Prefect markdown artifact keyed by the dataset's name, so
    the Prefect UI keeps one card per dataset with a history of versions."""
    catalog = open_catalog()
    art = catalog.get(dataset_id)
    key = "dataset-card-" + (re.sub(r"[^a-z0-9-]+", "-", art.name.lower()).strip("-") or "dataset")
    card = (catalog.path(art.id) / "README.md").read_text()
    create_markdown_artifact(key=key, markdown=card, description=f"dataset {art.name} ({art.id[:12]})")
    return key


if __name__ == "__main__":
    ingest_flow.serve(name="ingest", parameters={"source": SourceConfig(), "crawl": CrawlConfig(), "shard": ShardConfig()})
