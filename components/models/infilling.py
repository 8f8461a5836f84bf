"""BART's text-infilling noise (Lewis et al. 2020, section 2.2), shared: text-bart pretrains with it and VLKD's
image-conditioned infilling reuses it.

``text_infilling`` follows fairseq's ``DenoisingDataset.add_whole_word_mask`` with ``mask_length=span-poisson``,
``poisson_lambda=3``, ``mask=0.3``, ``replace_length=1``: span lengths are drawn from Poisson(λ) until they cover
``ceil(ratio · words)`` words (the last one cut to fit), each span starts at a random word and is replaced by a
single ``<mask>``; a zero-length span inserts a ``<mask>``. Spans that touch merge into one ``<mask>`` (never two
masks in a row). Special tokens (``<bos>``, ``<eos>``) and padding are never masked. The noised row keeps the
input's width: an insertion that would overflow it drops the last content token (rare: insertions are ~5% of spans).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def poisson_span_lengths(num_to_mask: int, lam: float, generator: torch.Generator | None) -> list[int]:
    """Poisson(λ) span lengths summing to ``num_to_mask`` (the last one cut to fit), fairseq's rule."""
    lengths: list[int] = []
    total = 0
    while total < num_to_mask:
        draw = torch.poisson(torch.full((max(4, num_to_mask),), float(lam)), generator=generator).long().tolist()
        for n in draw:
            if total + n >= num_to_mask:
                lengths.append(num_to_mask - total)
                total = num_to_mask
                break
            lengths.append(n)
            total += n
    return lengths


def text_infilling(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    mask_id: int,
    pad_id: int,
    special_ids: Iterable[int],
    ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    word_ids: torch.Tensor | None = None,
    full_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[list[tuple[int, int]]]]:
    """Return ``(noised_ids, noised_mask, spans)``: the rows with their spans replaced, and per row the masked spans
    as ``(start, end)`` token positions of the input (``end`` exclusive; ``start == end`` is an insertion).

    ``word_ids`` (B, L): the word of each token (negative for specials), so spans cover whole words; without them
    every token is a word. ``full_mask`` (B,) bool: rows whose whole text becomes one ``<mask>`` (VLKD's captioning
    form of the task)."""
    specials = {int(s) for s in special_ids}
    bsz, length = input_ids.shape
    out = torch.full_like(input_ids, pad_id)
    out_mask = torch.zeros_like(attention_mask)
    all_spans: list[list[tuple[int, int]]] = []
    ids_list = input_ids.tolist()
    att = attention_mask.tolist()
    wid = word_ids.tolist() if word_ids is not None else None
    for b in range(bsz):
        row = ids_list[b]
        content = [i for i in range(length) if att[b][i] and row[i] not in specials and (wid is None or wid[b][i] >= 0)]
        # words: maximal runs of content tokens sharing a word id
        words: list[list[int]] = []
        for i in content:
            if wid is not None and words and words[-1][-1] == i - 1 and wid[b][i] == wid[b][i - 1]:
                words[-1].append(i)
            else:
                words.append([i])
        masked = [False] * length
        insert_before: set[int] = set()  # token positions before which a <mask> is inserted
        spans: list[tuple[int, int]] = []
        if words and full_mask is not None and bool(full_mask[b]):
            for i in content:
                masked[i] = True
        elif words:
            n_words = len(words)
            lengths = poisson_span_lengths(math.ceil(ratio * n_words), poisson_lambda, generator)
            starts = torch.randperm(n_words, generator=generator).tolist()
            for k, span_len in enumerate(lengths):
                start = starts[k % n_words]
                if span_len == 0:
                    insert_before.add(words[start][0])
                    continue
                for w in words[start : start + span_len]:
                    for i in w:
                        masked[i] = True
        # write the noised row; record spans over the input positions
        new: list[int] = []
        prev_mask = False
        run_start = None
        for i in range(length):
            if not att[b][i]:
                continue
            if i in insert_before and not masked[i]:
                if not prev_mask:
                    new.append(mask_id)
                    spans.append((i, i))
                prev_mask = True
            if masked[i]:
                if run_start is None:
                    run_start = i
                if not prev_mask:
                    new.append(mask_id)
                prev_mask = True
                continue
            if run_start is not None:
                spans.append((run_start, i))
                run_start = None
            new.append(row[i])
            prev_mask = False
        if run_start is not None:
            spans.append((run_start, length))
        if len(new) > length:  # only insertions grow a row: drop content before the end token
            new = new[: length - 1] + new[-1:]
        out[b, : len(new)] = torch.tensor(new, dtype=input_ids.dtype)
        out_mask[b, : len(new)] = 1
        all_spans.append(sorted(spans))
    return out, out_mask, all_spans
