"""Zero-shot classification metrics as CLIP_benchmark defines them, and the template/classname file readers.

Reference: LAION-AI/CLIP_benchmark, ``clip_benchmark/metrics/zeroshot_classification.py``
(``zero_shot_classifier``, ``accuracy``, ``run_classification``, ``evaluate``). What is matched there:

* class weights: each template's text embedding is L2-normalised, the class's templates are averaged, and the
  mean is divided by its norm; the weights are stacked as columns, (D, C);
* logits are ``logit_scale * normalize(image_emb) @ weights`` with ``logit_scale`` 100 (it changes no metric);
* acc1 / acc5: one ``torch.topk`` of the largest k, whose first k columns are then checked, so ties are broken
  the way torch breaks them and acc1 is the first column of that top-k (not a separate argmax);
* mean_per_class_recall: ``sklearn.metrics.balanced_accuracy_score(target, logits.argmax(1))``, that is the
  mean, over the classes present in the targets, of the fraction of each class predicted correctly (a class
  that is only predicted, never a target, is left out); argmax takes the first of equal maxima.

One deliberate difference, as this project asks: where there are fewer than 5 classes the reference reports
acc5 as nan; here k is clipped to the number of classes (so acc5 is 1.0 there). The class-name and template
file readers live with the sources that read them at ingest (``components/sources/class_prompts.py``).

Multi-label datasets (the reference's mean average precision) are not covered here."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vlforge.components.sources.class_prompts import read_classnames, read_templates

__all__ = ["classifier_weights", "mean_per_class_recall", "read_classnames", "read_templates", "topk_accuracy",
           "zeroshot_classification_metrics", "zeroshot_logits"]

DEFAULT_LOGIT_SCALE = 100.0


def classifier_weights(text_emb_per_class_per_template: torch.Tensor | Sequence) -> torch.Tensor:
    """Zero-shot classifier, (D, C), from the text embeddings of each class's prompts: a (C, M, D) tensor, or a
    sequence of C (M_c, D) tensors where classes have different prompt counts (class-specific prompts)."""
    if isinstance(text_emb_per_class_per_template, (torch.Tensor, np.ndarray)):
        per_class = list(torch.as_tensor(text_emb_per_class_per_template))
    else:
        per_class = [torch.as_tensor(e) for e in text_emb_per_class_per_template]
    if not per_class:
        raise ValueError("classifier_weights needs at least one class")
    columns = []
    for c, emb in enumerate(per_class):
        if emb.dim() != 2 or emb.shape[0] == 0:
            raise ValueError(f"class {c}: expected a non-empty (templates, D) matrix, got shape {tuple(emb.shape)}")
        emb = emb if emb.is_floating_point() else emb.float()
        mean = F.normalize(emb, dim=-1).mean(dim=0)
        columns.append(mean / mean.norm())
    if len({col.shape[0] for col in columns}) != 1:
        raise ValueError("every class's prompt embeddings must have the same dimension")
    return torch.stack(columns, dim=1)


def zeroshot_logits(
    image_emb: torch.Tensor | Sequence, weights: torch.Tensor, *, logit_scale: float = DEFAULT_LOGIT_SCALE
) -> torch.Tensor:
    """(N, C) logits: ``logit_scale * normalize(image_emb) @ weights`` for ``weights`` (D, C)."""
    images = torch.as_tensor(image_emb)
    images = images if images.is_floating_point() else images.float()
    if images.dim() != 2 or images.shape[1] != weights.shape[0]:
        raise ValueError(f"image_emb {tuple(images.shape)} does not match weights {tuple(weights.shape)} (D, C)")
    return logit_scale * F.normalize(images, dim=-1) @ weights.to(images.dtype)


def _check(logits: torch.Tensor | Sequence, targets: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.as_tensor(logits).cpu()
    y = torch.as_tensor(targets).cpu()
    if out.dim() != 2 or out.shape[0] == 0 or out.shape[1] == 0:
        raise ValueError(f"logits must be a non-empty (N, C) matrix, got shape {tuple(out.shape)}")
    if y.dim() != 1 or y.shape[0] != out.shape[0]:
        raise ValueError(f"targets must have one class index per row of logits ({out.shape[0]}), got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError("targets must hold integer class indices")
    y = y.long()
    if bool((y < 0).any()) or bool((y >= out.shape[1]).any()):
        raise ValueError(f"targets must lie in [0, {out.shape[1]})")
    return out, y


def topk_accuracy(
    logits: torch.Tensor | Sequence, targets: torch.Tensor | Sequence[int], ks: Sequence[int] = (1, 5)
) -> list[float]:
    """Top-k accuracy for each k in ``ks`` (each clipped to the number of classes), from one ``torch.topk``."""
    out, y = _check(logits, targets)
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {list(ks)}")
    clipped = [min(int(k), out.shape[1]) for k in ks]
    pred = out.topk(max(clipped), dim=1, largest=True, sorted=True).indices  # (N, maxk)
    correct = pred.eq(y[:, None])
    return [float(correct[:, :k].sum()) / y.shape[0] for k in clipped]


def mean_per_class_recall(predictions: torch.Tensor | Sequence[int], targets: torch.Tensor | Sequence[int]) -> float:
    """Balanced accuracy: mean over the classes present in ``targets`` of each class's recall."""
    pred = torch.as_tensor(predictions).cpu().numpy().reshape(-1)
    y = torch.as_tensor(targets).cpu().numpy().reshape(-1)
    if pred.shape != y.shape or y.size == 0:
        raise ValueError(f"predictions ({pred.size}) and targets ({y.size}) must be non-empty and of one length")
    recalls = [float(np.mean(pred[y == c] == c)) for c in np.unique(y)]
    return float(np.mean(recalls))


def zeroshot_classification_metrics(
    logits: torch.Tensor | Sequence, targets: torch.Tensor | Sequence[int]
) -> dict[str, float]:
    """``acc1``, ``acc5`` and ``mean_per_class_recall`` of (N, C) logits against (N,) class indices."""
    out, y = _check(logits, targets)
    acc1, acc5 = topk_accuracy(out, y, (1, 5))
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mean_per_class_recall(out.argmax(dim=1), y)}
