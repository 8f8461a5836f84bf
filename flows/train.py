"""Train flow: a catalog dataset, or several mixed by weight (+ tokenizer, trained on the first when not given)
-> a catalogued model, with the teachers its family needs trained first on the same data
(``components.stages.plan``).

    vlforge run train --family clip --data shapes --recipe tiny
    vlforge run train --family clip --data shapes=3 --data other=1
"""
from __future__ import annotations

from typing import Any

from prefect import flow
from vlforge.components.stages import TrainData, TrainPlan, plan_training, tokenizer_key, train_key, training_data
from vlforge.components.tokenizer import TokenizerConfig
from vlforge.flows.common import open_catalog, run_cached
from vlforge.flows.stages import tokenizer_task, train_task


@flow(name="tokenizer")
def tokenizer_flow(data: str, config: TokenizerConfig, ray_address: str | None = None) -> dict:
    key, dataset = tokenizer_key(data, config, open_catalog())
    tok, cached = run_cached(tokenizer_task, key, data=dataset.id, config=config, ray_address=ray_address)
    return {"tokenizer": tok, "cached": {"tokenizer": cached}}


@flow(name="train")
def train_flow(family: str, data: str | dict[str, float], recipe: str = "tiny", overrides: dict[str, Any] | None = None,
               tokenizer: str | None = None, tokenizer_config: TokenizerConfig | None = None,
               ray_address: str | None = None) -> dict:
    catalog = open_catalog()
    datasets = training_data(data, catalog)
    dataset_id = datasets[0][0].id
    data_ids: TrainData = dataset_id if len(datasets) == 1 else {art.id: w for art, w in datasets}
    result: dict = {"dataset": dataset_id, "cached": {}}
    if tokenizer is None:
        tok = tokenizer_flow(dataset_id, tokenizer_config or TokenizerConfig(), ray_address)
        tokenizer = tok["tokenizer"]
        result["cached"]["tokenizer"] = tok["cached"]["tokenizer"]
    plan = plan_training(family, recipe, dict(overrides or {}), [catalog.path(art.id) for art, _ in datasets])
    walked = walk_plan(plan, data_ids, tokenizer, ray_address)
    result["tokenizer"] = walked["tokenizer"]
    result["model"], result["cached"]["model"] = walked["model"], walked["cached"]["model"]
    result["cached"].update({k: v for k, v in walked["cached"].items() if k != "model"})
    if walked["teachers"]:
        result["teachers"] = walked["teachers"]
    return result


def walk_plan(plan: TrainPlan, dataset_id: TrainData, tokenizer: str, ray_address: str | None,
              ray_storage: str | None = None) -> dict[str, Any]:
    """Train every step of ``plan`` as a cached train task, in order. Returns the last stage's ``model``, every
    stage's ``{recipe, model, cached}`` (``stages``), the default ``teachers`` (field -> model), ``cached`` (``model``
    and ``teacher:FIELD`` -> cache hit) and the ``tokenizer`` id."""
    catalog = open_catalog()
    hits: list[bool] = []
    tok_id = catalog.get(tokenizer).id

    def run(_: int, step: Any, overrides: dict[str, Any]) -> str:
        key, _, _, _ = train_key(step.family, step.recipe, overrides, dataset_id, tok_id, catalog)
        model, cached = run_cached(train_task, key, family=step.family, recipe=step.recipe, overrides=overrides,
                                   data=dataset_id, tokenizer=tok_id, ray_address=ray_address, ray_storage=ray_storage)
        hits.append(cached)
        return model

    ids = plan.walk(run)
    teachers = {f: ids[i] for f, i in plan.teacher_steps().items()}
    cached = {"model": hits[plan.stages[-1]], **{f"teacher:{f}": hits[i] for f, i in plan.teacher_steps().items()}}
    stages = [{"recipe": plan.steps[i].recipe, "model": ids[i], "cached": hits[i]} for i in plan.stages]
    return {"model": ids[plan.stages[-1]], "stages": stages, "teachers": teachers, "cached": cached,
            "tokenizer": tok_id}


if __name__ == "__main__":
    train_flow.serve(name="train", parameters={"family": "clip", "data": "shapes"})
