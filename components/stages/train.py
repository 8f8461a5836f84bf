"""Train: a dataset + tokenizer -> a model of any registered family (Ray Train, ``components/training``).

A recipe field that names a catalog artifact (``catalog:REF``: CLIP's text tower, a family's teacher, the model a
stage continues with ``init_from``) becomes that artifact's local folder, and the artifact a parent of the model.
The key fingerprints the family's own package and the packages of the families whose models the recipe loads,
never another family's code.

    vlforge run train --family clip --data shapes --recipe tiny"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vlforge.catalog import Artifact, Catalog
from vlforge.components.models.registry import Family, get_family
from vlforge.components.stages.base import Output, StageResult, require_kind, run_stage
from vlforge.components.stages.keys import stage_key
from vlforge.components.tokenizer import load_tokenizer
from vlforge.errors import UserError


def artifact_refs(family: Family, recipe: BaseModel, catalog: Catalog) -> dict[str, Artifact]:
    """Recipe field -> the catalog artifact it names (``catalog:REF``). A teacher field only takes a model of one
    of the families the family accepts there."""
    refs: dict[str, Artifact] = {}
    for field in (*family.artifact_fields, *family.teachers):
        value = getattr(recipe, field, None)
        if isinstance(value, str) and value.startswith("catalog:"):
            ref = value[len("catalog:"):]
            art = catalog.get(ref)
            if field in family.teachers:
                check_teacher(family, field, art, ref)
            refs[field] = art
    return refs


def resolve_artifact_fields(family: Family, recipe: BaseModel, catalog: Catalog) -> tuple[BaseModel, list[str]]:
    """The recipe with each ``catalog:REF`` field replaced by the artifact's local directory, and those
    artifacts' ids (the model's extra parents: its lineage)."""
    refs = artifact_refs(family, recipe, catalog)
    updates = {field: str(catalog.path(art.id)) for field, art in refs.items()}
    return (recipe.model_copy(update=updates) if updates else recipe), [art.id for art in refs.values()]


def check_teacher(family: Family, field: str, art: Artifact, ref: str) -> None:
    accepted = family.teachers[field]
    if art.kind != "model":
        raise UserError(f"teacher '{ref}' is a {art.kind}, not a model (family '{family.name}' takes a "
                        f"{' or '.join(accepted)} model as its {field})")
    if art.family not in accepted:
        raise UserError(f"teacher '{ref}' is a '{art.family}' model; family '{family.name}' takes a "
                        f"{' or '.join(accepted)} model as its {field}")


def teacher_overrides(family_name: str, refs: list[str], catalog: Catalog) -> dict[str, str]:
    """``--teacher REF`` options -> recipe overrides: each REF fills the teacher field whose accepted families
    include the model's family (``catalog:ID``). One-line errors for a family without teachers, a REF that is
    not a model, or a model of a family no teacher field accepts."""
    family = get_family(family_name)
    if refs and not family.teachers:
        raise UserError(f"family '{family_name}' takes no teacher (--teacher {refs[0]})")
    overrides: dict[str, str] = {}
    for ref in refs:
        art = catalog.get(ref)
        fields = [f for f, fams in family.teachers.items() if art.kind == "model" and art.family in fams]
        free = [f for f in fields if f not in overrides]
        if not free:
            wanted = "; ".join(f"{f}: {' or '.join(fams)}" for f, fams in family.teachers.items())
            what = f"a '{art.family}' model" if art.kind == "model" else f"a {art.kind}"
            raise UserError(f"--teacher '{ref}' is {what}; family '{family_name}' takes teachers ({wanted})")
        overrides[free[0]] = f"catalog:{art.id}"
    return overrides


def train_key(family_name: str, recipe_name: str, overrides: dict[str, Any], data_ref: str, tokenizer_ref: str,
              catalog: Catalog) -> tuple[str, Artifact, Artifact, BaseModel]:
    """Check the train stage's inputs before any work (kinds, the recipe, the tokenizer's fit) and key it:
    ``(key, dataset, tokenizer, resolved recipe)``."""
    family = get_family(family_name)
    raw = family.recipe(recipe_name, overrides)
    refs = artifact_refs(family, raw, catalog)
    recipe, _ = resolve_artifact_fields(family, raw, catalog)
    dataset = require_kind(catalog, data_ref, "dataset", "--data")
    tokenizer = require_kind(catalog, tokenizer_ref, "tokenizer", "--tokenizer")
    family.preflight(recipe, load_tokenizer(catalog.path(tokenizer.id)))
    from vlforge.components.training.loop import check_scale_fields
    from vlforge.components.training.tracking import check_tracking
    from vlforge.components.training.validation import check_validation

    manifest = catalog.path(dataset.id) / "manifest.json"
    splits = json.loads(manifest.read_text()).get("splits", {}) if manifest.is_file() else {}
    check_scale_fields(family, recipe, splits.get("train", {}).get("samples"))
    check_tracking(recipe.tracking)
    check_validation(recipe, catalog.path(dataset.id), dataset.name)
    config = {"family": family.name, "recipe": recipe_name, "values": recipe.model_dump(mode="json")}
    loaded = [art.family for art in refs.values() if art.kind == "model" and art.family]
    key = stage_key("train", {"dataset": dataset.id, "tokenizer": tokenizer.id}, config, [family.name, *loaded])
    return key, dataset, tokenizer, recipe


def run_train(family_name: str, recipe_name: str, overrides: dict[str, Any], data_ref: str, tokenizer_ref: str,
              catalog: Catalog, ray_address: str | None = None, ray_storage: str | None = None) -> StageResult:
    """Train (or find cached) the model; ``ray_storage`` (else ``$VLFORGE_RAY_STORAGE``) puts Ray's checkpoints on
    shared storage such as ``s3://bucket/prefix`` instead of the work folder. Where checkpoints go is not part of
    the cache key: it changes nothing in the model."""
    key, dataset, tokenizer, recipe = train_key(family_name, recipe_name, overrides, data_ref, tokenizer_ref, catalog)
    family = get_family(family_name)
    refs = artifact_refs(family, family.recipe(recipe_name, overrides), catalog)
    run_name = f"run-{key[:16]}"  # Ray Train's run, and the tracking run (one per cache key, kept over resumes)

    def work(folder: Path) -> Output:
        from vlforge.components.plots import plot_training_log  # matplotlib and Ray: only when there is work to do
        from vlforge.components.training.loop import TRAIN_LOG, train

        out = folder / "model"
        summary = train(family_name=family_name, recipe=recipe, dataset_dir=catalog.path(dataset.id),
                        tokenizer_dir=catalog.path(tokenizer.id), run_dir=folder / "ray" / run_name,
                        out_dir=out, ray_address=ray_address, storage=ray_storage)
        history = [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines() if line]
        plot_training_log(history, out / "loss.png", f"{family_name} / {recipe_name} on {dataset.name}")
        config = {"family": family_name, "recipe": recipe_name, "values": recipe.model_dump(mode="json"),
                  "artifacts": {field: art.id for field, art in refs.items()}}
        metrics = {k: ",".join(v) if isinstance(v, list) else round(float(v), 6) for k, v in summary.items()}
        return Output("model", f"{family_name}-{dataset.name}", out, config,
                      [dataset.id, tokenizer.id, *(art.id for art in refs.values())], metrics, family_name)

    result = run_stage("train", key, catalog, work, resume=True)
    if recipe.tracking and not result.cached:
        from vlforge.components.training.tracking import Tracker

        tracker = Tracker(recipe.tracking, run_name)  # the run the training loop logged into
        tracker.log_catalog_ids({"model": result.artifact.id, "dataset": dataset.id, "tokenizer": tokenizer.id,
                                 **{field: art.id for field, art in refs.items()}})
        tracker.close()
    return result
