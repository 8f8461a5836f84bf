"""Detection: the objects of each scene, found by a family that detects (capability ``detection``), scored against
the scene facts' boxes (``components/sources/shapes.py``: each object's drawing square, its class its shape) with
COCO box mAP as pycocotools computes it (``metrics.detection.coco_box_map``): ``det_map`` (AP@[.50:.95]),
``det_map_50``, ``det_map_75``. Every query's detection is scored, as DETR's evaluation does (COCO keeps the 100
best per image). The rows give, per image, its objects and the detections scoring 0.5 or more."""
from __future__ import annotations

from typing import TYPE_CHECKING

from vlforge.components.evaluation.metrics.detection import ImageBoxes, coco_box_map
from vlforge.components.models.capabilities import ObjectDetector, capability

from vlforge.errors import UserError

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

CONFIDENT = 0.5  # a detection counted in the rows' "detected" column


def run_detection(ctx: EvalContext) -> TaskOutput:
    from vlforge.components.evaluation.tasks import TaskOutput

    detector = capability(ctx.family, ObjectDetector, "detect objects")
    facts = [(s.meta or {}).get("facts") or {} for s in ctx.samples]
    if not any(f.get("objects") for f in facts):
        raise UserError("task 'detection' needs samples whose scene facts list objects with boxes")
    images = ctx.images()
    predictions: list[ImageBoxes] = []
    for k in range(0, len(images), ctx.batch_size):
        for d in detector.detect_objects(ctx.model, ctx.pixels(images[k : k + ctx.batch_size])):
            predictions.append(ImageBoxes(d["boxes"].float().cpu().tolist(), list(d["labels"]),
                                          d["scores"].float().cpu().tolist()))
    truth = [ImageBoxes([o["bbox"] for o in f.get("objects", [])], [o["shape"] for o in f.get("objects", [])])
             for f in facts]
    metrics = coco_box_map(truth, predictions, [im.size for im in images])
    metrics["det_images"] = float(len(images))
    metrics["det_objects"] = float(sum(len(t.labels) for t in truth))
    rows = {"key": [s.key for s in ctx.samples], "objects": [len(t.labels) for t in truth],
            "detected": [sum(score >= CONFIDENT for score in p.scores or []) for p in predictions],
            "classes": [",".join(t.labels) for t in truth],
            "detected_classes": [",".join(n for n, sc in zip(p.labels, p.scores or []) if sc >= CONFIDENT)
                                 for p in predictions]}
    return TaskOutput(metrics, rows)
