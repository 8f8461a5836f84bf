"""Zero-shot classification with prompt templates and template ensembling (CLIP, section 3.1.4).

Each class's classifier weight is the normalised mean of its normalised prompt embeddings; an image is
assigned the class of highest cosine similarity. Reports top-1 accuracy and mean per-class accuracy."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

DEFAULT_TEMPLATES = ("a {}.", "a photo of a {}.", "a picture of a {}.", "a drawing of a {}.", "{}")


def class_weights(embed_texts, classes: list[str], templates: tuple[str, ...] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """``embed_texts(list[str]) -> (n, D)`` normalised; returns (C, D) normalised class weights."""
    prompts = [t.format(c) for c in classes for t in templates]
    emb = embed_texts(prompts).view(len(classes), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def zero_shot_metrics(image_emb: torch.Tensor, weights: torch.Tensor, labels: list[int]) -> tuple[dict[str, float], list[int]]:
    pred = (image_emb @ weights.t()).argmax(dim=1)
    y = torch.tensor(labels)
    correct = (pred == y).float()
    per_class = [float(correct[y == c].mean()) for c in range(weights.shape[0]) if (y == c).any()]
    return (
        {"zs_top1": float(correct.mean()), "zs_mean_per_class": sum(per_class) / max(1, len(per_class)),
         "zs_chance": 1.0 / weights.shape[0], "zs_classes": float(weights.shape[0])},
        pred.tolist(),
    )


def run_zero_shot(ctx: EvalContext) -> TaskOutput:
    """Zero-shot classification over the split's labelled samples; classes are the labels the split carries."""
    from vlforge.components.evaluation.plots import plot_confusion
    from vlforge.components.evaluation.tasks import TaskOutput

    labels = [s.meta.get("label") or "" for s in ctx.samples]
    classes = sorted({lbl for lbl in labels if lbl})
    keep = [i for i, lbl in enumerate(labels) if lbl]
    y = [classes.index(labels[i]) for i in keep]
    if "retrieval" in ctx.offers:
        weights = class_weights(ctx.embed_texts, classes)
        metrics, pred = zero_shot_metrics(ctx.image_embeddings()[keep], weights, y)
    else:  # a matching head: score every (image, prompt) pair and average the templates' scores per class
        prompts = [t.format(c) for c in classes for t in DEFAULT_TEMPLATES]
        pairs = [(i, p) for i in keep for p in prompts]
        scores = ctx.score_sample_texts(pairs).view(len(keep), len(classes), len(DEFAULT_TEMPLATES)).mean(dim=2)
        metrics, pred = zero_shot_metrics(scores, torch.eye(len(classes)), y)
    rows = {"key": [ctx.samples[i].key for i in keep], "label": [labels[i] for i in keep],
            "prediction": [classes[p] for p in pred]}
    return TaskOutput(metrics, rows, {"zero_shot_confusion.png": lambda path: plot_confusion(y, pred, classes, path)})
