"""Grounding: pick the object a phrase describes ("a red circle") among a scene's objects, whose boxes come from
the scene facts (``components/sources/scene_tasks.py``; only phrases that the colour and shape alone resolve).

A family that scores image-text pairs answers by cropping each object's box (with a margin, padded to a square)
out of the image and picking the crop that scores highest against the phrase, the CLIP-style region baseline
(as in ReCLIP's cropping). Chance is 1 / objects in the scene."""
from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image
from vlforge.components.sources.scene_tasks import GroundingPhrase, grounding_phrases

from vlforge.errors import UserError

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

MARGIN = 0.04  # normalised margin around a box, so the crop shows the whole shape


def crop_box(image: Image.Image, box: tuple[float, float, float, float], margin: float = MARGIN) -> Image.Image:
    w, h = image.size
    x0, y0, x1, y1 = box
    return image.crop((max(0, int((x0 - margin) * w)), max(0, int((y0 - margin) * h)),
                       min(w, round((x1 + margin) * w)), min(h, round((y1 + margin) * h))))


def run_grounding(ctx: EvalContext) -> TaskOutput:
    from vlforge.components.evaluation.tasks import TaskOutput

    items: list[tuple[int, GroundingPhrase]] = [(i, g) for i, s in enumerate(ctx.samples)
                                                 for g in grounding_phrases(s.key, s.meta["facts"])]
    if not items:
        raise UserError("task 'grounding' needs scenes with two or more objects in the split")
    images = ctx.images()
    crops: list[Image.Image] = []
    first_crop: dict[int, int] = {}
    for i in sorted({i for i, _ in items}):
        first_crop[i] = len(crops)
        crops.extend(crop_box(images[i], tuple(o["bbox"])) for o in ctx.samples[i].meta["facts"]["objects"])
    phrases = sorted({g.phrase for _, g in items})
    where = {p: k for k, p in enumerate(phrases)}
    pairs = [(first_crop[i] + b, where[g.phrase]) for i, g in items for b in range(len(g.boxes))]
    scores = ctx.score_pairs(crops, phrases, pairs).tolist()
    predictions, k = [], 0
    for _, g in items:
        s = scores[k : k + len(g.boxes)]
        predictions.append(max(range(len(s)), key=s.__getitem__))
        k += len(g.boxes)
    correct = [p == g.target for p, (_, g) in zip(predictions, items)]
    metrics = {"grounding_accuracy": sum(correct) / len(correct), "grounding_phrases": float(len(items)),
               "grounding_chance": sum(1 / len(g.boxes) for _, g in items) / len(items)}
    rows = {"key": [g.key for _, g in items], "phrase": [g.phrase for _, g in items],
            "target": [g.target for _, g in items], "prediction": predictions, "objects": [len(g.boxes) for _, g in items]}
    return TaskOutput(metrics, rows)
