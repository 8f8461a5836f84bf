"""COCO box mAP as pycocotools computes it (``COCOeval`` with ``iouType="bbox"``, its default parameters: IoU
thresholds 0.50:0.05:0.95, 101 recall points, area "all", at most 100 detections per image).

``coco_box_map`` takes normalised ``(x0, y0, x1, y1)`` boxes and each image's size in pixels, builds the ground
truth and the results in COCO's ``[x, y, w, h]`` pixel format, and returns ``det_map`` (AP@[.50:.95]),
``det_map_50`` and ``det_map_75``. Categories are the union of the class names on either side, so a predicted class
the ground truth never has is a category with no ground truth, which COCO leaves out of the mean."""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


@dataclass(frozen=True)
class ImageBoxes:
    """One image's boxes: normalised corners, a class name each, and (for predictions) a score each."""

    boxes: Sequence[Sequence[float]]
    labels: Sequence[str]
    scores: Sequence[float] | None = None


def _xywh(box: Sequence[float], width: int, height: int) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height]


def coco_box_map(ground_truth: Sequence[ImageBoxes], predictions: Sequence[ImageBoxes],
                 sizes: Sequence[tuple[int, int]]) -> dict[str, float]:
    """COCO mAP of ``predictions`` against ``ground_truth`` (one entry per image, in the same order; ``sizes``
    the images' (width, height) in pixels)."""
    if not (len(ground_truth) == len(predictions) == len(sizes)):
        raise ValueError("coco_box_map needs one ground truth, one prediction and one size per image")
    names = sorted({n for g in ground_truth for n in g.labels} | {n for p in predictions for n in p.labels})
    cat = {n: k + 1 for k, n in enumerate(names)}
    images, annotations, results = [], [], []
    for image_id, (gt, pred, (w, h)) in enumerate(zip(ground_truth, predictions, sizes), start=1):
        images.append({"id": image_id, "width": w, "height": h})
        for box, name in zip(gt.boxes, gt.labels):
            xywh = _xywh(box, w, h)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat[name], "bbox": xywh,
                                "area": xywh[2] * xywh[3], "iscrowd": 0})
        scores = pred.scores if pred.scores is not None else [1.0] * len(pred.labels)
        for box, name, score in zip(pred.boxes, pred.labels, scores):
            results.append({"image_id": image_id, "category_id": cat[name], "bbox": _xywh(box, w, h), "score": float(score)})
    if not annotations or not results:
        return {"det_map": 0.0, "det_map_50": 0.0, "det_map_75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and the summary table
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": annotations,
                           "categories": [{"id": i, "name": n} for n, i in cat.items()]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats, dtype=float)  # -1 where no category had ground truth
    return {"det_map": max(float(stats[0]), 0.0), "det_map_50": max(float(stats[1]), 0.0),
            "det_map_75": max(float(stats[2]), 0.0)}
