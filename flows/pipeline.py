"""The pipeline flow: source -> dataset -> tokenizer -> model -> eval report, every stage cached and catalogued.

    vlforge run pipeline [--config FILE]

Each stage's cache key is its inputs' artifact ids + its config + its code, so changing one stage's config
re-runs that stage and everything downstream and nothing upstream. A second run with nothing changed is all
cache hits and returns the same artifact ids."""
from __future__ import annotations

import time

from prefect import flow
from prefect.artifacts import create_table_artifact
from vlforge.components.pipeline_config import PipelineConfig
from vlforge.components.stages import eval_plan, ingest_key, stage_key, train_plan
from vlforge.flows.common import open_catalog, run_cached
from vlforge.flows.ingest import publish_dataset_card
from vlforge.flows.stages import eval_task, ingest_task, tokenizer_task, train_task


@flow(name="pipeline")
def pipeline_flow(config: PipelineConfig) -> dict:
    catalog = open_catalog()
    seconds: dict[str, float] = {}
    cached: dict[str, bool] = {}

    t = time.perf_counter()
    key, _ = ingest_key(config.source, config.crawl, config.shard)
    dataset, cached["dataset"] = run_cached(ingest_task, key, source=config.source, crawl=config.crawl, shard=config.shard,
                                            ray_address=config.train.ray_address)
    publish_dataset_card(dataset)
    seconds["dataset"] = time.perf_counter() - t

    t = time.perf_counter()
    key = stage_key("tokenizer", {"dataset": dataset}, config.tokenizer.model_dump())
    tokenizer, cached["tokenizer"] = run_cached(tokenizer_task, key, data=dataset, config=config.tokenizer,
                                                ray_address=config.train.ray_address)
    seconds["tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    tr = config.train
    key, *_ = train_plan(tr.family, tr.recipe, tr.overrides, dataset, tokenizer, catalog)
    model, cached["model"] = run_cached(train_task, key, family=tr.family, recipe=tr.recipe, overrides=tr.overrides,
                                        data=dataset, tokenizer=tokenizer, ray_address=tr.ray_address,
                                        ray_storage=tr.ray_storage)
    seconds["model"] = time.perf_counter() - t

    t = time.perf_counter()
    key, *_ = eval_plan(model, dataset, config.eval.tasks, config.eval.split, catalog)
    report, cached["eval"] = run_cached(eval_task, key, model=model, data=dataset, tasks=config.eval.tasks, split=config.eval.split,
                                          ray_address=config.train.ray_address)
    seconds["eval"] = time.perf_counter() - t

    ids = {"dataset": dataset, "tokenizer": tokenizer, "model": model, "eval": report}
    metrics = catalog.get(report).metrics
    create_table_artifact(
        key="vlforge-pipeline-summary",
        table=[{"stage": k, "artifact": v[:12], "cached": cached[k], "seconds": round(seconds[k], 2)} for k, v in ids.items()],
        description=f"i2t R@1 {metrics.get('i2t_r1', float('nan')):.3f}, t2i R@1 {metrics.get('t2i_r1', float('nan')):.3f}",
    )
    return {**ids, "cached": cached, "seconds": seconds, "metrics": metrics}


if __name__ == "__main__":
    pipeline_flow.serve(name="pipeline", parameters={"config": PipelineConfig()})
