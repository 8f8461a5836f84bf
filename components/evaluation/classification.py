"""Zero-shot classification with prompt templates and template ensembling (CLIP, section 3.1.4), as
CLIP_benchmark computes it (``metrics.zeroshot``).

Each class's classifier weight is the normalised mean of its normalised prompt embeddings; an image's logits are
its cosine similarities to the weights. The classes and templates are the dataset's own where its source gave
them (``imagefolder:`` with ``--classnames`` / ``--templates``: the manifest's ``source.classnames`` and
``source.templates``), else the labels the split carries, sorted, and ``DEFAULT_TEMPLATES``; ``vlforge run eval
--classnames`` / ``--templates`` override them at eval time (``options.py``: line i of the file renames class i).
Reports CLIP_benchmark's ``acc1``, ``acc5`` and ``mean_per_class_recall``, and under the older names ``zs_top1``
(= acc1) and ``zs_mean_per_class`` (= mean_per_class_recall), with ``zs_chance`` and ``zs_classes``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from vlforge.components.evaluation.metrics import classifier_weights, zeroshot_classification_metrics, zeroshot_logits

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

DEFAULT_TEMPLATES = ("a {}.", "a photo of a {}.", "a picture of a {}.", "a drawing of a {}.", "{}")


def class_weights(embed_texts, classes: list[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """``embed_texts(list[str]) -> (n, D)``; returns (C, D) class weights, each the renormalised mean of its
    normalised template embeddings."""
    prompts = [t.format(c) for c in classes for t in templates]
    emb = embed_texts(prompts).view(len(classes), len(templates), -1)
    return classifier_weights(emb).t()


def zero_shot_metrics(scores: torch.Tensor, weights: torch.Tensor | None, labels: list[int]) -> tuple[dict[str, float], list[int]]:
    """Metrics and predicted classes from image embeddings (N, D) and class ``weights`` (C, D), or, with
    ``weights`` None, from (N, C) scores taken as the logits (a matching head's)."""
    logits = scores if weights is None else zeroshot_logits(scores, weights.t())
    metrics = zeroshot_classification_metrics(logits, labels)
    classes = logits.shape[1]
    metrics |= {"zs_top1": metrics["acc1"], "zs_mean_per_class": metrics["mean_per_class_recall"],
                "zs_chance": 1.0 / classes, "zs_classes": float(classes)}
    return metrics, logits.argmax(dim=1).tolist()


def classes_and_templates(ctx: EvalContext, labels: list[str]) -> tuple[list[str], list[str], tuple[str, ...]]:
    """The classes in class order (the labels the samples carry), the name each class's prompts use, and the
    templates: the eval's overrides (``ctx.classnames``, ``ctx.templates``) where given, else the dataset's own,
    else the split's sorted labels (named as they are) and the defaults."""
    source = ctx.manifest.get("source") or {}
    if ctx.classnames is not None:
        classes, names = list(ctx.classnames), list(ctx.classnames.values())
    else:
        classes = names = list(source.get("classnames") or sorted({lbl for lbl in labels if lbl}))
    return classes, names, tuple(ctx.templates or source.get("templates") or DEFAULT_TEMPLATES)


def run_zero_shot(ctx: EvalContext) -> TaskOutput:
    """Zero-shot classification over the split's labelled samples."""
    from vlforge.components.evaluation.plots import plot_confusion
    from vlforge.components.evaluation.tasks import TaskOutput

    labels = [s.meta.get("label") or "" for s in ctx.samples]
    classes, names, templates = classes_and_templates(ctx, labels)
    index = {c: k for k, c in enumerate(classes)}
    keep = [i for i, lbl in enumerate(labels) if lbl in index]
    y = [index[labels[i]] for i in keep]
    if "retrieval" in ctx.offers:
        weights = class_weights(ctx.embed_texts, names, templates)
        metrics, pred = zero_shot_metrics(ctx.image_embeddings()[keep], weights, y)
    else:  # a matching head: score every (image, prompt) pair and average the templates' scores per class
        prompts = [t.format(c) for c in names for t in templates]
        pairs = [(i, p) for i in keep for p in prompts]
        scores = ctx.score_sample_texts(pairs).view(len(keep), len(classes), len(templates)).mean(dim=2)
        metrics, pred = zero_shot_metrics(scores, None, y)
    rows = {"key": [ctx.samples[i].key for i in keep], "label": [labels[i] for i in keep],
            "prediction": [classes[p] for p in pred]}
    return TaskOutput(metrics, rows, {"zero_shot_confusion.png": lambda path: plot_confusion(y, pred, names, path)})
