"""Attention masks shared by the families that switch one transformer between modes (UNIMO; any prefix LM).

``seq2seq_attention_mask`` is the UniLM-style 3-D attention mask UNIMO uses to switch one transformer between its
bidirectional mode (MLM, contrastive encodings) and its sequence-to-sequence mode (generation): over a sequence
``[image tokens ; text tokens]``, the *source* (every image token and the first ``source_len`` text tokens) is
attended bidirectionally by everyone, and the *target* (the remaining text tokens) only by target tokens at or
after it (causal). Source tokens never see the target. BlindPrompt's and any prefix-LM's masks are the same
construction. ``to_attention_bias`` adapts the boolean mask to the attention implementation in use."""
from __future__ import annotations

import torch


def seq2seq_attention_mask(
    image_valid: torch.Tensor | None,
    text_valid: torch.Tensor | None,
    source_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean ``(B, T, T)`` mask, True where query ``q`` may attend to key ``k``, for ``[image ; text]`` sequences.

    ``image_valid`` (B, Ni) / ``text_valid`` (B, Lt): which positions exist (either may be None: no such segment).
    ``source_len`` (B,): how many text tokens belong to the source; None (or a value >= Lt) makes the row fully
    bidirectional. Padding is never attended to; every position may attend to itself, so no softmax row is empty."""
    parts = [x for x in (image_valid, text_valid) if x is not None]
    if not parts:
        raise ValueError("seq2seq_attention_mask needs an image or a text segment")
    bsz, device = parts[0].shape[0], parts[0].device
    n_img = 0 if image_valid is None else image_valid.shape[1]
    n_txt = 0 if text_valid is None else text_valid.shape[1]
    key_valid = torch.cat([p.bool() for p in parts], dim=1)  # (B, T)
    # text index of every position; image positions get -1, so they always fall in the source
    tpos = torch.cat([torch.full((n_img,), -1, device=device), torch.arange(n_txt, device=device)])
    src = torch.full((bsz,), n_txt, device=device) if source_len is None else source_len.to(device).clamp(max=n_txt)
    is_target = tpos[None, :] >= src[:, None]  # (B, T)
    causal = tpos[None, :, None] >= tpos[None, None, :]  # (1, Tq, Tk): key at or before the query
    allowed = key_valid[:, None, :] & (~is_target[:, None, :] | (is_target[:, :, None] & causal))
    return allowed | torch.eye(n_img + n_txt, dtype=torch.bool, device=device)[None]


def to_attention_bias(mask: torch.Tensor, implementation: str | None, dtype: torch.dtype) -> torch.Tensor:
    """``(B, T, T)`` boolean mask -> the ``(B, 1, T, T)`` form a ``transformers`` attention function takes: boolean
    for SDPA (whatever dtype autocast gives the queries), additive (0 / dtype min) for the eager implementation."""
    mask = mask[:, None]
    if implementation in (None, "sdpa"):
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
