"""Running evaluation tasks on a model directory and a dataset directory; writes an eval report folder.

A report folder holds ``report.json`` (metrics per task, what was evaluated), ``per_sample.parquet`` (one row per
image with its ranks and predictions) and ``retrieval.png`` (R@K bars against chance)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from vlforge.components.data.loader import read_split
from vlforge.components.evaluation.classification import (
    class_weights,
    zero_shot_metrics,
)
from vlforge.components.evaluation.embeddings import embed_images, embed_texts
from vlforge.components.evaluation.retrieval import (
    KS,
    retrieval_metrics,
    unique_captions,
)
from vlforge.components.models.registry import read_family_file
from vlforge.components.tokenizer import load_tokenizer

from vlforge.errors import UserError

TASKS = ("retrieval", "zero_shot_classification")


def evaluate(model_dir: Path, dataset_dir: Path, split: str, tasks: list[str], out_dir: Path) -> dict[str, float]:
    for task in tasks:
        if task not in TASKS:
            raise UserError(f"unknown evaluation task '{task}' (tasks: {', '.join(TASKS)})")
    family, recipe = read_family_file(model_dir)
    for task in tasks:
        if task not in family.capabilities:
            raise UserError(f"family '{family.name}' does not support task '{task}'")
    samples = read_split(dataset_dir, split)
    if not samples:
        raise UserError(f"dataset '{dataset_dir.name}' has no samples in split '{split}'")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = family.load(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    image_emb = embed_images(family, model, recipe, samples)
    metrics: dict[str, float] = {}
    rows: dict[str, list] = {"key": [s.key for s in samples], "caption": [s.caption for s in samples]}
    if "retrieval" in tasks:
        uniq, ids = unique_captions([s.caption for s in samples])
        result = retrieval_metrics(image_emb, embed_texts(family, model, recipe, tokenizer, uniq), ids)
        metrics.update(result.metrics)
        rows["i2t_rank"] = result.image_rank
        rows["t2i_rank"] = [result.caption_rank[i] for i in ids]
    if "zero_shot_classification" in tasks:
        labels = [s.meta.get("label") or "" for s in samples]
        classes = sorted({lbl for lbl in labels if lbl})
        if len(classes) < 2:
            raise UserError(f"dataset '{dataset_dir.name}' has no class labels for zero_shot_classification")
        keep = [i for i, lbl in enumerate(labels) if lbl]
        weights = class_weights(lambda texts: embed_texts(family, model, recipe, tokenizer, texts), classes)
        zs, pred = zero_shot_metrics(image_emb[keep], weights, [classes.index(labels[i]) for i in keep])
        metrics.update(zs)
        predictions = [""] * len(samples)
        for i, p in zip(keep, pred):
            predictions[i] = classes[p]
        rows["label"] = labels
        rows["zs_prediction"] = predictions
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), out_dir / "per_sample.parquet")
    report = {"family": family.name, "split": split, "tasks": tasks, "samples": len(samples), "metrics": metrics}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    if "retrieval" in tasks:
        _plot_retrieval(metrics, out_dir / "retrieval.png")
    return metrics


def _plot_retrieval(metrics: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    labels = [f"{d} R@{k}" for d in ("i2t", "t2i") for k in KS]
    values = [metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in KS]
    ax.bar(labels, values, color=["#4477aa"] * 3 + ["#ee6677"] * 3)
    ax.axhline(metrics["i2t_chance_r1"], color="gray", linestyle="--", linewidth=1, label="chance R@1 (i2t)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
