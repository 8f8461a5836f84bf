"""Zero-shot image<->text retrieval, R@1/5/10 both ways (the CLIP/ALIGN protocol on Flickr30K/COCO).

Identical captions are merged before ranking: when several images share a caption (a small grammar, or a
web caption like "stock photo"), retrieving any of those images for the caption, or that caption for any of
them, is a hit. Without the merge a model would be punished for ties the data cannot break."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

KS = (1, 5, 10)


@dataclass
class RetrievalResult:
    metrics: dict[str, float]
    image_rank: list[int]  # per image: rank of its caption among unique captions (0 = first)
    caption_rank: list[int]  # per unique caption: rank of the first matching image


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, image_caption_ids: list[int]) -> RetrievalResult:
    """``image_emb`` (N, D), ``text_emb`` (U, D) for U unique captions, ``image_caption_ids[i]`` in [0, U)."""
    sims = image_emb @ text_emb.t()  # (N, U)
    n, u = sims.shape
    gt = torch.tensor(image_caption_ids, dtype=torch.long)
    # i2t: rank of the true caption = number of captions scoring strictly higher
    true_scores = sims[torch.arange(n), gt]
    image_rank = (sims > true_scores[:, None]).sum(dim=1)
    # t2i: for each caption, rank of its best-scoring matching image among all images
    match = torch.zeros(n, u, dtype=torch.bool)
    match[torch.arange(n), gt] = True
    sims_t = sims.t()  # (U, N)
    best_true = sims_t.masked_fill(~match.t(), float("-inf")).max(dim=1).values
    caption_rank = (sims_t > best_true[:, None]).sum(dim=1)
    metrics: dict[str, float] = {}
    for k in KS:
        metrics[f"i2t_r{k}"] = float((image_rank < k).float().mean())
        metrics[f"t2i_r{k}"] = float((caption_rank < k).float().mean())
    metrics["i2t_chance_r1"] = 1.0 / u
    metrics["t2i_chance_r1"] = float(match.sum(dim=0).float().mean() / n)
    metrics["images"] = float(n)
    metrics["unique_captions"] = float(u)
    return RetrievalResult(metrics, image_rank.tolist(), caption_rank.tolist())


def unique_captions(captions: list[str]) -> tuple[list[str], list[int]]:
    """Unique captions in first-seen order, and each caption's index into them."""
    index: dict[str, int] = {}
    ids = [index.setdefault(c, len(index)) for c in captions]
    return list(index), ids


def run_retrieval(ctx: EvalContext) -> TaskOutput:
    """The retrieval task over a split: each image against the split's unique captions."""
    from vlforge.components.evaluation.plots import (
        plot_retrieval,
        plot_retrieval_examples,
    )
    from vlforge.components.evaluation.tasks import TaskOutput

    captions = [s.caption for s in ctx.samples]
    uniq, ids = unique_captions(captions)
    image_emb = ctx.image_embeddings()
    text_emb = ctx.embed_texts(uniq)
    result = retrieval_metrics(image_emb, text_emb, ids)
    top5 = (image_emb @ text_emb.t()).topk(min(5, len(uniq)), dim=1).indices.tolist()
    rows = {"key": [s.key for s in ctx.samples], "caption": captions, "i2t_rank": result.image_rank,
            "t2i_rank": [result.caption_rank[i] for i in ids], "i2t_top5": [[uniq[j] for j in row] for row in top5]}
    examples = [(ctx.images()[i], captions[i], [uniq[j] for j in top5[i]]) for i in range(min(4, len(captions)))]
    return TaskOutput(result.metrics, rows, {
        "retrieval.png": lambda path: plot_retrieval(result.metrics, path),
        "retrieval_examples.png": lambda path: plot_retrieval_examples(examples, path),
    })
