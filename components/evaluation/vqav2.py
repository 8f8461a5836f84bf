"""VQAv2 on a ``vqav2:`` dataset (its samples carry their questions and ten human answers each), scored with the
official VQA accuracy (``metrics.vqa``: min(#annotators agreeing / 3, 1) over the leave-one-out subsets, after
the official answer normalisation), overall and per answer type (``yes/no``, ``number``, ``other``).

How a family answers, in this order of preference (as ``vqa.py`` on the scene questions):
- its own answer head (``vqa_answer``);
- open generation (``generate``) from ``"question: <q> answer:"``, the whole generated text as the answer;
- classification by scoring (``pair_scoring``): among the ``CANDIDATES`` most frequent answers of the split
  (their ``multiple_choice_answer``), the one whose ``"<question> <answer>"`` scores best with the image, the
  CLIP-style zero-shot baseline."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vlforge.components.evaluation.metrics import vqa_accuracy
from vlforge.components.evaluation.vqa import answer_by_head

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

CANDIDATES = 20
ANSWER_TYPES = ("yes/no", "number", "other")


@dataclass(frozen=True)
class VQAv2Question:
    key: str  # the image's sample key
    question_id: int
    question: str
    answers: tuple[str, ...]
    answer_type: str
    multiple_choice_answer: str


def questions_for(ctx: EvalContext) -> list[tuple[int, VQAv2Question]]:
    return [(i, VQAv2Question(s.key, int(q["question_id"]), q["question"], tuple(q["answers"]), q.get("answer_type", ""),
                              q.get("multiple_choice_answer", "")))
            for i, s in enumerate(ctx.samples) for q in s.meta.get("vqa") or []]


def candidate_answers(items: list[tuple[int, VQAv2Question]], n: int = CANDIDATES) -> list[str]:
    """The ``n`` most frequent ``multiple_choice_answer`` of the questions (ties by first appearance)."""
    return [a for a, _ in Counter(q.multiple_choice_answer for _, q in items if q.multiple_choice_answer).most_common(n)]


def answer_by_scoring(ctx: EvalContext, items: list[tuple[int, VQAv2Question]]) -> list[str]:
    candidates = candidate_answers(items)
    pairs = [(i, f"{q.question} {a}") for i, q in items for a in candidates]
    scores = ctx.score_sample_texts(pairs).view(len(items), len(candidates))
    return [candidates[k] for k in scores.argmax(dim=1).tolist()]


def answer_by_generation(ctx: EvalContext, items: list[tuple[int, VQAv2Question]]) -> list[str]:
    images = ctx.images()
    outputs = ctx.generate([images[i] for i, _ in items], [f"question: {q.question} answer:" for _, q in items], 8)
    return [o.strip().splitlines()[0] if o.strip() else "" for o in outputs]


def vqav2_metrics(questions: list[VQAv2Question], predictions: list[str]) -> tuple[dict[str, float], list[float]]:
    """Official accuracy overall and per answer type (``vqa_acc_yesno``, ...), and each question's accuracy."""
    scores = [vqa_accuracy(p, q.answers) for p, q in zip(predictions, questions)]
    by_type: dict[str, list[float]] = defaultdict(list)
    for q, s in zip(questions, scores):
        by_type[q.answer_type].append(s)
    metrics = {"vqa_accuracy": sum(scores) / max(1, len(scores)), "vqa_questions": float(len(scores))}
    for answer_type in ANSWER_TYPES:
        if by_type[answer_type]:
            metrics[f"vqa_acc_{answer_type.replace('/', '')}"] = sum(by_type[answer_type]) / len(by_type[answer_type])
    return metrics, scores


def run_vqav2(ctx: EvalContext) -> TaskOutput:
    from vlforge.components.evaluation.tasks import TaskOutput

    items = questions_for(ctx)
    mode = "head" if "vqa_answer" in ctx.offers else "generation" if "generate" in ctx.offers else "scoring"
    answer = {"head": answer_by_head, "generation": answer_by_generation, "scoring": answer_by_scoring}[mode]
    predictions = answer(ctx, items)
    questions = [q for _, q in items]
    metrics, scores = vqav2_metrics(questions, predictions)
    rows = {"key": [q.key for q in questions], "question_id": [q.question_id for q in questions],
            "question": [q.question for q in questions], "answer_type": [q.answer_type for q in questions],
            "answers": [list(q.answers) for q in questions], "prediction": predictions, "accuracy": scores,
            "mode": [mode] * len(questions)}
    return TaskOutput(metrics, rows)
