"""The train plan: a request (family, recipe, overrides, ``then`` stages) resolved once into ordered steps —
default teachers first, then the model, then each stage continuing the one before — that the flows walk and
``reproduce`` rebuilds from a catalog entry."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from vlforge.catalog import Catalog
from vlforge.components.pipeline_config import ContinueStageConfig
from vlforge.components.stages import TrainStep, plan_training
from vlforge.components.stages.plan import remap_refs

from vlforge.errors import UserError


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ds"
    d.mkdir()
    n = 8
    pq.write_table(pa.table({"key": [str(i) for i in range(n)], "caption": ["a red circle"] * n,
                             "label": ["circle", "square"] * (n // 2), "split": ["train"] * n}), d / "samples.parquet")
    return d


def test_teachers_come_first_and_fill_the_students_fields(dataset_dir: Path) -> None:
    plan = plan_training("unified", "tiny", {"steps": 7}, dataset_dir)
    roles = [s.role for s in plan.steps]
    assert roles[-1] == "model" and sorted(roles[:-1]) == ["teacher:image_teacher", "teacher:text_teacher"]
    model = plan.steps[-1]
    assert {plan.steps[i].family for i in model.teachers.values()} == {"image-teacher", "text-mlm"}
    # the fields every recipe shares travel to the teachers; the labels make the image teacher supervised
    image_teacher = plan.steps[model.teachers["image_teacher"]]
    assert image_teacher.overrides["steps"] == 7 and image_teacher.overrides.get("objective") == "supervised"
    seen: list[tuple[str, dict]] = []
    ids = plan.walk(lambda i, step, overrides: (seen.append((step.role, overrides)), f"{i:064x}")[1])
    assert ids == [f"{i:064x}" for i in range(len(plan.steps))]
    final = seen[-1][1]
    assert final["image_teacher"] == f"catalog:{ids[model.teachers['image_teacher']]}"
    assert final["text_teacher"] == f"catalog:{ids[model.teachers['text_teacher']]}"
    assert plan.teacher_steps() == model.teachers


def test_then_stages_continue_the_previous_model(dataset_dir: Path) -> None:
    then = [ContinueStageConfig(recipe="tiny-stage2"), ContinueStageConfig(recipe="tiny", overrides={"steps": 3})]
    plan = plan_training("vlmo", "tiny-stage1", {}, dataset_dir, then)
    assert [plan.steps[i].recipe for i in plan.stages] == ["tiny-stage1", "tiny-stage2", "tiny"]
    ids = plan.walk(lambda i, step, overrides: f"{i:064x}")
    walked: list[dict] = []
    plan.walk(lambda i, step, overrides: (walked.append(overrides), ids[i])[1])
    assert "init_from" not in walked[plan.stages[0]]
    assert walked[plan.stages[1]]["init_from"] == f"catalog:{ids[plan.stages[0]]}"
    assert walked[plan.stages[2]] == {"steps": 3, "init_from": f"catalog:{ids[plan.stages[1]]}"}


def test_a_teacher_two_stages_need_is_trained_once(dataset_dir: Path) -> None:
    plan = plan_training("vl-t5", "tiny", {}, dataset_dir, [ContinueStageConfig(recipe="tiny-caption")])
    teachers = [s for s in plan.steps if s.role.startswith("teacher:")]
    assert len(teachers) <= 1 and len(plan.stages) == 2


def test_requests_that_do_not_fit_fail_before_any_work(dataset_dir: Path) -> None:
    with pytest.raises(UserError, match=r"train.then\[0\]: family 'text-lm' cannot continue a model"):
        plan_training("text-lm", "tiny", {}, dataset_dir, [ContinueStageConfig(recipe="tiny")])
    with pytest.raises(UserError, match="has no recipe 'nope'"):
        plan_training("clip", "nope", {}, dataset_dir)


def test_a_step_rebuilds_from_its_catalog_entry_with_its_artifact_fields(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "w").write_text("teacher")
    teacher = catalog.register(kind="model", name="teacher", files=tmp_path / "t", config={}, family="clip")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w").write_text("student")
    values = {"steps": 5, "teacher": str(catalog.path(teacher.id))}
    for config in ({"family": "vlkd", "recipe": "tiny", "values": values, "artifacts": {"teacher": teacher.id}},
                   {"family": "vlkd", "recipe": "tiny", "values": values}):  # an entry from before "artifacts"
        art = catalog.register(kind="model", name="student", files=tmp_path / "m", config=config,
                               parents=[teacher.id], family="vlkd")
        step = TrainStep.from_artifact(art, catalog)
        assert (step.family, step.recipe) == ("vlkd", "tiny")
        assert step.overrides == {"steps": 5, "teacher": f"catalog:{teacher.id}"}
        assert remap_refs(step.overrides, {teacher.id: "f" * 64})["teacher"] == "catalog:" + "f" * 64
    with pytest.raises(UserError, match="no train stage made"):
        TrainStep.from_artifact(teacher, catalog)
