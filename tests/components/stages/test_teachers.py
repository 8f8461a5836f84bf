"""Teachers by catalog REF: ``--teacher`` fills the teacher field whose accepted families include the model's
family, a REF of the wrong kind or family is refused in one line, and an empty teacher field is what the train
flow fills by training the default teacher first."""
from pathlib import Path
from typing import ClassVar

import pytest
from vlforge.catalog import Catalog
from vlforge.components.models import registry
from vlforge.components.models.registry import Family, Recipe
from vlforge.components.stages import check_teacher, missing_teachers, resolve_artifact_fields, teacher_overrides

from vlforge.errors import UserError


class StudentRecipe(Recipe):
    text_teacher: str | None = None
    image_teacher: str | None = None


class Student(Family):
    name = "test-student"
    paper = "test"
    recipe_cls = StudentRecipe
    teachers: ClassVar[dict[str, tuple[str, ...]]] = {"text_teacher": ("clip", "vilt"), "image_teacher": ("vlmo",)}

    def build_model(self, recipe, vocab_size, special_ids):  # pragma: no cover - never built here
        raise AssertionError

    def training_step(self, model, batch, recipe):  # pragma: no cover
        raise AssertionError

    def load(self, model_dir):  # pragma: no cover
        raise AssertionError


@pytest.fixture
def catalog(tmp_path: Path):
    registry.register_family(Student)
    cat = Catalog(tmp_path / "catalog")
    arts = {}
    for kind, family in (("model", "clip"), ("model", "vlmo"), ("model", "vilt"), ("dataset", None)):
        d = tmp_path / f"{kind}-{family}"
        d.mkdir()
        (d / "f.txt").write_text(f"{kind} {family}")
        arts[family or kind] = cat.register(kind=kind, name=f"{kind}-{family}", files=d, config={}, family=family)
    yield cat, arts
    registry._FAMILIES.pop("test-student", None)


def test_teacher_refs_fill_the_field_their_family_fits(catalog) -> None:
    cat, arts = catalog
    got = teacher_overrides("test-student", [arts["vlmo"].id, arts["clip"].id], cat)
    assert got == {"image_teacher": f"catalog:{arts['vlmo'].id}", "text_teacher": f"catalog:{arts['clip'].id}"}
    family = registry.get_family("test-student")
    recipe = family.validate_recipe(got, "test")
    resolved, parents = resolve_artifact_fields(family, recipe, cat)
    assert sorted(parents) == sorted([arts["vlmo"].id, arts["clip"].id])  # lineage: teachers become parents
    assert resolved.text_teacher == str(cat.path(arts["clip"].id))
    assert missing_teachers("test-student", recipe) == {}
    assert missing_teachers("test-student", family.validate_recipe({}, "test")) == {"text_teacher": "clip",
                                                                                    "image_teacher": "vlmo"}


def test_wrong_teachers_are_refused_in_one_line(catalog) -> None:
    cat, arts = catalog
    with pytest.raises(UserError, match=r"--teacher '.*' is a dataset; family 'test-student' takes teachers"):
        teacher_overrides("test-student", [arts["dataset"].id], cat)
    with pytest.raises(UserError, match="is a 'vilt' model; family 'test-student' takes teachers"):
        teacher_overrides("test-student", [arts["clip"].id, arts["vilt"].id], cat)  # text_teacher already taken
    with pytest.raises(UserError, match="family 'clip' takes no teacher"):
        teacher_overrides("clip", [arts["clip"].id], cat)
    family = registry.get_family("test-student")
    with pytest.raises(UserError, match="is a 'clip' model; family 'test-student' takes a vlmo model as its image_teacher"):
        check_teacher(family, "image_teacher", arts["clip"], "x")
    recipe = family.validate_recipe({"image_teacher": f"catalog:{arts['dataset'].id}"}, "test")
    with pytest.raises(UserError, match="is a dataset, not a model"):
        resolve_artifact_fields(family, recipe, cat)
