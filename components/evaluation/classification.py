"""Zero-shot classification with prompt templates and template ensembling (CLIP, section 3.1.4).

Each class's classifier weight is the normalised mean of its normalised prompt embeddings; an image is
assigned the class of highest cosine similarity. Reports top-1 accuracy and mean per-class accuracy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

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
