"""Train flow: a catalog dataset (+ tokenizer, trained on it when not given) -> a catalogued model.

    vlforge run train --family clip --data shapes --recipe tiny
"""
from __future__ import annotations

from typing import Any

from prefect import flow
from vlforge.components.models.registry import Recipe, get_family
from vlforge.components.stages import default_teacher_overrides, missing_teachers, stage_key, train_plan
from vlforge.components.tokenizer import TokenizerConfig
from vlforge.flows.common import open_catalog, run_cached
from vlforge.flows.stages import tokenizer_task, train_task


@flow(name="tokenizer")
def tokenizer_flow(data: str, config: TokenizerConfig, ray_address: str | None = None) -> dict:
    dataset = open_catalog().get(data)
    key = stage_key("tokenizer", {"dataset": dataset.id}, config.model_dump())
    tok, cached = run_cached(tokenizer_task, key, data=dataset.id, config=config, ray_address=ray_address)
    return {"tokenizer": tok, "cached": {"tokenizer": cached}}


@flow(name="train")
def train_flow(family: str, data: str, recipe: str = "tiny", overrides: dict[str, Any] | None = None,
               tokenizer: str | None = None, tokenizer_config: TokenizerConfig | None = None,
               ray_address: str | None = None) -> dict:
    catalog = open_catalog()
    dataset_id = catalog.get(data).id
    result: dict = {"dataset": dataset_id, "cached": {}}
    if tokenizer is None:
        tok = tokenizer_flow(dataset_id, tokenizer_config or TokenizerConfig(), ray_address)
        tokenizer = tok["tokenizer"]
        result["tokenizer"], result["cached"]["tokenizer"] = tokenizer, tok["cached"]["tokenizer"]
    overrides = dict(overrides or {})
    model, cached, tok_id = train_with_teachers(family, recipe, overrides, dataset_id, tokenizer, ray_address, result)
    result["tokenizer"] = tok_id
    result["model"], result["cached"]["model"] = model, cached
    return result


def train_with_teachers(family: str, recipe: str, overrides: dict[str, Any], dataset_id: str, tokenizer: str,
                        ray_address: str | None, result: dict, ray_storage: str | None = None) -> tuple[str, bool, str]:
    """Train ``family``; a teacher field left empty gets a teacher trained first in the DAG, on the same data
    and tokenizer (the teacher family's recipe of the same name when it has one, else ``tiny``, with the
    overrides of the fields every recipe shares, e.g. ``--steps``, and what the student's family asks of it for
    this data: ``Family.teacher_overrides``), which becomes a parent of the student.
    Teachers and students are cached stages like any other."""
    catalog = open_catalog()
    shared = {k: v for k, v in overrides.items() if k in Recipe.model_fields and k != "freeze"}
    student = get_family(family).recipe(recipe, overrides)
    for field, teacher_family in missing_teachers(family, student).items():
        t_recipe = recipe if recipe in get_family(teacher_family).recipe_names() else "tiny"
        t_overrides = default_teacher_overrides(family, student, field, shared, catalog.path(dataset_id))
        teacher, t_cached, _ = train_with_teachers(teacher_family, t_recipe, t_overrides, dataset_id, tokenizer,
                                                   ray_address, result, ray_storage)
        result.setdefault("teachers", {})[field] = teacher
        result["cached"][f"teacher:{field}"] = t_cached
        overrides[field] = f"catalog:{teacher}"
    key, _, tok_art, _ = train_plan(family, recipe, overrides, dataset_id, tokenizer, catalog)
    model, cached = run_cached(train_task, key, family=family, recipe=recipe, overrides=overrides, data=dataset_id,
                               tokenizer=tok_art.id, ray_address=ray_address, ray_storage=ray_storage)
    return model, cached, tok_art.id


if __name__ == "__main__":
    train_flow.serve(name="train", parameters={"family": "clip", "data": "shapes"})
