"""The pipeline flow: source -> dataset -> tokenizer -> model -> eval report, every stage cached and catalogued.
The model stage trains the teachers the family needs first (as the train flow does), then any ``train.then``
stages, each continuing the previous model (VLMo's stages, VL-T5 / VL-BART captioning fine-tuning); the
evaluation scores the last.

    vlforge run pipeline [--config FILE]

Each stage's cache key is its inputs' artifact ids + its config + its code, so changing one stage's config
re-runs that stage and everything downstream and nothing upstream. A second run with nothing changed is all
cache hits and returns the same artifact ids."""
from __future__ import annotations

import time

from prefect import flow
from prefect.artifacts import create_table_artifact
from vlforge.components.evaluation.headline import headline_metrics, untrained_value
from vlforge.components.evaluation.options import EvalOptions
from vlforge.components.pipeline_config import PipelineConfig
from vlforge.components.stages import eval_plan, ingest_key, plan_training, tokenizer_key
from vlforge.flows.common import open_catalog, run_cached
from vlforge.flows.ingest import publish_dataset_card
from vlforge.flows.stages import eval_task, ingest_task, tokenizer_task
from vlforge.flows.train import walk_plan


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
    key, _ = tokenizer_key(dataset, config.tokenizer, catalog)
    tokenizer, cached["tokenizer"] = run_cached(tokenizer_task, key, data=dataset, config=config.tokenizer,
                                                ray_address=config.train.ray_address)
    seconds["tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    tr = config.train  # the teachers the family needs and the config does not name are trained first
    plan = plan_training(tr.family, tr.recipe, dict(tr.overrides), catalog.path(dataset), tr.then)
    trained = walk_plan(plan, dataset, tokenizer, tr.ray_address, tr.ray_storage)
    model, cached["model"], stages = trained["model"], trained["cached"]["model"], trained["stages"]
    seconds["model"] = time.perf_counter() - t

    t = time.perf_counter()
    ev = config.eval
    options = EvalOptions.from_files(ev.classnames, ev.templates, ev.baseline, ev.device, ev.text_encoder)
    key, *_ = eval_plan(model, dataset, ev.tasks, ev.split, catalog, options)
    report, cached["eval"] = run_cached(eval_task, key, model=model, data=dataset, tasks=ev.tasks, split=ev.split,
                                        ray_address=config.train.ray_address, options=options)
    seconds["eval"] = time.perf_counter() - t

    ids = {"dataset": dataset, "tokenizer": tokenizer, "model": model, "eval": report}
    evaluation = catalog.get(report)
    metrics = evaluation.metrics
    headline = headline_metrics(metrics, evaluation.config.get("tasks", []))
    rows = [{"stage": k, "artifact": v[:12], "cached": cached[k], "seconds": round(seconds[k], 2)} for k, v in ids.items()]
    rows[2:2] = [{"stage": f"model:{s['recipe']}", "artifact": s["model"][:12], "cached": s["cached"], "seconds": None}
                 for s in stages[:-1]]  # the earlier train stages, before the last (the "model" row)
    numbers = [f"{k} {v:.3f}" + ("" if (b := untrained_value(metrics, k)) is None else f" (untrained {b:.3f})")
               for k, v in headline]
    create_table_artifact(key="vlforge-pipeline-summary", table=rows, description=", ".join(numbers))
    cached.update({k: v for k, v in trained["cached"].items() if k != "model"})  # teacher:FIELD -> cache hit
    extra = {"teachers": trained["teachers"]} if trained["teachers"] else {}
    return {**ids, **extra, "stages": stages, "cached": cached, "seconds": seconds, "metrics": metrics,
            "headline": headline}


if __name__ == "__main__":
    pipeline_flow.serve(name="pipeline", parameters={"config": PipelineConfig()})
