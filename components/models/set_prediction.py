"""DETR's set prediction (Carion et al. 2020), for families that detect objects (UniT's detection task).

The pieces are ``transformers``' own DETR loss (``transformers.loss.loss_for_object_detection``, taken from
facebookresearch/detr ``models/matcher.py``, ``models/detr.py`` ``SetCriterion`` and ``util/box_ops.py``):
``HungarianMatcher`` (``scipy.optimize.linear_sum_assignment`` on class + L1 + GIoU costs), ``ImageLoss`` (CE with
the no-object class down-weighted by ``eos_coef``, L1 and GIoU over the matched boxes, normalised by the number of
target boxes, and the same again on every auxiliary decoder layer), ``generalized_box_iou`` and
``center_to_corners_format``; none of them needs torchvision. This module sets DETR's coefficients (class 1,
L1 5, GIoU 2 for the matching costs and the loss, ``eos_coef`` 0.1, as DETR's ``main.py`` and MMF's UniT
``configs/models/unit/defaults.yaml``), sums the weighted terms into one loss, and post-processes the outputs as
DETR's ``PostProcess`` (softmax, the best real class per query, boxes to corners).

Boxes are ``(cx, cy, w, h)`` normalised to [0, 1] in, ``(x0, y0, x1, y1)`` normalised out. Across data-parallel
workers each worker normalises by its own number of boxes (DETR all-reduces that count; ``ImageLoss`` does only
under ``accelerate``)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.image_transforms import center_to_corners_format
from transformers.loss.loss_for_object_detection import HungarianMatcher, ImageLoss, generalized_box_iou

__all__ = ["SetLossWeights", "center_to_corners_format", "generalized_box_iou", "match", "postprocess",
           "set_prediction_loss"]


@dataclass(frozen=True)
class SetLossWeights:
    """DETR's defaults (``main.py``: set_cost_class 1, set_cost_bbox 5, set_cost_giou 2, bbox_loss_coef 5,
    giou_loss_coef 2, eos_coef 0.1); the matching costs equal the loss weights, as there."""

    ce: float = 1.0
    l1: float = 5.0
    giou: float = 2.0
    eos_coef: float = 0.1


def _outputs(logits: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"logits": logits.float(), "pred_boxes": boxes.float()}


def match(logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]],
          weights: SetLossWeights = SetLossWeights()) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The Hungarian assignment per image: (query indices, target indices). ``logits`` (B, Q, C + 1), the last
    class being no-object; ``boxes`` (B, Q, 4); each target ``{"class_labels": (n,), "boxes": (n, 4)}``."""
    matcher = HungarianMatcher(class_cost=weights.ce, bbox_cost=weights.l1, giou_cost=weights.giou)
    return matcher(_outputs(logits, boxes), list(targets))


def set_prediction_loss(
    logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]],
    aux: Sequence[tuple[torch.Tensor, torch.Tensor]] = (), weights: SetLossWeights = SetLossWeights(),
) -> dict[str, torch.Tensor]:
    """DETR's loss: ``loss`` = sum over the final and every ``aux`` layer of ce x CE + l1 x L1 + giou x (1 - GIoU),
    and the final layer's terms ``loss_ce``, ``loss_bbox``, ``loss_giou``, ``cardinality_error`` (detached).
    Also ``matched_accuracy``: the share of matched queries whose best class is their target's."""
    num_classes = logits.shape[-1] - 1
    matcher = HungarianMatcher(class_cost=weights.ce, bbox_cost=weights.l1, giou_cost=weights.giou)
    criterion = ImageLoss(matcher, num_classes, weights.eos_coef, ["labels", "boxes", "cardinality"]).to(logits.device)
    targets = [{"class_labels": t["class_labels"].to(logits.device), "boxes": t["boxes"].to(logits.device).float()}
               for t in targets]
    outputs: dict = _outputs(logits, boxes)
    if aux:
        outputs["auxiliary_outputs"] = [_outputs(a_logits, a_boxes) for a_logits, a_boxes in aux]
    terms = criterion(outputs, targets)
    # terms are loss_ce / loss_bbox / loss_giou for the final layer and the same with a "_<layer>" suffix for each
    # auxiliary one; cardinality_error only logs
    coef = {"loss_ce": weights.ce, "loss_bbox": weights.l1, "loss_giou": weights.giou}
    loss = sum(coef[k.rstrip("0123456789").rstrip("_")] * v for k, v in terms.items() if not k.startswith("cardinality"))
    with torch.no_grad():
        indices = matcher(_outputs(logits, boxes), targets)
        hits = [(logits[b, q].argmax(-1).cpu() == targets[b]["class_labels"][t].cpu()) for b, (q, t) in enumerate(indices)]
        hits_all = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
        accuracy = hits_all.float().mean() if hits_all.numel() else torch.tensor(0.0)
    return {"loss": loss, **{k: terms[k].detach() for k in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")},
            "matched_accuracy": accuracy.to(logits.device)}


@torch.no_grad()
def postprocess(logits: torch.Tensor, boxes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """DETR's ``PostProcess`` without the rescale: per image, every query's best real class (``labels``), its
    probability (``scores``) and its box as normalised corners (``boxes``), on the CPU as float32."""
    prob = logits.float().softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)
    corners = center_to_corners_format(boxes.float())
    return [{"scores": s.cpu(), "labels": lab.cpu(), "boxes": c.cpu()} for s, lab, c in zip(scores, labels, corners)]
