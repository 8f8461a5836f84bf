"""Image<->text retrieval recall@k with several captions per image, as CLIP_benchmark defines it.

Reference: LAION-AI/CLIP_benchmark, ``clip_benchmark/metrics/zeroshot_retrieval.py`` (``evaluate`` and
``recall_at_k``). What is matched there:

* both embedding sets are L2-normalised (``F.normalize``, eps 1e-12) and scored by ``text @ image.T``;
* image->text R@k ("text_retrieval_recall@k" there) is 1 for an image when ANY of its captions is among the
  image's top k texts, averaged over all images; an image with no caption counts as a miss (the reference's
  0/0 = nan fails its ``> 0`` test) and stays in the denominator;
* text->image R@k ("image_retrieval_recall@k" there) is 1 for a caption when its image is among the
  caption's top k images, averaged over all captions;
* the top k are chosen by ``torch.topk``, so ties between equal scores are broken the way torch breaks them.

One deliberate difference: ``torch.topk`` raises when k exceeds the number of candidates; here k is clipped
to it (every candidate is retrieved, so R@k is 1 wherever a positive exists)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

KS = (1, 5, 10)


def _as_matrix(x: torch.Tensor | Sequence, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (rows, D) matrix, got shape {tuple(t.shape)}")
    return t if t.is_floating_point() else t.float()


def _hits_at_k(scores: torch.Tensor, positive: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of ``scores`` (queries x candidates): whether any of its top-k candidates is a positive."""
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices
    return positive.gather(1, top).any(dim=1)


def zeroshot_retrieval_metrics(
    image_emb: torch.Tensor | Sequence,
    text_emb: torch.Tensor | Sequence,
    text_to_image: torch.Tensor | Sequence[int],
    ks: Sequence[int] = KS,
    *,
    normalize: bool = True,
) -> dict[str, float]:
    """Recall@k both ways for ``image_emb`` (N, D), ``text_emb`` (T, D) and ``text_to_image`` (T,), the index
    of each caption's image. Returns ``i2t_r{k}`` and ``t2i_r{k}`` for each k in ``ks``, fractions in [0, 1].

    ``normalize=False`` skips the L2 normalisation (for embeddings that are normalised already, or scores
    that are meant to be raw dot products)."""
    images = _as_matrix(image_emb, "image_emb")
    texts = _as_matrix(text_emb, "text_emb")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"image_emb has dimension {images.shape[1]} but text_emb has {texts.shape[1]}")
    index = torch.as_tensor(text_to_image)
    if index.dim() != 1 or index.shape[0] != texts.shape[0]:
        raise ValueError(f"text_to_image must have one entry per caption ({texts.shape[0]}), got shape {tuple(index.shape)}")
    if index.is_floating_point() or index.dtype == torch.bool:
        raise ValueError("text_to_image must hold integer image indices")
    index = index.long()
    n_images = images.shape[0]
    if bool((index < 0).any()) or bool((index >= n_images).any()):
        raise ValueError(f"text_to_image indices must lie in [0, {n_images})")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {list(ks)}")
    if normalize:
        images = F.normalize(images, dim=-1)
        texts = F.normalize(texts, dim=-1)
    scores = texts @ images.t()  # (T, N), as the reference
    positive = torch.zeros(scores.shape, dtype=torch.bool)
    positive[torch.arange(scores.shape[0]), index] = True
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"i2t_r{int(k)}"] = float(_hits_at_k(scores.t(), positive.t(), int(k)).float().mean())
    for k in ks:
        metrics[f"t2i_r{int(k)}"] = float(_hits_at_k(scores, positive, int(k)).float().mean())
    return metrics
