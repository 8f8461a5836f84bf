"""Captioning: captions generated from the images against the references, scored with BLEU-4 and CIDEr-D.

Implemented to the published definitions (no Java, no extra package) and checked against hand-computed cases in
``tests/components/evaluation/test_captioning.py``:
- BLEU-4 (Papineni et al., ACL 2002): corpus-level modified (clipped) n-gram precisions for n = 1..4, their
  geometric mean, times the brevity penalty ``exp(1 - r/c)`` when the candidates are shorter than the effective
  reference length ``r`` (per candidate, the reference length closest to it, ties to the shorter). No smoothing:
  a corpus with no matching 4-gram scores 0.
- CIDEr-D (Vedantam et al., CVPR 2015), as the COCO caption evaluation computes it: per n = 1..4, TF-IDF vectors of
  n-gram counts with ``idf = log(images) - log(max(1, df))`` (df: images whose references hold the n-gram), the
  candidate's clipped similarity to each reference ``sum min(c, r) * r / (|c| |r|)`` times the length penalty
  ``exp(-(len_c - len_r)² / (2 · 6²))`` (lengths in bigrams, as the reference implementation counts them),
  averaged over n and references, times 10; the corpus score is the mean over images.
Text is lowercased and split on whitespace after dropping punctuation, as PTB tokenisation would for these
captions. ``caption_distinct`` (distinct captions per image) tells an image-conditioned captioner from one that writes
the same caption for every image; ``cider_mismatched`` (the captions scored against another image's references)
tells how much of the CIDEr the image earns: a caption that ignores the image scores about the same there."""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

CIDER_SIGMA = 6.0


def tokenize(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` of ``candidates[i]`` against ``references[i]`` (one or more strings each)."""
    matched = [0] * max_n
    total = [0] * max_n
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        c = tokenize(cand)
        rs = [tokenize(r) for r in refs]
        cand_len += len(c)
        ref_len += min((abs(len(r) - len(c)), len(r)) for r in rs)[1]
        for n in range(1, max_n + 1):
            counts = ngrams(c, n)
            best: Counter = Counter()
            for r in rs:
                best |= ngrams(r, n)  # union = per-n-gram max count over the references
            matched[n - 1] += sum(min(k, best[g]) for g, k in counts.items())
            total[n - 1] += sum(counts.values())
    if cand_len == 0 or min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    brevity = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
    return brevity * math.exp(log_precision)


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4,
            sigma: float = CIDER_SIGMA) -> tuple[float, list[float]]:
    """Corpus CIDEr-D and the per-image scores."""
    refs_tok = [[tokenize(r) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in refs_tok:
        df.update({g for r in refs for n in range(1, max_n + 1) for g in ngrams(r, n)})
    log_images = math.log(float(len(references))) if references else 0.0

    def vectors(tokens: list[str]) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = []
        for n in range(1, max_n + 1):
            vec.append({g: k * (log_images - math.log(max(1.0, df[g]))) for g, k in ngrams(tokens, n).items()})
        norms = [math.sqrt(sum(v * v for v in d.values())) for d in vec]
        return vec, norms, sum(ngrams(tokens, 2).values())

    scores = []
    for cand, refs in zip(candidates, refs_tok):
        cv, cn, cl = vectors(tokenize(cand))
        total = 0.0
        for r in refs:
            rv, rn, rl = vectors(r)
            penalty = math.exp(-((cl - rl) ** 2) / (2 * sigma**2))
            per_n = []
            for n in range(max_n):
                val = sum(min(v, rv[n].get(g, 0.0)) * rv[n].get(g, 0.0) for g, v in cv[n].items())
                if cn[n] != 0 and rn[n] != 0:
                    val /= cn[n] * rn[n]
                per_n.append(val * penalty)
            total += sum(per_n) / max_n
        scores.append(10.0 * total / max(1, len(refs)))
    return (sum(scores) / len(scores) if scores else 0.0), scores


def distinct_share(predictions: Sequence[str]) -> float:
    """Distinct captions per image (after tokenisation): 1/n when every image gets the same caption, a language
    prior that can still score CIDEr above an untrained model; image-conditioned captioners score well above."""
    return len({tuple(tokenize(p)) for p in predictions}) / max(1, len(predictions))


def mismatched_cider(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """CIDEr-D of the same captions against another image's references (the set rolled by half its length; the
    IDF is the same corpus's). A captioner that ignores the image scores as well here as against its own
    references; the gap ``cider - cider_mismatched`` is what the image adds."""
    if len(references) < 2:
        return 0.0
    half = len(references) // 2
    return cider_d(candidates, [*references[half:], *references[:half]])[0]


def run_captioning(ctx: EvalContext) -> TaskOutput:
    from vlforge.components.evaluation.plots import plot_caption_samples
    from vlforge.components.evaluation.tasks import TaskOutput

    images = ctx.images()
    predictions = ctx.generate(images, None, max_new_tokens=ctx.recipe.max_text_length)
    references = [[s.caption] for s in ctx.samples]
    cider, per_image = cider_d(predictions, references)
    metrics = {"bleu4": bleu(predictions, references), "cider": cider,
               "caption_exact": sum(p.strip() == r[0].strip() for p, r in zip(predictions, references)) / max(1, len(references)),
               "caption_distinct": distinct_share(predictions), "cider_mismatched": mismatched_cider(predictions, references)}
    rows = {"key": [s.key for s in ctx.samples], "reference": [r[0] for r in references], "prediction": predictions,
            "cider": per_image}
    shown = [(images[i], references[i][0], predictions[i]) for i in range(min(6, len(images)))]
    return TaskOutput(metrics, rows, {"captioning_samples.png": lambda path: plot_caption_samples(shown, path)})
