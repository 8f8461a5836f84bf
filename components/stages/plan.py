"""The train plan: every model one training request makes, in the order they must be trained.

A request is a family, a recipe, overrides and ``then`` stages. Resolved once, before any work, it becomes a list
of :class:`TrainStep`: first the teachers the family needs and the request leaves empty (trained in the DAG on the
same data and tokenizer; they may need teachers of their own), then the model, then each ``then`` stage continuing
the one before it (``init_from``). A step names the models it needs by their place in the plan, since their
artifact ids exist only once they are trained; :meth:`TrainPlan.walk` fills them in as it goes. The train and
pipeline flows walk the plan through their cached Prefect tasks, ``vlforge reproduce`` rebuilds a model's step
from its catalog entry (:meth:`TrainStep.from_artifact`)."""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from vlforge.catalog import Artifact, Catalog
from vlforge.components.models.registry import Recipe, get_family
from vlforge.errors import UserError

PLACEHOLDER = "catalog:" + "0" * 64  # a model not trained yet, while planning


class ContinueStage(Protocol):
    recipe: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class TrainStep:
    role: str  # "model", "then[i]", or "teacher:FIELD"
    family: str
    recipe: str
    overrides: dict[str, Any]
    teachers: dict[str, int] = field(default_factory=dict)  # recipe field -> the step that trains that teacher
    continues: int | None = None  # the step whose model this one continues (its init_from)

    def resolve(self, ids: Sequence[str]) -> dict[str, Any]:
        """The step's overrides with the models of the steps it needs (``ids``: artifact id per earlier step)."""
        out = dict(self.overrides)
        out.update({f: f"catalog:{ids[i]}" for f, i in self.teachers.items()})
        if self.continues is not None:
            out["init_from"] = f"catalog:{ids[self.continues]}"
        return out

    @classmethod
    def from_artifact(cls, art: Artifact, catalog: Catalog) -> TrainStep:
        """The step that made a catalogued model: its recipe values, with each field that named a catalog model
        (a teacher, a tower, ``init_from``) as ``catalog:ID`` again. Entries from before the config recorded
        ``artifacts`` are matched by their parents' local folders."""
        cfg = art.config
        if art.kind != "model" or not {"family", "recipe", "values"} <= set(cfg):
            raise UserError(f"artifact '{art.short_id}' is a {art.kind} that no train stage made")
        values = dict(cfg["values"])
        refs: dict[str, str] = dict(cfg.get("artifacts") or {})
        if "artifacts" not in cfg:
            folders = {str(catalog.path(p)): p for p in art.parents if catalog.exists(p)}
            refs = {f: folders[v] for f, v in values.items() if isinstance(v, str) and v in folders}
        values.update({f: f"catalog:{i}" for f, i in refs.items()})
        return cls("model", cfg["family"], cfg["recipe"], values)


@dataclass(frozen=True)
class TrainPlan:
    steps: tuple[TrainStep, ...]
    stages: tuple[int, ...]  # the request's own stages (the model, then each ``then``); the last is the result

    def teacher_steps(self) -> dict[str, int]:
        """Recipe field -> the step that trains the default teacher for it."""
        return {s.role.split(":", 1)[1]: i for i, s in enumerate(self.steps) if s.role.startswith("teacher:")}

    def walk(self, run: Callable[[int, TrainStep, dict[str, Any]], str]) -> list[str]:
        """Run each step in order (``run(index, step, overrides)`` returns the model's artifact id); the ids."""
        ids: list[str] = []
        for i, step in enumerate(self.steps):
            ids.append(run(i, step, step.resolve(ids)))
        return ids


def missing_teachers(family_name: str, recipe: BaseModel) -> dict[str, str]:
    """Teacher fields the recipe leaves empty -> the family of the teacher the train flow trains for them."""
    family = get_family(family_name)
    return {f: fams[0] for f, fams in family.needed_teachers(recipe).items() if not getattr(recipe, f, None)}


def default_teacher_overrides(family_name: str, recipe: BaseModel, field: str, shared: dict[str, Any],
                              dataset_dir: Path | Sequence[Path]) -> dict[str, Any]:
    """The overrides of the default teacher trained for ``field``: the fields every recipe shares (``shared``,
    e.g. ``--steps``), then what the student family asks of that teacher for this dataset's training split.

    A teacher trains on the student's data: with a weighted mix (``dataset_dir`` one folder per dataset), the whole
    mix with the same weights, not its first dataset, so it sees what the student sees; the data then offers it
    only what every dataset of the mix offers (labels only if every dataset has them)."""
    from vlforge.components.evaluation.tasks import dataset_offers

    family = get_family(family_name)
    dirs = [dataset_dir] if isinstance(dataset_dir, Path) else list(dataset_dir)
    offers = frozenset.intersection(*(dataset_offers(d, "train") for d in dirs))
    return {**shared, **family.teacher_overrides(field, recipe, offers)}  # type: ignore[arg-type]


def continue_overrides(family_name: str, recipe_name: str, overrides: dict[str, Any], previous: str,
                       where: str) -> dict[str, Any]:
    """The overrides of a train stage that continues the model ``previous`` (an artifact id): its recipe's
    ``init_from`` set to it. UserError (naming ``where``) when the family's recipes cannot continue a model, the
    recipe does not exist, or the stage sets ``init_from`` itself."""
    family = get_family(family_name)
    if "init_from" not in family.recipe_cls.model_fields:
        raise UserError(f"{where}: family '{family.name}' cannot continue a model (its recipes have no init_from)")
    if "init_from" in overrides:
        raise UserError(f"{where}: overrides.init_from is the previous stage's model; do not set it")
    out = {**overrides, "init_from": f"catalog:{previous}"}
    try:
        family.recipe(recipe_name, out)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return out


def check_train_stages(family_name: str, recipe_name: str, overrides: dict[str, Any],
                       then: Sequence[ContinueStage]) -> None:
    """Before any work (no tokenizer or teacher trained yet): the family, each stage's recipe and overrides exist
    and fit, and the first stage's training-at-scale and tracking fields are valid (UserError otherwise)."""
    from vlforge.components.training.loop import check_scale_fields
    from vlforge.components.training.tracking import check_tracking

    family = get_family(family_name)
    recipe = family.recipe(recipe_name, overrides)
    check_scale_fields(family, recipe, None, resolved=False)
    check_tracking(recipe.tracking)
    for i, stage in enumerate(then):
        continue_overrides(family_name, stage.recipe, stage.overrides, PLACEHOLDER[len("catalog:"):], f"train.then[{i}]")


def plan_training(family_name: str, recipe_name: str, overrides: dict[str, Any], dataset_dir: Path | Sequence[Path],
                  then: Sequence[ContinueStage] = ()) -> TrainPlan:
    """Resolve a training request into its plan (UserError for a request that does not fit, before any work).
    A teacher is the teacher family's recipe of the same name when it has one, else ``tiny``, with the fields
    every recipe shares (e.g. ``--steps``) and what the student's family asks of it for this data.
    ``dataset_dir``: the dataset's folder, or one folder per dataset of a weighted mix; the flows train every
    step, teachers included, on the same data (the mix, with its weights: ``default_teacher_overrides``)."""
    steps: list[TrainStep] = []

    def add(step: TrainStep) -> int:
        same = json.dumps([step.family, step.recipe, step.overrides, step.teachers, step.continues], sort_keys=True, default=str)
        for i, s in enumerate(steps):  # two students asking for the same teacher share it
            if json.dumps([s.family, s.recipe, s.overrides, s.teachers, s.continues], sort_keys=True, default=str) == same:
                return i
        steps.append(step)
        return len(steps) - 1

    def plan_model(family: str, recipe: str, given: dict[str, Any], continues: int | None, role: str) -> int:
        probe = {**given, "init_from": PLACEHOLDER} if continues is not None else given
        student = get_family(family).recipe(recipe, probe)
        shared = {k: v for k, v in given.items() if k in Recipe.model_fields and k != "freeze"}
        teachers: dict[str, int] = {}
        for fld, teacher_family in missing_teachers(family, student).items():
            t_recipe = recipe if recipe in get_family(teacher_family).recipe_names() else "tiny"
            t_overrides = default_teacher_overrides(family, student, fld, shared, dataset_dir)
            teachers[fld] = plan_model(teacher_family, t_recipe, t_overrides, None, f"teacher:{fld}")
        return add(TrainStep(role, family, recipe, dict(given), teachers, continues))

    check_train_stages(family_name, recipe_name, overrides, then)
    stages = [plan_model(family_name, recipe_name, dict(overrides), None, "model")]
    for i, stage in enumerate(then):
        stages.append(plan_model(family_name, stage.recipe, dict(stage.overrides), stages[-1], f"then[{i}]"))
    return TrainPlan(tuple(steps), tuple(stages))


def remap_refs(overrides: dict[str, Any], new_ids: dict[str, str]) -> dict[str, Any]:
    """``catalog:OLD`` values -> ``catalog:NEW`` for the artifacts ``new_ids`` maps (rebuilt elsewhere)."""
    def swap(v: Any) -> Any:
        if isinstance(v, str) and (m := re.fullmatch(r"catalog:([0-9a-f]{64})", v)) and m.group(1) in new_ids:
            return f"catalog:{new_ids[m.group(1)]}"
        return v
    return {k: swap(v) for k, v in overrides.items()}
