"""Filter: a dataset -> a filtered dataset (dedup, caption and image rules, CLIP score against a catalog model).

    vlforge run filter --data shapes --config filter.yaml"""
from __future__ import annotations

from pathlib import Path

from vlforge.catalog import Artifact, Catalog
from vlforge.components.data.card import write_dataset_card
from vlforge.components.data.filter import FilterConfig, filter_dataset
from vlforge.components.models.registry import get_family
from vlforge.components.stages.base import Output, StageResult, on_cluster, require_kind, run_stage
from vlforge.components.stages.keys import stage_key
from vlforge.errors import UserError


def filter_plan(data_ref: str, cfg: FilterConfig, catalog: Catalog) -> tuple[str, Artifact, Artifact | None]:
    """Resolve the filter stage's inputs (the dataset and, for the CLIP-score rule, the scoring model) and key."""
    dataset = require_kind(catalog, data_ref, "dataset", "--data")
    model = require_kind(catalog, cfg.clip_model, "model", "clip_model") if cfg.clip_model else None
    if model is not None and "retrieval" not in get_family(model.family or "").capabilities:
        raise UserError(f"clip_model '{cfg.clip_model}' is a {model.family} model, not a dual image-text encoder")
    inputs = {"dataset": dataset.id} | ({"model": model.id} if model else {})
    families = [model.family] if model is not None and model.family else []
    return stage_key("filter", inputs, cfg.model_dump(), families), dataset, model


def run_filter(data_ref: str, cfg: FilterConfig, catalog: Catalog, ray_address: str | None = None) -> StageResult:
    key, dataset, model = filter_plan(data_ref, cfg, catalog)

    def work(folder: Path) -> Output:
        manifest = on_cluster(ray_address, filter_dataset, catalog.path(dataset.id), folder, cfg,
                              catalog.path(model.id) if model else None)
        if manifest["samples"] == 0:
            raise UserError(f"filtering dataset '{dataset.name}' removed every sample ({manifest['removed_by_rule']})")
        name = f"{dataset.name}-filtered"
        write_dataset_card(folder, name, f"{dataset.name} ({dataset.id[:12]}) filtered", manifest)
        metrics = {"samples": manifest["samples"], "input_samples": manifest["attempted"],
                   "train_samples": manifest["splits"]["train"]["samples"],
                   "validation_samples": manifest["splits"]["validation"]["samples"]}
        return Output("dataset", name, folder, cfg.model_dump(), [dataset.id] + ([model.id] if model else []), metrics)

    return run_stage("filter", key, catalog, work)
