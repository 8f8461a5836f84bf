"""Zero-shot image<->text retrieval, R@1/5/10 both ways (the CLIP/ALIGN protocol on Flickr30K/COCO).

A dataset with several captions per image (a benchmark layout: ``captions`` on its samples) is scored as
CLIP_benchmark scores it (``metrics.zeroshot_retrieval_metrics``): an image is a hit at k when any of its
captions is in its top k, and every caption ranks the images. A dataset with one caption per image merges
identical captions before ranking: when several images share a caption (a small grammar, or a web caption like
"stock photo"), retrieving any of those images for the caption, or that caption for any of them, is a hit.
Without the merge a model would be punished for ties the data cannot break. Both report ``i2t_r{k}`` and
``t2i_r{k}``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

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


def sample_captions(ctx: EvalContext) -> list[list[str]]:
    """Each sample's captions: its ``captions`` (a benchmark layout's several), else its one caption."""
    return [list(s.meta.get("captions") or [s.caption]) for s in ctx.samples]


def several_captions_result(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: list[int]) -> RetrievalResult:
    """CLIP_benchmark's R@k for several captions per image, with each image's rank (of its best caption among
    all captions) and each caption's rank (of its image among all images); ties counted as a hit, like
    ``retrieval_metrics``."""
    from vlforge.components.evaluation.metrics import zeroshot_retrieval_metrics

    metrics = zeroshot_retrieval_metrics(image_emb, text_emb, text_to_image, KS)
    sims = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).t()  # (N, T)
    n, t = sims.shape
    owner = torch.tensor(text_to_image, dtype=torch.long)
    positive = owner[None, :] == torch.arange(n)[:, None]
    best_own = sims.masked_fill(~positive, float("-inf")).max(dim=1).values
    image_rank = (sims > best_own[:, None]).sum(dim=1)
    caption_rank = (sims.t() > sims[owner, torch.arange(t)][:, None]).sum(dim=1)
    metrics["i2t_chance_r1"] = float(positive.sum(dim=1).float().mean() / t)
    metrics["t2i_chance_r1"] = 1.0 / n
    metrics["images"] = float(n)
    metrics["captions"] = float(t)
    return RetrievalResult(metrics, image_rank.tolist(), caption_rank.tolist())


def run_retrieval(ctx: EvalContext) -> TaskOutput:
    """The retrieval task over a split: each image against the split's unique captions, or against all captions
    where images have several."""
    from vlforge.components.evaluation.plots import (
        plot_retrieval,
        plot_retrieval_examples,
    )
    from vlforge.components.evaluation.tasks import TaskOutput

    per_sample = sample_captions(ctx)
    several = any(len(c) > 1 for c in per_sample)
    image_emb = ctx.image_embeddings()
    if several:
        texts = [c for caps in per_sample for c in caps]
        owner = [i for i, caps in enumerate(per_sample) for _ in caps]
        text_emb = ctx.embed_texts(texts)
        result = several_captions_result(image_emb, text_emb, owner)
        best: dict[int, int] = {}
        for j, i in enumerate(owner):
            best[i] = min(best.get(i, len(per_sample)), result.caption_rank[j])
        t2i_rank = [best[i] for i in range(len(per_sample))]
    else:
        texts, ids = unique_captions([c[0] for c in per_sample])
        text_emb = ctx.embed_texts(texts)
        result = retrieval_metrics(image_emb, text_emb, ids)
        t2i_rank = [result.caption_rank[i] for i in ids]
    top5 = (image_emb @ text_emb.t()).topk(min(5, len(texts)), dim=1).indices.tolist()
    rows = {"key": [s.key for s in ctx.samples], "caption": [c[0] for c in per_sample],
            **({"captions": per_sample} if several else {}), "i2t_rank": result.image_rank, "t2i_rank": t2i_rank,
            "i2t_top5": [[texts[j] for j in row] for row in top5]}
    examples = [(ctx.images()[i], per_sample[i][0], [texts[j] for j in top5[i]]) for i in range(min(4, len(per_sample)))]
    return TaskOutput(result.metrics, rows, {
        "retrieval.png": lambda path: plot_retrieval(result.metrics, path),
        "retrieval_examples.png": lambda path: plot_retrieval_examples(examples, path),
    })
