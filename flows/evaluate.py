"""Eval flow: a catalog model + dataset -> a catalogued eval report (metrics with untrained baselines, per-sample
rows, plots). The tasks are checked against the family and the data before anything runs (``eval_plan``).

    vlforge run eval --model clip-shapes --data shapes --task retrieval
    vlforge run eval --model clip-shapes --data shapes --suite default
    vlforge run eval --model clip-shapes --data shapes --task zero_shot_classification --templates t.txt --no-baseline
"""
from __future__ import annotations

from prefect import flow
from vlforge.components.evaluation.options import EvalOptions
from vlforge.components.stages import eval_plan
from vlforge.flows.common import open_catalog, run_cached
from vlforge.flows.stages import eval_task


@flow(name="eval")
def eval_flow(model: str, data: str, tasks: list[str], split: str = "validation", ray_address: str | None = None,
              options: EvalOptions | None = None) -> dict:
    key, model_art, data_art = eval_plan(model, data, tasks, split, open_catalog(), options)
    report, cached = run_cached(eval_task, key, model=model_art.id, data=data_art.id, tasks=tasks, split=split,
                                ray_address=ray_address, options=options)
    return {"eval": report, "cached": {"eval": cached}}


if __name__ == "__main__":
    eval_flow.serve(name="eval", parameters={"model": "clip-shapes", "data": "shapes", "tasks": ["retrieval"]})
