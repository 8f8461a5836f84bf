"""VQA on questions derived from the scenes' facts (``components/sources/scene_tasks.py``): colour, shape, count,
position and yes/no, scored as accuracy per question type and overall.

Two ways to answer, chosen by what the family offers:
- classification by scoring (``pair_scoring``: a dual encoder or a matching head): each candidate answer is written
  as a caption-like statement ("a red circle left of a blue square") and the best-scoring one is the answer, the
  CLIP-style zero-shot baseline. A yes/no question ("is there a red circle?") is answered yes when its phrase
  ranks among the image's top ``PRESENT_TOP_K`` of all colour-shape phrases, since scores are only comparable
  within one image.
- open generation (``generate``): the family generates from ``"question: <q> answer:"`` and the first word of
  its output must equal the answer."""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from vlforge.components.sources.scene_tasks import (
    OBJECT_PHRASES,
    PRESENT_TOP_K,
    QUESTION_TYPES,
    VQAQuestion,
    vqa_questions,
)

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput


def questions_for(ctx: EvalContext) -> list[tuple[int, VQAQuestion]]:
    return [(i, q) for i, s in enumerate(ctx.samples) for q in vqa_questions(s.key, s.meta["facts"])]


def answer_by_scoring(ctx: EvalContext, items: list[tuple[int, VQAQuestion]]) -> list[str]:
    pairs = sorted({(i, st) for i, q in items for st in (OBJECT_PHRASES if q.probe else q.statements)})
    scores = dict(zip(pairs, ctx.score_sample_texts(pairs).tolist()))
    answers = []
    for i, q in items:
        if q.probe is not None:
            ranked = sorted(OBJECT_PHRASES, key=lambda p: -scores[(i, p)])
            answers.append("yes" if ranked.index(q.probe) < PRESENT_TOP_K else "no")
        else:
            best = max(range(len(q.candidates)), key=lambda k: scores[(i, q.statements[k])])
            answers.append(q.candidates[best])
    return answers


def answer_by_generation(ctx: EvalContext, items: list[tuple[int, VQAQuestion]]) -> list[str]:
    images = ctx.images()
    outputs = ctx.generate([images[i] for i, _ in items], [f"question: {q.question} answer:" for _, q in items], 4)
    return [(o.strip().lower().split() or [""])[0].strip(".,?!") for o in outputs]


def vqa_metrics(items: list[VQAQuestion], predictions: list[str]) -> dict[str, float]:
    """Overall accuracy, accuracy and chance (1 / candidates) per question type."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    for q, p in zip(items, predictions):
        by_type[q.qtype].append(p == q.answer)
    n = max(1, len(items))
    metrics = {"vqa_accuracy": sum(sum(v) for v in by_type.values()) / n, "vqa_questions": float(len(items)),
               "vqa_chance": sum(1 / len(q.candidates) for q in items) / n}
    for qtype in QUESTION_TYPES:
        if by_type[qtype]:
            metrics[f"vqa_acc_{qtype.replace('/', '')}"] = sum(by_type[qtype]) / len(by_type[qtype])
    return metrics


def run_vqa(ctx: EvalContext) -> TaskOutput:
    from vlforge.components.evaluation.plots import plot_group_accuracy
    from vlforge.components.evaluation.tasks import TaskOutput

    items = questions_for(ctx)
    mode = "scoring" if "pair_scoring" in ctx.offers else "generation"
    predictions = answer_by_scoring(ctx, items) if mode == "scoring" else answer_by_generation(ctx, items)
    questions = [q for _, q in items]
    metrics = vqa_metrics(questions, predictions)
    rows = {"key": [q.key for q in questions], "qtype": [q.qtype for q in questions],
            "question": [q.question for q in questions], "answer": [q.answer for q in questions],
            "prediction": predictions, "correct": [p == q.answer for p, q in zip(predictions, questions)],
            "mode": [mode] * len(questions)}
    groups = {t: metrics[f"vqa_acc_{t.replace('/', '')}"] for t in QUESTION_TYPES if f"vqa_acc_{t.replace('/', '')}" in metrics}
    chance: dict[str, list[float]] = defaultdict(list)
    for q in questions:
        chance[q.qtype].append(1 / len(q.candidates))
    chance_mean = {t: sum(v) / len(v) for t, v in chance.items()}
    return TaskOutput(metrics, rows, {"vqa_by_type.png": lambda path: plot_group_accuracy(
        groups, chance_mean, f"VQA ({mode})", path)})
