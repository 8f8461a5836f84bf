"""One Prefect task per stage, each a thin call into ``components.stages`` with the stage's cache key."""
from __future__ import annotations

from typing import Any

from prefect import task
from vlforge.components import stages
from vlforge.components.data.crawl import CrawlConfig
from vlforge.components.data.filter import FilterConfig
from vlforge.components.data.shard import ShardConfig
from vlforge.components.evaluation.options import EvalOptions
from vlforge.components.sources.config import SourceConfig
from vlforge.components.tokenizer import TokenizerConfig
from vlforge.flows.common import TASK_OPTIONS, open_catalog


@task(name="ingest", **TASK_OPTIONS)
def ingest_task(cache_key: str, source: SourceConfig, crawl: CrawlConfig, shard: ShardConfig,
                ray_address: str | None = None) -> str:
    return stages.run_ingest(source, crawl, shard, open_catalog(), ray_address).artifact.id


@task(name="ingest-retry", **TASK_OPTIONS)
def ingest_retry_task(cache_key: str, source: SourceConfig, crawl: CrawlConfig, shard: ShardConfig,
                      ray_address: str | None = None) -> str:
    return stages.run_ingest_retry(source, crawl, shard, open_catalog(), ray_address).artifact.id


@task(name="filter", **TASK_OPTIONS)
def filter_task(cache_key: str, data: str, config: FilterConfig, ray_address: str | None = None) -> str:
    return stages.run_filter(data, config, open_catalog(), ray_address).artifact.id


@task(name="tokenizer", **TASK_OPTIONS)
def tokenizer_task(cache_key: str, data: str, config: TokenizerConfig, ray_address: str | None = None) -> str:
    return stages.run_tokenizer(data, config, open_catalog(), ray_address).artifact.id


@task(name="train", **TASK_OPTIONS)
def train_task(cache_key: str, family: str, recipe: str, overrides: dict[str, Any], data: str | dict[str, float],
               tokenizer: str, ray_address: str | None = None, ray_storage: str | None = None) -> str:
    return stages.run_train(family, recipe, overrides, data, tokenizer, open_catalog(), ray_address,
                            ray_storage).artifact.id


@task(name="eval", **TASK_OPTIONS)
def eval_task(cache_key: str, model: str, data: str, tasks: list[str], split: str,
              ray_address: str | None = None, options: EvalOptions | None = None) -> str:
    return stages.run_eval(model, data, tasks, split, open_catalog(), ray_address, options).artifact.id
