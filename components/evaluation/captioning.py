"""Captioning: one caption generated per image, scored against all of that image's references as the COCO caption
evaluation (pycocoevalcap) scores it.

Samples that carry the same image bytes are one image with several references (the COCO protocol: one candidate
per image id, every human caption a reference). The metrics are
``vlforge.components.evaluation.metrics.captioning.caption_metrics``: PTB tokenisation, then BLEU-1..4
(``bleu1``..``bleu4``), ROUGE-L (``rouge_l``), CIDEr-D (``cider``, the headline), each equal to pycocoevalcap's to
1e-4 (``bench/caption_reference_bench.py``), and METEOR (``meteor``) only when pycocoevalcap's METEOR 1.5 jar and
Java are found (``VLFORGE_METEOR_JAR`` or ``.bench-venvs/cocoeval``); without them the key is left out and a
warning says so, since METEOR needs the jar's WordNet and paraphrase data and is never approximated.

Two diagnostics beside them: ``caption_distinct`` (distinct captions per image) tells an image-conditioned
captioner from one that writes the same caption for every image; ``cider_mismatched`` (the captions scored against
another image's references) tells how much of the CIDEr the image earns: a caption that ignores the image scores
about the same there. ``caption_exact`` is the share of captions equal to one of their references."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vlforge.components.evaluation.metrics.captioning import caption_metrics, cider_d, meteor_jar, ptb_tokenize

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

log = logging.getLogger(__name__)


def distinct_share(predictions: Sequence[str]) -> float:
    """Distinct captions per image (after tokenisation): 1/n when every image gets the same caption, a language
    prior that can still score CIDEr above an untrained model; image-conditioned captioners score well above."""
    return len({ptb_tokenize(p) for p in predictions}) / max(1, len(predictions))


def mismatched_cider(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """CIDEr-D of the same captions against another image's references (the set rolled by half its length; the
    IDF is the same corpus's). A captioner that ignores the image scores as well here as against its own
    references; the gap ``cider - cider_mismatched`` is what the image adds."""
    if len(references) < 2:
        return 0.0
    half = len(references) // 2
    cands = [ptb_tokenize(c) for c in candidates]
    refs = [[ptb_tokenize(r) for r in rs] for rs in references]
    return cider_d(cands, [*refs[half:], *refs[:half]])[0]


def group_by_image(images: Sequence[bytes], captions: Sequence[str]) -> list[tuple[int, list[str]]]:
    """(index of the image's first sample, all its captions) per distinct image, in order of first appearance."""
    groups: dict[str, tuple[int, list[str]]] = {}
    for i, (image, caption) in enumerate(zip(images, captions)):
        groups.setdefault(hashlib.sha1(image).hexdigest(), (i, []))[1].append(caption)
    return list(groups.values())


def run_captioning(ctx: EvalContext) -> TaskOutput:
    from vlforge.components.evaluation.plots import plot_caption_samples
    from vlforge.components.evaluation.tasks import TaskOutput

    groups = group_by_image([s.image for s in ctx.samples], [s.caption for s in ctx.samples])
    all_images = ctx.images()
    images = [all_images[i] for i, _ in groups]
    references = [refs for _, refs in groups]
    predictions = ctx.generate(images, None, max_new_tokens=ctx.recipe.max_text_length)
    jar = meteor_jar()
    if jar is None:
        log.warning("captioning: no METEOR (pycocoevalcap's meteor-1.5.jar and java are needed: set "
                    "VLFORGE_METEOR_JAR or run bench/caption_reference_bench.py once); the meteor key is left out")
    metrics, per_image = caption_metrics(predictions, references, jar)
    metrics.update({
        "caption_exact": sum(p.strip() in {r.strip() for r in refs} for p, refs in zip(predictions, references))
        / max(1, len(references)),
        "caption_distinct": distinct_share(predictions),
        "cider_mismatched": mismatched_cider(predictions, references),
    })
    rows = {"key": [ctx.samples[i].key for i, _ in groups], "reference": [r[0] for r in references],
            "references": references, "prediction": predictions, **per_image}
    shown = [(images[i], references[i][0], predictions[i]) for i in range(min(6, len(images)))]
    return TaskOutput(metrics, rows, {"captioning_samples.png": lambda path: plot_caption_samples(shown, path)})
