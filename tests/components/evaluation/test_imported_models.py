"""Imported models evaluate like trained ones, with their own tokenizer: a clip model exported (hf or open_clip)
and imported back scores exactly the original's metrics, and ``init_from`` starts a clip run from an import."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eval_fixtures import one_torch_thread, shapes_dataset, tiny_clip_dir  # noqa: F401  (fixtures)
from tiny_checkpoints import tiny_hf_clip, tiny_tokenizer
from vlforge.catalog import Catalog
from vlforge.catalog.export import export
from vlforge.components.evaluation.runner import evaluate
from vlforge.components.models.registry import get_family, read_family_file, special_token_ids
from vlforge.components.stages import resolve_artifact_fields
from vlforge.components.stages.imports import run_import
from vlforge.components.tokenizer import load_tokenizer
from vlforge.errors import UserError

TASKS = ["retrieval"]


@pytest.mark.parametrize("fmt", ["hf", "open_clip"])
def test_export_then_import_scores_the_original_metrics(fmt: str, home: Path, tiny_clip_dir: Path,
                                                        shapes_dataset: Path, tmp_path: Path) -> None:
    catalog = Catalog(home / "catalog")
    original = catalog.register(kind="model", name="clip-tiny", family="clip", files=tiny_clip_dir,
                                config={"family": "clip", "recipe": "tiny"})
    out = export(catalog, original.id, tmp_path / "export", fmt)
    imported = run_import(out, "clip", catalog, name=f"clip-back-{fmt}")
    assert imported.model.artifact.config["origin"]["format"] == {"hf": "vlforge", "open_clip": "open_clip"}[fmt]
    before = evaluate(tiny_clip_dir, shapes_dataset, "validation", TASKS, tmp_path / "before", baseline=False)
    after = evaluate(catalog.path(imported.model.artifact.id), shapes_dataset, "validation", TASKS, tmp_path / "after",
                     baseline=False)
    assert before and after == before


def test_init_from_an_imported_clip(home: Path, tmp_path: Path) -> None:
    catalog = Catalog(home / "catalog")
    tok_dir = tiny_tokenizer(tmp_path / "tok")
    model = run_import(tiny_hf_clip(tmp_path / "hf", tok_dir), "clip", catalog).model.artifact
    family = get_family("clip")
    tokenizer = load_tokenizer(catalog.path(model.id))
    raw = family.recipe("tiny", {"init_from": f"catalog:{model.id}", "image_size": 32, "max_text_length": 16})
    recipe, parents = resolve_artifact_fields(family, raw, catalog)
    assert parents == [model.id]
    start = family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer))
    source = family.load(catalog.path(model.id))
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), source.state_dict().values()))

    saved = tmp_path / "continued"
    family.save(start, saved, recipe)  # the saved recipe is the imported network's shape, without init_from
    _, written = read_family_file(saved)
    assert (written.init_from, written.vision_width, written.vision_layers) == (None, 32, 2)

    with pytest.raises(UserError, match=r"takes 32 px images; this recipe's image_size is 64 \(--set image_size=32\)"):
        family.build_model(recipe.model_copy(update={"image_size": 64}), len(tokenizer), special_token_ids(tokenizer))
    with pytest.raises(UserError, match="embeds 64 tokens ending at id 4; this run's tokenizer has 500"):
        family.build_model(recipe, 500, special_token_ids(tokenizer))
