"""UniT's tasks on vlforge batches, and the per-step task sampler.

UniT trains one task per iteration, drawn with fixed sampling ratios (MMF ``multitasking: type: ratios``). Here each
batch of image-caption pairs yields up to three tasks, all built deterministically from the batch:
- ``vqa`` (image + text): the scene questions of ``scene_tasks.vqa_questions`` on ``batch.facts()``, classified over
  the fixed answer vocabulary ``VQA_ANSWERS`` (every answer those questions can have); needs facts and a tokenizer;
- ``itm`` (image + text): each caption with its own image (label 1) and with another sample's image (label 0,
  ``heads.sample_negatives`` excluding rows with the same key); needs two different samples;
- ``text_cls`` (text only): the caption's class ``meta["label"]`` among ``recipe.text_classes`` (for the builtin
  scenes, the shape of the largest object); needs at least one sample whose label is a known class;
- ``detection`` (image only, DETR's set prediction): every object of the scene facts, its class its shape
  (``DETECTION_CLASSES``) and its box the facts' ``bbox`` (the square the shape is drawn in, ``shapes.render_scene``)
  as ``(cx, cy, w, h)`` normalised; needs facts whose objects carry boxes. The box is the object's drawing square,
  which a circle, square, triangle, diamond or cross touches on all four sides; a star's points reach 95% of its
  width and 90% of its height (tight-box IoU with the square 0.86).
``draw_task`` draws with ``training.multitask.sample_task`` among the tasks the batch supports, so a task whose
data a batch lacks is never drawn for it and the draw stays a pure function of (seed, step, supported tasks)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from vlforge.components.models.heads import not_negative_mask, sample_negatives
from vlforge.components.models.registry import ImageTextBatch
from vlforge.components.sources.scene_tasks import COUNT_WORDS, vqa_questions
from vlforge.components.sources.shapes import COLORS, RELATIONS, SHAPES
from vlforge.components.training.multitask import sample_task

TASKS: tuple[str, ...] = ("vqa", "itm", "text_cls", "detection")
DETECTION_CLASSES: tuple[str, ...] = SHAPES
# every answer scene_tasks.vqa_questions can give: colour, shape, count, position, yes/no
VQA_ANSWERS: tuple[str, ...] = (*COLORS, *SHAPES, *COUNT_WORDS, *RELATIONS, "yes", "no")
assert len(set(VQA_ANSWERS)) == len(VQA_ANSWERS)
ANSWER_INDEX = {a: i for i, a in enumerate(VQA_ANSWERS)}


@dataclass
class TaskInputs:
    """What ``UnitModel.forward`` takes for one task (``pixel_values`` None for a text-only task)."""

    task: str
    labels: torch.Tensor | list[dict[str, torch.Tensor]]  # detection: one target dict per image
    input_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    pixel_values: torch.Tensor | None = None
    image_index: torch.Tensor | None = None
    text_index: torch.Tensor | None = None

    def as_kwargs(self) -> dict:
        return {"task": self.task, "labels": self.labels, "input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "pixel_values": self.pixel_values, "image_index": self.image_index, "text_index": self.text_index}


def _labelled_rows(batch: ImageTextBatch, classes: Sequence[str]) -> list[tuple[int, int]]:
    index = {c: i for i, c in enumerate(classes)}
    meta = batch.meta or [{}] * len(batch.keys)
    return [(row, index[m["label"]]) for row, m in enumerate(meta) if (m or {}).get("label") in index]


def supported_tasks(batch: ImageTextBatch, classes: Sequence[str]) -> list[str]:
    """The tasks this batch has the data for, in ``TASKS`` order."""
    out = []
    if batch.tokenizer is not None and any(f is not None for f in batch.facts()):
        out.append("vqa")
    if len(set(batch.keys)) >= 2:
        out.append("itm")
    if _labelled_rows(batch, classes):
        out.append("text_cls")
    if any(has_boxes(f) for f in batch.facts()):
        out.append("detection")
    return out


def has_boxes(facts: dict | None) -> bool:
    """Scene facts whose every object has a 4-number ``bbox`` and a known shape (what ``detection`` trains on)."""
    objects = (facts or {}).get("objects")
    return bool(objects) and all(len(o.get("bbox") or ()) == 4 and o.get("shape") in DETECTION_CLASSES for o in objects)


def detection_target(facts: dict, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """DETR's target of one scene: ``class_labels`` (n,) indices into ``DETECTION_CLASSES`` and ``boxes`` (n, 4)
    as ``(cx, cy, w, h)`` normalised, from the facts' ``(x0, y0, x1, y1)`` boxes."""
    objects = facts["objects"]
    corners = torch.tensor([o["bbox"] for o in objects], dtype=torch.float32, device=device).view(-1, 4)
    boxes = torch.stack([(corners[:, 0] + corners[:, 2]) / 2, (corners[:, 1] + corners[:, 3]) / 2,
                         corners[:, 2] - corners[:, 0], corners[:, 3] - corners[:, 1]], dim=-1)
    labels = torch.tensor([DETECTION_CLASSES.index(o["shape"]) for o in objects], dtype=torch.long, device=device)
    return {"class_labels": labels, "boxes": boxes}


def detection_inputs(batch: ImageTextBatch) -> TaskInputs:
    """The images whose facts carry boxes, with their DETR targets (no text)."""
    rows = [row for row, f in enumerate(batch.facts()) if has_boxes(f)]
    device = batch.pixel_values.device
    facts = batch.facts()
    targets = [detection_target(facts[row], device) for row in rows]
    return TaskInputs("detection", targets, None, None, batch.pixel_values[torch.tensor(rows, device=device)])


def draw_task(weights: Mapping[str, float], batch: ImageTextBatch, classes: Sequence[str], seed: int) -> str | None:
    """The task for ``batch.step``: ``sample_task`` over the supported tasks of positive weight (None: none)."""
    usable = {t: w for t, w in weights.items() if w > 0 and t in supported_tasks(batch, classes)}
    return sample_task(usable, seed, batch.step) if usable else None


def vqa_inputs(batch: ImageTextBatch) -> TaskInputs:
    """Every question of every scene in the batch, each paired (``image_index``) with its scene's image."""
    rows, questions, answers = [], [], []
    for row, (key, facts) in enumerate(zip(batch.keys, batch.facts())):
        if facts is None:
            continue
        for q in vqa_questions(key, facts):
            rows.append(row)
            questions.append(q.question)
            answers.append(ANSWER_INDEX[q.answer])
    device = batch.input_ids.device
    ids, mask = batch.tokenize(questions)
    return TaskInputs("vqa", torch.tensor(answers, device=device), ids, mask, batch.pixel_values,
                      image_index=torch.tensor(rows, device=device))


def itm_inputs(batch: ImageTextBatch, generator: torch.Generator | None) -> TaskInputs:
    """Each caption with its own image (1) and, where the batch has another sample, with that sample's image (0)."""
    bsz, device = batch.input_ids.shape[0], batch.input_ids.device
    forbid = not_negative_mask(batch.keys, batch.captions, device)  # another scene captioned alike matches too
    partner = sample_negatives(torch.zeros(bsz, bsz, device=device), "random", forbid, generator)
    ok = partner >= 0
    rows = torch.arange(bsz, device=device)
    image_index = torch.cat([rows, partner[ok]])
    text_index = torch.cat([rows, rows[ok]])
    labels = torch.cat([torch.ones(bsz), torch.zeros(int(ok.sum()))]).long().to(device)
    return TaskInputs("itm", labels, batch.input_ids, batch.attention_mask, batch.pixel_values,
                      image_index=image_index, text_index=text_index)


def text_cls_inputs(batch: ImageTextBatch, classes: Sequence[str]) -> TaskInputs:
    """The captions whose ``meta["label"]`` is one of ``classes``, labelled with its index (no image)."""
    pairs = _labelled_rows(batch, classes)
    device = batch.input_ids.device
    rows = torch.tensor([r for r, _ in pairs], device=device)
    labels = torch.tensor([c for _, c in pairs], device=device)
    return TaskInputs("text_cls", labels, batch.input_ids[rows], batch.attention_mask[rows])


def task_inputs(task: str, batch: ImageTextBatch, classes: Sequence[str], generator: torch.Generator | None) -> TaskInputs:
    if task == "vqa":
        return vqa_inputs(batch)
    if task == "itm":
        return itm_inputs(batch, generator)
    if task == "text_cls":
        return text_cls_inputs(batch, classes)
    if task == "detection":
        return detection_inputs(batch)
    raise ValueError(f"unknown UniT task '{task}' (known: {', '.join(TASKS)})")
