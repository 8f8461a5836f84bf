"""NLVR2 on an ``nlvr2:`` dataset: is a statement true of a pair of photographs? Scored as NLVR2 reports it:
accuracy over statements and consistency (the share of sentences, each written for several image pairs of one
set, that are judged right on every pair).

A family that scores image-text pairs judges a statement by its mean score with the two images, true where that
is above the median over the split's statements: the dual-encoder zero-shot baseline (it reads neither the
composition nor the left/right order). ``nlvr2_finetune`` (``nlvr2_finetune.py``) measures NLVR2 as the fusion
models' papers do, by fine-tuning a head on the train split's statements."""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vlforge.errors import UserError

if TYPE_CHECKING:
    from vlforge.components.data.loader import RawSample
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput


def statements_for(ctx: EvalContext) -> list[tuple[int, int, dict]]:
    """(left sample index, right sample index, statement) for every statement of the split."""
    return statements_in(ctx.samples, "the evaluated split")


def statements_in(samples: Sequence[RawSample], where: str) -> list[tuple[int, int, dict]]:
    """(left index, right index, statement) for every statement of ``samples`` (``where``: their split, for errors)."""
    index = {s.meta.get("source_key"): i for i, s in enumerate(samples)}
    out = []
    for i, s in enumerate(samples):
        for st in s.meta.get("nlvr2") or []:
            if st["right"] not in index:
                raise UserError(f"nlvr2 statement '{st['identifier']}': its right image is not in {where}")
            out.append((i, index[st["right"]], st))
    return out


def nlvr2_metrics(identifiers: list[str], labels: list[bool], predictions: list[bool]) -> dict[str, float]:
    """Accuracy, consistency (by sentence: the identifier without its pair), true fraction and majority rate."""
    n = max(1, len(labels))
    right = [p == t for p, t in zip(predictions, labels)]
    by_sentence: dict[str, list[bool]] = defaultdict(list)
    for identifier, ok in zip(identifiers, right):
        split, set_id, _pair, sentence = identifier.split("-")
        by_sentence[f"{split}-{set_id}-{sentence}"].append(ok)
    true_fraction = sum(labels) / n
    return {"nlvr2_accuracy": sum(right) / n,
            "nlvr2_consistency": sum(all(v) for v in by_sentence.values()) / max(1, len(by_sentence)),
            "nlvr2_statements": float(len(labels)), "nlvr2_true_fraction": true_fraction,
            "nlvr2_majority": max(true_fraction, 1 - true_fraction)}


def run_nlvr2(ctx: EvalContext) -> TaskOutput:
    from vlforge.components.evaluation.tasks import TaskOutput

    items = statements_for(ctx)
    if not items:
        raise UserError("task 'nlvr2' found no statements in the evaluated split")
    pairs = [(i, st["sentence"]) for a, b, st in items for i in (a, b)]
    scores = ctx.score_sample_texts(pairs).view(len(items), 2).mean(dim=1).tolist()
    threshold = statistics.median(scores)
    predictions = [s > threshold for s in scores]
    labels = [st["label"] for _, _, st in items]
    identifiers = [st["identifier"] for _, _, st in items]
    rows = {"identifier": identifiers, "left_key": [ctx.samples[a].key for a, _, _ in items],
            "right_key": [ctx.samples[b].key for _, b, _ in items], "statement": [st["sentence"] for _, _, st in items],
            "label": labels, "score": scores, "prediction": predictions}
    return TaskOutput(nlvr2_metrics(identifiers, labels, predictions), rows)
