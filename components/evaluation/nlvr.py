"""NLVR-style reasoning: a statement about a pair of scenes ("both images contain a red circle", "at least one
image contains a blue star", "the left image has more objects than the right image"), true or false.

Pairs are consecutive samples of the split (sample 0 with 1, 2 with 3, ...); the statements and their truth come
from the scenes' facts (``components/sources/scene_tasks.py``). A family that scores image-text pairs answers by
evaluating each statement's parts on each image and composing them: an object phrase is present in an image when
it ranks among its top ``PRESENT_TOP_K`` colour-shape phrases (as the VQA yes/no questions), the object count is
the best-scoring of "one/two/three objects". That neuro-symbolic reading is the dual-encoder baseline; a family
with a two-image head would classify the statement directly."""
from __future__ import annotations

from typing import TYPE_CHECKING

from vlforge.components.sources.scene_tasks import (
    OBJECT_PHRASES,
    PRESENT_TOP_K,
    PairStatement,
    pair_statements,
)

from vlforge.errors import UserError

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

COUNT_STATEMENTS = ("one object", "two objects", "three objects")


def statements_for(ctx: EvalContext) -> list[tuple[int, int, PairStatement]]:
    s = ctx.samples
    return [(i, i + 1, st) for i in range(0, len(s) - 1, 2)
            for st in pair_statements(s[i].key, s[i].meta["facts"], s[i + 1].key, s[i + 1].meta["facts"])]


def judge_by_scoring(ctx: EvalContext, items: list[tuple[int, int, PairStatement]]) -> list[bool]:
    images = sorted({i for a, b, _ in items for i in (a, b)})
    pairs = [(i, t) for i in images for t in (*OBJECT_PHRASES, *COUNT_STATEMENTS)]
    scores = dict(zip(pairs, ctx.score_sample_texts(pairs).tolist()))
    present = {i: set(sorted(OBJECT_PHRASES, key=lambda p: -scores[(i, p)])[:PRESENT_TOP_K]) for i in images}
    count = {i: max(range(3), key=lambda k: scores[(i, COUNT_STATEMENTS[k])]) + 1 for i in images}
    out = []
    for a, b, st in items:
        if st.form == "both":
            out.append(st.phrase in present[a] and st.phrase in present[b])
        elif st.form == "either":
            out.append(st.phrase in present[a] or st.phrase in present[b])
        else:
            out.append(count[a] > count[b])
    return out


def nlvr_metrics(labels: list[bool], predictions: list[bool], forms: list[str]) -> dict[str, float]:
    n = max(1, len(labels))
    metrics = {"nlvr_accuracy": sum(p == t for p, t in zip(predictions, labels)) / n,
               "nlvr_true_fraction": sum(labels) / n, "nlvr_statements": float(len(labels))}
    for form in sorted(set(forms)):
        idx = [k for k, f in enumerate(forms) if f == form]
        metrics[f"nlvr_acc_{form}"] = sum(predictions[k] == labels[k] for k in idx) / len(idx)
    # the majority-class rate is the bar any reader compares against
    metrics["nlvr_majority"] = max(metrics["nlvr_true_fraction"], 1 - metrics["nlvr_true_fraction"])
    return metrics


def run_nlvr(ctx: EvalContext) -> TaskOutput:
    from vlforge.components.evaluation.tasks import TaskOutput

    items = statements_for(ctx)
    if not items:
        raise UserError("task 'nlvr' needs at least two samples in the split")
    predictions = judge_by_scoring(ctx, items)
    labels = [st.label for _, _, st in items]
    rows = {"left_key": [st.left_key for _, _, st in items], "right_key": [st.right_key for _, _, st in items],
            "statement": [st.text for _, _, st in items], "label": labels, "prediction": predictions}
    return TaskOutput(nlvr_metrics(labels, predictions, [st.form for _, _, st in items]), rows)
