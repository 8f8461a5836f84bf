"""Train: a dataset + tokenizer -> a model of any registered family (Ray Train, ``components/training``).

A recipe field that names a catalog artifact (``catalog:REF``: CLIP's text tower, a family's teacher, the model a
stage continues with ``init_from``) becomes that artifact's local folder, and the artifact a parent of the model.
The key fingerprints the family's own package and the packages of the families whose models the recipe loads,
never another family's code.

The data is one dataset, or several mixed by weight (``--data A=3 --data B=1``: each training sample drawn from A
with probability 3/4, ``loader.DataMix``): every dataset of a mix, with its weight, is in the key and is a parent
of the model; the first is the one validation (``eval_every``) reads.

    vlforge run train --family clip --data shapes --recipe tiny
    vlforge run train --family clip --data shapes=3 --data other-shapes=1"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vlforge.catalog import Artifact, Catalog
from vlforge.components.models.registry import FAMILY_FILE, Family, get_family, read_family_file
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


PREPROCESSING_FIELDS = ("image_resize", "image_mean", "image_std")


def inherit_preprocessing(family: Family, recipe_name: str, overrides: dict[str, Any],
                          catalog: Catalog) -> dict[str, Any]:
    """The overrides, plus the ``init_from`` model's preprocessing (``PREPROCESSING_FIELDS``) where the run does not
    set it: a model fine-tuned from an imported CLIP keeps resizing and normalising images as that CLIP was trained
    to (its source's ``preprocessor_config.json``), and so does what is trained from it in turn."""
    if "init_from" not in family.recipe_cls.model_fields:
        return overrides
    start = family.recipe(recipe_name, overrides).init_from
    if not (isinstance(start, str) and start.startswith("catalog:")):
        return overrides
    art = catalog.get(start[len("catalog:"):])
    if art.kind != "model" or not (catalog.path(art.id) / FAMILY_FILE).is_file():
        return overrides  # the family's own init_from checks name what is wrong with it
    _, kept = read_family_file(catalog.path(art.id))
    inherited = {field: getattr(kept, field) for field in PREPROCESSING_FIELDS
                 if field not in overrides and field in type(kept).model_fields}
    return {**inherited, **overrides}


# the train stage's data: one dataset REF, or REF -> weight (a weighted mix; see ``training_data``)
TrainData = str | Mapping[str, float]


def parse_data_options(values: Sequence[str]) -> TrainData:
    """``--data`` options -> the train stage's data: one ``REF`` as it is, else REF -> weight (``REF=WEIGHT``; a
    REF without ``=`` weighs 1). One-line UserErrors for a missing REF, a weight that is not a number or is
    negative, and a REF given twice (the sum of the weights is ``training_data``'s to check)."""
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    mix: dict[str, float] = {}
    for value in values:
        ref, _, text = value.rpartition("=") if "=" in value else (value, "", "1")
        if not ref:
            raise UserError(f"--data '{value}': no dataset REF before '=' (use REF or REF=WEIGHT)")
        try:
            weight = float(text)
        except ValueError:
            raise UserError(f"--data '{value}': weight '{text}' is not a number (use REF=WEIGHT)") from None
        if ref in mix:
            raise UserError(f"--data '{ref}' is given twice")
        mix[ref] = weight
    return mix


def training_data(data: TrainData, catalog: Catalog) -> list[tuple[Artifact, float]]:
    """The datasets a train stage reads, each with its weight: ``[(dataset, 1.0)]`` for one REF; for a mix, every
    REF resolved, in the order given, without those of weight 0 (a one-dataset mix is that dataset alone: the same
    key and batches as its plain REF). One-line UserErrors, before any work: a REF that is unknown or not a
    dataset, a weight that is negative or not finite, weights that do not sum to a positive number, one dataset
    named twice, datasets of different formats (a text-only one with image-text ones), a mixed dataset without
    training shards."""
    if isinstance(data, str):
        return [(require_kind(catalog, data, "dataset", "--data"), 1.0)]
    for ref, weight in data.items():
        if not math.isfinite(weight):
            raise UserError(f"--data '{ref}={weight}': the weight is not a finite number")
        if weight < 0:
            raise UserError(f"--data '{ref}={weight:g}': the weight is negative (weights are >= 0)")
    total = sum(data.values())
    if not total > 0:
        raise UserError(f"--data: the weights sum to {total:g}; at least one dataset needs a positive weight")
    resolved = [(ref, require_kind(catalog, ref, "dataset", "--data"), float(w)) for ref, w in data.items()]
    seen: dict[str, str] = {}
    for ref, art, _ in resolved:
        if art.id in seen:
            raise UserError(f"--data '{seen[art.id]}' and '{ref}' are the same dataset ({art.name}:{art.version})")
        seen[art.id] = ref
    mix = [(art, w) for _, art, w in resolved if w > 0]
    if len(mix) > 1:
        manifests = {art.id: _manifest(catalog, art) for art, _ in mix}
        formats = {art.name: manifests[art.id].get("format", "webdataset") for art, _ in mix}
        if len(set(formats.values())) > 1:
            said = ", ".join(f"'{n}' is {f}" for n, f in formats.items())
            raise UserError(f"--data: cannot mix datasets of different formats ({said})")
        for art, _ in mix:
            if not manifests[art.id].get("splits", {}).get("train", {}).get("shards"):
                raise UserError(f"--data '{art.name}': the dataset has no training shards to mix")
    return mix


def _manifest(catalog: Catalog, art: Artifact) -> dict[str, Any]:
    path = catalog.path(art.id) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def train_key(family_name: str, recipe_name: str, overrides: dict[str, Any], data_ref: TrainData, tokenizer_ref: str,
              catalog: Catalog) -> tuple[str, Artifact, Artifact, BaseModel]:
    """Check the train stage's inputs before any work (kinds, the recipe, the tokenizer's fit, the data mix) and key
    it: ``(key, dataset, tokenizer, resolved recipe)``; with a mix, ``dataset`` is its first (validation's) and
    the key holds every dataset id with its weight."""
    family = get_family(family_name)
    raw = family.recipe(recipe_name, inherit_preprocessing(family, recipe_name, overrides, catalog))
    refs = artifact_refs(family, raw, catalog)
    recipe, _ = resolve_artifact_fields(family, raw, catalog)
    datasets = training_data(data_ref, catalog)
    dataset = datasets[0][0]
    tokenizer = require_kind(catalog, tokenizer_ref, "tokenizer", "--tokenizer")
    family.preflight(recipe, load_tokenizer(catalog.path(tokenizer.id)))
    from vlforge.components.training.loop import check_scale_fields
    from vlforge.components.training.tracking import check_tracking
    from vlforge.components.training.validation import check_validation

    counts = [_manifest(catalog, art).get("splits", {}).get("train", {}).get("samples") for art, _ in datasets]
    check_scale_fields(family, recipe, None if None in counts else sum(counts))
    check_tracking(recipe.tracking)
    check_validation(recipe, catalog.path(dataset.id), dataset.name)
    config: dict[str, Any] = {"family": family.name, "recipe": recipe_name, "values": recipe.model_dump(mode="json")}
    inputs = {"dataset": dataset.id, "tokenizer": tokenizer.id}
    if len(datasets) > 1:
        inputs = {"datasets": ",".join(art.id for art, _ in datasets), "tokenizer": tokenizer.id}
        config["mix"] = mix_config(datasets)
    loaded = [art.family for art in refs.values() if art.kind == "model" and art.family]
    key = stage_key("train", inputs, config, [family.name, *loaded])
    return key, dataset, tokenizer, recipe


def mix_config(datasets: Sequence[tuple[Artifact, float]]) -> list[dict[str, Any]]:
    """A mix as its key and its model's config record it: ``[{"dataset": ID, "weight": W}, ...]`` in order."""
    return [{"dataset": art.id, "weight": weight} for art, weight in datasets]


def run_train(family_name: str, recipe_name: str, overrides: dict[str, Any], data_ref: TrainData, tokenizer_ref: str,
              catalog: Catalog, ray_address: str | None = None, ray_storage: str | None = None) -> StageResult:
    """Train (or find cached) the model; ``ray_storage`` (else ``$VLFORGE_RAY_STORAGE``) puts Ray's checkpoints on
    shared storage such as ``s3://bucket/prefix`` instead of the work folder. Where checkpoints go is not part of
    the cache key: it changes nothing in the model."""
    key, dataset, tokenizer, recipe = train_key(family_name, recipe_name, overrides, data_ref, tokenizer_ref, catalog)
    datasets = training_data(data_ref, catalog)
    mixed = len(datasets) > 1
    data_name = "_".join(art.name for art, _ in datasets)  # a catalog name: [A-Za-z0-9][A-Za-z0-9_.-]*
    family = get_family(family_name)
    refs = artifact_refs(family, family.recipe(recipe_name, overrides), catalog)
    run_name = f"run-{key[:16]}"  # Ray Train's run, and the tracking run (one per cache key, kept over resumes)

    def work(folder: Path) -> Output:
        from vlforge.components.plots import plot_training_log  # matplotlib and Ray: only when there is work to do
        from vlforge.components.training.loop import TRAIN_LOG, train

        out = folder / "model"
        summary = train(family_name=family_name, recipe=recipe, dataset_dir=catalog.path(dataset.id),
                        tokenizer_dir=catalog.path(tokenizer.id), run_dir=folder / "ray" / run_name,
                        out_dir=out, ray_address=ray_address, storage=ray_storage,
                        data_mix=[(catalog.path(art.id), w) for art, w in datasets] if mixed else ())
        history = [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines() if line]
        plot_training_log(history, out / "loss.png", f"{family_name} / {recipe_name} on {data_name}")
        config = {"family": family_name, "recipe": recipe_name, "values": recipe.model_dump(mode="json"),
                  "artifacts": {field: art.id for field, art in refs.items()},
                  **({"mix": mix_config(datasets)} if mixed else {})}
        metrics = {k: ",".join(v) if isinstance(v, list) else round(float(v), 6) for k, v in summary.items()}
        return Output("model", f"{family_name}-{data_name}", out, config,
                      [*(art.id for art, _ in datasets), tokenizer.id, *(art.id for art in refs.values())], metrics,
                      family_name)

    result = run_stage("train", key, catalog, work, resume=True)
    if recipe.tracking and not result.cached:
        from vlforge.components.training.tracking import Tracker

        tracker = Tracker(recipe.tracking, run_name)  # the run the training loop logged into
        tracker.log_catalog_ids({"model": result.artifact.id, "dataset": ",".join(art.id for art, _ in datasets),
                                 "tokenizer": tokenizer.id,
                                 **{field: art.id for field, art in refs.items()}})
        tracker.close()
    return result
