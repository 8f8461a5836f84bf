"""Heads and negative sampling shared by the fusion families' image-text matching (ITM) objective.

``ITMHead`` is ViLT's and VLMo's ``Linear(hidden, 2)`` on the pooled [CLS] state (class 1 = matched pair).
``sample_negatives`` picks, for every row of a batch, another row to pair it with: uniformly (ViLT: a random
image swapped in) or ``hard`` (VLMo's ``compute_itm_hardneg``: drawn ∝ softmax of the ITC similarities with the
positive excluded). Pairs that are the same sample (the diagonal, or rows with the same key) are never drawn."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class ITMHead(nn.Module):
    """Binary matched / not-matched classifier on the pooled fusion state."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)


def same_sample_mask(keys: list[str], device: torch.device | None = None) -> torch.Tensor:
    """(B, B) bool: True where two rows carry the same sample key (the diagonal included)."""
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    ids = torch.tensor([index[k] for k in keys], device=device)
    return ids[:, None] == ids[None, :]


def not_negative_mask(keys: Sequence[str], captions: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
    """(B, B) bool: True where row j cannot be a negative for row i: the same sample key, or the same caption
    (whitespace and case aside). Two scenes captioned alike are both matched by either caption, so pairing one's
    image with the other's caption as a "mismatch" would teach the matching head noise (ALBEF and BLIP leave out
    other captions of the same image the same way)."""
    norm = [" ".join(c.lower().split()) for c in captions]
    index = {c: i for i, c in enumerate(dict.fromkeys(norm))}
    ids = torch.tensor([index[c] for c in norm], device=device)
    return same_sample_mask(list(keys), device) | (ids[:, None] == ids[None, :])


def sample_negatives(
    sim: torch.Tensor,
    mode: Literal["random", "hard"],
    forbid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """For each row i of the (B, M) score matrix ``sim``, the column of a negative partner, or -1 where none exists.

    ``random``: uniform over the allowed columns (``sim`` only gives the shape). ``hard``: ∝ ``softmax(sim[i])``
    over the allowed columns. Forbidden: the diagonal (when square) and ``forbid`` (e.g. ``same_sample_mask``)."""
    rows, cols = sim.shape
    banned = torch.zeros((rows, cols), dtype=torch.bool, device=sim.device)
    if rows == cols:
        banned |= torch.eye(rows, dtype=torch.bool, device=sim.device)
    if forbid is not None:
        banned |= forbid.to(sim.device, torch.bool)
    if mode == "random":
        weights = torch.ones((rows, cols), device=sim.device)
    elif mode == "hard":
        weights = torch.softmax(sim.detach().float(), dim=1)
    else:
        raise ValueError(f"unknown negative sampling mode '{mode}' (random or hard)")
    weights = weights.masked_fill(banned, 0.0)
    has_any = (~banned).any(dim=1)
    # a row whose allowed weights all underflow to 0 still gets a uniform draw over its allowed columns
    weights = torch.where((weights.sum(dim=1, keepdim=True) > 0), weights, (~banned).float())
    weights[~has_any] = 1.0  # placeholder so multinomial accepts the row; its result is replaced by -1
    draw_on = generator.device if generator is not None else weights.device
    picked = torch.multinomial(weights.to(draw_on), 1, generator=generator).squeeze(1).to(sim.device)
    return torch.where(has_any, picked, torch.full_like(picked, -1))


class TiedLMHead(nn.Module):
    """BERT's prediction head (dense, GELU, LayerNorm, decoder with its own bias); the caller ties ``decoder.weight``
    to the word embeddings. Used for MLM and for seq2seq LM by the families built on a BERT-style encoder."""

    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(F.gelu(self.dense(x))))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``hidden`` (B, L, D) over the positions ``attention_mask`` keeps."""
    mask = attention_mask.to(hidden.dtype)[..., None]
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
