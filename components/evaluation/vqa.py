"""VQA on questions derived from the scenes' facts (``components/sources/scene_tasks.py``): colour, shape, count,
position and yes/no, scored as accuracy per question type and overall.

Three ways to answer, chosen by what the family offers, in this order:
- its own answer head (``vqa_answer``: a family trained with a VQA classifier, e.g. UniT): each question about its
  image goes through the head; where the family can also score pairs, the scoring answer is reported beside it as
  ``vqa_scoring_accuracy``.
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

import torch

from vlforge.components.models.capabilities import FewShotGenerator, QuestionAnswerer, capability
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


@torch.no_grad()
def answer_by_head(ctx: EvalContext, items: list[tuple[int, VQAQuestion]]) -> list[str]:
    images, answers = ctx.images(), []
    answerer = capability(ctx.family, QuestionAnswerer)
    for k in range(0, len(items), ctx.batch_size):
        chunk = items[k : k + ctx.batch_size]
        answers += answerer.answer_questions(ctx.model, ctx.pixels([images[i] for i, _ in chunk]),
                                             [q.question for _, q in chunk], ctx.tokenizer)
    return [a.strip().lower() for a in answers]


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
    mode = "head" if "vqa_answer" in ctx.offers else "scoring" if "pair_scoring" in ctx.offers else "generation"
    answer = {"head": answer_by_head, "scoring": answer_by_scoring, "generation": answer_by_generation}[mode]
    predictions = answer(ctx, items)
    questions = [q for _, q in items]
    metrics = vqa_metrics(questions, predictions)
    scored: list[str] | None = None
    if mode == "head" and "pair_scoring" in ctx.offers:
        scored = answer_by_scoring(ctx, items)
        metrics["vqa_scoring_accuracy"] = vqa_metrics(questions, scored)["vqa_accuracy"]
    rows = {"key": [q.key for q in questions], "qtype": [q.qtype for q in questions],
            "question": [q.question for q in questions], "answer": [q.answer for q in questions],
            "prediction": predictions, "correct": [p == q.answer for p, q in zip(predictions, questions)],
            "mode": [mode] * len(questions)}
    if scored is not None:
        rows["scored"] = scored
    if mode == "scoring" and "generate" in ctx.offers:  # a generative family with a matching head: both ways
        generated = answer_by_generation(ctx, items)
        metrics["vqa_generation_accuracy"] = vqa_metrics(questions, generated)["vqa_accuracy"]
        rows["generated"] = generated
    groups = {t: metrics[f"vqa_acc_{t.replace('/', '')}"] for t in QUESTION_TYPES if f"vqa_acc_{t.replace('/', '')}" in metrics}
    chance: dict[str, list[float]] = defaultdict(list)
    for q in questions:
        chance[q.qtype].append(1 / len(q.candidates))
    chance_mean = {t: sum(v) / len(v) for t, v in chance.items()}
    return TaskOutput(metrics, rows, {"vqa_by_type.png": lambda path: plot_group_accuracy(
        groups, chance_mean, f"VQA ({mode})", path)})


FEW_SHOT_K = 2
FEW_SHOT_QUESTIONS = 200  # one generation per question: a fixed, evenly spread subset keeps the task quick


def few_shot_prompt(q: VQAQuestion, with_answer: bool) -> str:
    return f"question: {q.question} answer:" + (f" {q.answer}" if with_answer else "")


def few_shot_items(ctx: EvalContext, k: int = FEW_SHOT_K) -> list[tuple[int, VQAQuestion, list[tuple[int, VQAQuestion]]]]:
    """Each evaluated question with ``k`` solved examples of the same question type about *other* scenes of the
    split (Frozen's protocol: the shots come from the task's data, never the query image), chosen in a fixed way."""
    items = questions_for(ctx)
    step = max(1, len(items) // FEW_SHOT_QUESTIONS)
    chosen = items[::step][:FEW_SHOT_QUESTIONS]
    by_type: dict[str, list[tuple[int, VQAQuestion]]] = defaultdict(list)
    for i, q in items:
        by_type[q.qtype].append((i, q))
    out = []
    for n, (i, q) in enumerate(chosen):
        pool = [(j, s) for j, s in by_type[q.qtype] if j != i]
        shots = [pool[(n * 7 + 3 * m) % len(pool)] for m in range(min(k, len(pool)))] if pool else []
        out.append((i, q, shots))
    return out


def run_vqa_few_shot(ctx: EvalContext) -> TaskOutput:
    """Open-ended VQA with ``FEW_SHOT_K`` interleaved (image, question, answer) shots before the query, and the same
    questions with no shot, so the gain from in-context examples is measured on one model. The no-shot score is
    ``vqa_zero_shot_accuracy`` only for a model that never saw the ``question: q answer: a`` form in training (nor
    did a model it started from or keeps frozen inside: ``ctx.seen_formats``); else ``vqa_no_shot_accuracy``."""
    from vlforge.components.evaluation.tasks import TaskOutput

    images = ctx.images()
    items = few_shot_items(ctx)
    pixels = {i: ctx.pixels([images[i]])[0] for i in {i for i, _, shots in items for i in [i, *[j for j, _ in shots]]}}
    predictions: dict[int, list[str]] = {0: [], FEW_SHOT_K: []}
    generator = capability(ctx.family, FewShotGenerator)
    with torch.no_grad():
        for i, q, shots in items:
            for k in predictions:
                examples = [(pixels[j], few_shot_prompt(s, True)) for j, s in shots[:k]]
                text = generator.few_shot_generate(ctx.model, examples, pixels[i], few_shot_prompt(q, False),
                                                   ctx.tokenizer, 4)
                predictions[k].append((text.strip().lower().split() or [""])[0].strip(".,?!"))
    questions = [q for _, q, _ in items]
    few = vqa_metrics(questions, predictions[FEW_SHOT_K])
    zero = vqa_metrics(questions, predictions[0])
    # no shot is zero-shot only for a model that never trained on questions in this form (nor did its frozen LM)
    seen = "vqa" in ctx.seen_formats
    metrics = {"vqa_few_shot_accuracy": few["vqa_accuracy"],
               ("vqa_no_shot_accuracy" if seen else "vqa_zero_shot_accuracy"): zero["vqa_accuracy"],
               "vqa_format_seen_in_training": float(seen),
               "vqa_few_shot_k": float(FEW_SHOT_K), "vqa_few_shot_questions": float(len(questions)),
               "vqa_few_shot_chance": few["vqa_chance"]}
    rows = {"key": [q.key for q in questions], "qtype": [q.qtype for q in questions],
            "question": [q.question for q in questions], "answer": [q.answer for q in questions],
            "prediction_zero_shot": predictions[0], "prediction_few_shot": predictions[FEW_SHOT_K]}
    return TaskOutput(metrics, rows)
