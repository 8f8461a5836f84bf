"""Image-text matching (fusion families: ALBEF/ViLT-style ITM heads): for every image, its own caption and a
caption taken from another sample (the next one in the split with a different caption) are scored by the family's
matching head. ``itm_accuracy``: the head's yes/no (logit > 0) is right, over both pairs of every image (chance
0.5); ``itm_pair_accuracy``: the true caption scores above the swapped one.

A dual encoder (CLIP, VLMo's retrieval side without its head...) has no yes/no: the same pairs are scored by its
cosine similarity and only ``itm_pair_accuracy`` is reported (with ``itm_scored_by_cosine`` 1), the reference a
fusion family's matching head is compared with in one command (``vlforge run eval --tasks itm`` on each). A family
with a matching head is always scored by the head."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput


def negative_captions(captions: list[str]) -> list[str]:
    """For each caption, the next different caption in the list (cyclically); itself when all are equal."""
    out = []
    for i, c in enumerate(captions):
        others = (captions[(i + k) % len(captions)] for k in range(1, len(captions)))
        out.append(next((o for o in others if o != c), c))
    return out


def itm_metrics(pos: torch.Tensor, neg: torch.Tensor) -> dict[str, float]:
    correct = torch.cat([pos > 0, neg <= 0]).float()
    return {"itm_accuracy": float(correct.mean()), "itm_pair_accuracy": float((pos > neg).float().mean()),
            "itm_chance": 0.5}


def run_itm(ctx: EvalContext) -> TaskOutput:
    from vlforge.components.evaluation.tasks import TaskOutput

    captions = [s.caption for s in ctx.samples]
    negatives = negative_captions(captions)
    texts = sorted(set(captions) | set(negatives))
    where = {t: k for k, t in enumerate(texts)}
    n = len(captions)
    pairs = [(i, where[captions[i]]) for i in range(n)] + [(i, where[negatives[i]]) for i in range(n)]
    head = "itm" in ctx.offers
    scores = ctx.score_pairs(ctx.images(), texts, pairs, head="itm" if head else None)
    pos, neg = scores[:n], scores[n:]
    rows = {"key": [s.key for s in ctx.samples], "caption": captions, "negative": negatives,
            "pos_logit" if head else "pos_cosine": pos.tolist(), "neg_logit" if head else "neg_cosine": neg.tolist()}
    if head:
        return TaskOutput(itm_metrics(pos, neg), rows)
    return TaskOutput({"itm_pair_accuracy": float((pos > neg).float().mean()), "itm_chance": 0.5,
                       "itm_scored_by_cosine": 1.0}, rows)
