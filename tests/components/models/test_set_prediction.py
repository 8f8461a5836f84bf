"""DETR's set prediction (``components/models/set_prediction.py``) on hand-made cases: the Hungarian matching finds
the assignment and does not care how queries or targets are ordered, a perfect prediction costs nothing, and each
loss term is the number DETR's definition gives by hand (no-object CE weighted 0.1, L1 and 1 - GIoU per box)."""
from __future__ import annotations

import math

import pytest
import torch
from vlforge.components.models.set_prediction import SetLossWeights, match, postprocess, set_prediction_loss

C = 3  # real classes; index 3 is no-object


def targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"class_labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.25, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]


def perfect(queries: int = 5, confidence: float = 30.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries 3 and 1 of image 0 and query 4 of image 1 predict the targets exactly; the rest say no-object."""
    logits = torch.full((2, queries, C + 1), -confidence)
    logits[..., C] = confidence
    boxes = torch.full((2, queries, 4), 0.1)
    for b, (q, t) in ((0, (3, 0)), (0, (1, 1)), (1, (4, 0))):
        target = targets()[b]
        logits[b, q] = -confidence
        logits[b, q, target["class_labels"][t]] = confidence
        boxes[b, q] = target["boxes"][t]
    return logits, boxes


def as_pairs(indices) -> list[set[tuple[int, int]]]:
    return [set(zip(q.tolist(), t.tolist())) for q, t in indices]


def test_matching_finds_the_predicting_queries_in_any_order() -> None:
    logits, boxes = perfect()
    assert as_pairs(match(logits, boxes, targets())) == [{(3, 0), (1, 1)}, {(4, 0)}]
    # permuting the queries permutes the assignment the same way
    perm = torch.tensor([4, 0, 3, 1, 2])  # new query k is old query perm[k]
    where = {int(old): new for new, old in enumerate(perm)}
    permuted = as_pairs(match(logits[:, perm], boxes[:, perm], targets()))
    assert permuted == [{(where[3], 0), (where[1], 1)}, {(where[4], 0)}]
    # permuting an image's targets permutes the target side only
    swapped = targets()
    swapped[0] = {k: v.flip(0) for k, v in swapped[0].items()}
    assert as_pairs(match(logits, boxes, swapped))[0] == {(3, 1), (1, 0)}
    # and the loss is the same under both permutations
    base = set_prediction_loss(logits, boxes, targets())["loss"]
    assert float(set_prediction_loss(logits[:, perm], boxes[:, perm], targets())["loss"]) == pytest.approx(float(base), abs=1e-6)
    assert float(set_prediction_loss(logits, boxes, swapped)["loss"]) == pytest.approx(float(base), abs=1e-6)


def test_matching_is_global_not_greedy() -> None:
    # query 0 is closest to target 0 but is the only query near target 1's class; the optimum pairs 0-1 and 1-0
    t = [{"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.32, 0.3, 0.2, 0.2]])}]
    logits = torch.tensor([[[0.0, 5.0, -5.0], [5.0, -5.0, -5.0]]])  # query 0 says class 1, query 1 says class 0
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.32, 0.3, 0.2, 0.2]]])
    assert as_pairs(match(logits, boxes, t)) == [{(0, 1), (1, 0)}]


def test_a_perfect_prediction_has_zero_box_losses_and_full_accuracy() -> None:
    logits, boxes = perfect()
    out = set_prediction_loss(logits, boxes, targets(), aux=[(logits, boxes)])
    assert float(out["loss_bbox"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out["loss_giou"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out["loss_ce"]) < 1e-6 and float(out["loss"]) < 1e-5
    assert float(out["matched_accuracy"]) == 1.0 and float(out["cardinality_error"]) == 0.0


def test_each_term_is_detrs_definition_by_hand() -> None:
    t = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    logits = torch.zeros(1, 3, C + 1)  # uniform: CE log(4) at every query
    boxes = torch.tensor([[[0.6, 0.5, 0.4, 0.4], [0.1, 0.1, 0.05, 0.05], [0.9, 0.9, 0.05, 0.05]]])
    out = set_prediction_loss(logits, boxes, t)
    # CE weighted mean: one matched query (weight 1) and two no-object queries (weight 0.1), all at log(4)
    assert float(out["loss_ce"]) == pytest.approx(math.log(4), rel=1e-5)
    # L1 summed over coordinates per box / number of boxes: the matched box is 0.1 off in cx
    assert float(out["loss_bbox"]) == pytest.approx(0.1, rel=1e-5)
    # boxes [0.4, 0.3, 0.8, 0.7] vs [0.3, 0.3, 0.7, 0.7]: IoU 0.12 / 0.2 = 0.6, hull = union: GIoU 0.6
    iou = (0.3 * 0.4) / (2 * 0.16 - 0.3 * 0.4)
    assert float(out["loss_giou"]) == pytest.approx(1 - iou, rel=1e-5)
    w = SetLossWeights()
    assert float(out["loss"]) == pytest.approx(w.ce * math.log(4) + w.l1 * 0.1 + w.giou * (1 - iou), rel=1e-5)
    # an auxiliary decoder layer adds its own weighted terms (here the same outputs: twice the loss)
    with_aux = set_prediction_loss(logits, boxes, t, aux=[(logits, boxes)])
    assert float(with_aux["loss"]) == pytest.approx(2 * float(out["loss"]), rel=1e-5)
    assert float(with_aux["loss_bbox"]) == pytest.approx(0.1, rel=1e-5)  # the logged terms are the final layer's
    # the no-object weight: a confident wrong no-object query costs a tenth of what a wrong matched one does
    confident = torch.zeros(1, 3, C + 1)
    confident[0, 1:, 0] = 10.0  # the two unmatched queries say class 0 instead of no-object
    ce = float(set_prediction_loss(confident, boxes, t)["loss_ce"])
    wrong = -torch.log_softmax(torch.tensor([10.0, 0, 0, 0]), 0)[C]
    assert ce == pytest.approx((math.log(4) + 2 * 0.1 * float(wrong)) / (1 + 2 * 0.1), rel=1e-5)
    # GIoU goes below zero for disjoint boxes: 1 - GIoU > 1
    far = set_prediction_loss(logits[:, :1], torch.tensor([[[0.1, 0.1, 0.1, 0.1]]]), t)
    assert float(far["loss_giou"]) > 1.0


def test_postprocess_takes_the_best_real_class_and_corners() -> None:
    logits, boxes = perfect()
    out = postprocess(logits, boxes)
    assert out[0]["labels"][3] == 2 and out[0]["scores"][3] > 0.99 and out[0]["scores"][0] < 1e-6
    assert torch.allclose(out[0]["boxes"][3], torch.tensor([0.15, 0.2, 0.35, 0.4]))
