"""UNIMO's hard-negative text rewriting for any caption, done by the model's own MLM head (no facts, no parser).

UNIMO (Li et al., 2021) rewrites a caption at three levels to make hard negatives: sentence (the whole caption
changed), phrase and word (one part of its scene graph changed). Without a scene-graph parser, the content words
stand in for the graph's objects, attributes and relations: a content word is a word none of whose tokens is a
special token, that has a letter or digit, and that is not a stop word (``STOP_WORDS``). Per level, the chosen
content words' tokens are masked and refilled, all at once, by one no-grad pass of the model's MLM head, each with
its top prediction other than the original token (special tokens, punctuation and stop words are never
predicted; a token is replaced only by one of the same word-boundary shape, ``token_shapes``, so the words stay
the caption's words), so a rewrite always differs from the caption and differs only at content words:

- ``word``: one content word;
- ``phrase``: the content words of 2-3 consecutive words, at least two of them content words;
- ``sentence``: half of the caption's content words (rounded up), at least three.

A level the caption is too short for (e.g. ``phrase`` on a one-word caption) gives no rewrite. The choices draw
from a ``random.Random`` the caller seeds; the predictions depend only on the weights (the caller runs the model in
eval mode), so a step's rewrites are deterministic. The rewrites are negatives only: UNIMO's positives are
back-translated paraphrases, which need a translation model this project does not have (the related captions
retrieved by ``memory.py`` are this route's extra positives)."""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

LEVELS: tuple[str, ...] = ("word", "phrase", "sentence")
SENTENCE_SHARE = 0.5  # of the content words, for a sentence-level rewrite
STOP_WORDS = frozenset(
    "a an the and or but nor of to in on at by for with without from as into onto than then so if is are was were "
    "be been being am it its this that these those there here his her hers he she him they them their we us our you "
    "your i me my not no yes do does did has have had will would can could should may might must".split())


@dataclass(frozen=True)
class ModelRewrite:
    """Caption ``row``'s token ids with the tokens at ``positions`` refilled by the MLM head."""

    row: int
    ids: list[int]
    positions: tuple[int, ...]
    level: str
    text: str


def _is_content(text: str) -> bool:
    text = text.strip().lower()
    return any(c.isalnum() for c in text) and text not in STOP_WORDS


def caption_words(ids: Sequence[int], word_ids: Sequence[int] | None, special: set[int], tokenizer: Any) -> list[tuple[list[int], bool]]:
    """The caption's words in order, each as (token positions, whether it is a content word). ``word_ids``: the
    word of each token (negative for specials and padding; None: every token is a word)."""
    groups: dict[int, list[int]] = {}
    for p, t in enumerate(ids):
        w = p if word_ids is None else int(word_ids[p])
        if w >= 0 and t not in special:
            groups.setdefault(w, []).append(p)
        elif w >= 0:
            groups.setdefault(w, []).append(-1)  # a special token inside a word makes it no content word
    out = []
    for positions in groups.values():
        if -1 in positions:
            out.append(([p for p in positions if p >= 0], False))
        else:
            out.append((positions, _is_content(tokenizer.decode([ids[p] for p in positions]))))
    return out


def choose_positions(words: list[tuple[list[int], bool]], level: str, rng: random.Random) -> list[int] | None:
    """The token positions a ``level`` rewrite refills (see the module docstring), or None where it cannot."""
    content = [i for i, (_, c) in enumerate(words) if c]
    if level == "word":
        chosen = [content[int(rng.random() * len(content))]] if content else []
    elif level == "phrase":
        spans = [(s, n) for n in (2, 3) for s in range(len(words) - n + 1) if sum(c for _, c in words[s:s + n]) >= 2]
        if not spans:
            return None
        s, n = spans[int(rng.random() * len(spans))]
        chosen = [i for i in range(s, s + n) if words[i][1]]
    elif level == "sentence":
        if len(content) < 3:
            return None
        chosen = sorted(rng.sample(content, max(3, math.ceil(SENTENCE_SHARE * len(content)))))
    else:
        raise ValueError(f"unknown rewrite level '{level}' (known: {', '.join(LEVELS)})")
    return [p for i in chosen for p in words[i][0]] or None


@lru_cache(maxsize=8)
def never_predicted(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bool: tokens a rewrite never writes (specials, punctuation, stop words, ids past the
    tokenizer's vocabulary)."""
    n = min(len(tokenizer), vocab_size)
    banned = torch.ones(vocab_size, dtype=torch.bool)
    banned[:n] = torch.tensor([not _is_content(t) for t in tokenizer.batch_decode([[i] for i in range(n)])])
    banned[[i for i in tokenizer.all_special_ids if i < vocab_size]] = True
    return banned


@lru_cache(maxsize=8)
def token_shapes(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) int: each token's word-boundary shape, as bits: a continuation (WordPiece ``##x``), a word end
    (BPE ``x</w>``), a word start (byte-level ``Ġx``, SentencePiece ``▁x``). A word-end token refilled with a
    word-inner one would glue two words together."""
    n = min(len(tokenizer), vocab_size)
    shapes = torch.zeros(vocab_size, dtype=torch.long)
    shapes[:n] = torch.tensor([int(t.startswith("##")) | int(t.endswith("</w>")) << 1 | int(t.startswith(("Ġ", "▁"))) << 2
                               for t in tokenizer.convert_ids_to_tokens(list(range(n)))])
    return shapes


Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (ids, mask, where) -> logits at where


@torch.no_grad()
def mlm_rewrites(predict: Predict, tokenizer: Any, ids: torch.Tensor, mask: torch.Tensor, word_ids: torch.Tensor | None,
                 rngs: Sequence[random.Random], levels: Sequence[str], mask_id: int, special: set[int],
                 vocab_size: int) -> list[list[ModelRewrite]]:
    """Each caption's rewrites, one per level it allows (``ids``/``mask``: (B, L) captions; ``rngs``: one per
    caption; ``predict(masked ids, mask, where)``: the MLM logits at the True positions of ``where``, row-major).
    A rewrite whose text equals the caption's or an earlier level's is dropped."""
    plans: list[tuple[int, str, list[int]]] = []
    for r in range(ids.shape[0]):
        row = ids[r][mask[r].bool()].tolist()
        words = caption_words(row, None if word_ids is None else word_ids[r][: len(row)].tolist(), special, tokenizer)
        for level in levels:
            positions = choose_positions(words, level, rngs[r])
            if positions is not None:
                plans.append((r, level, positions))
    out: list[list[ModelRewrite]] = [[] for _ in range(ids.shape[0])]
    if not plans:
        return out
    rows = torch.tensor([r for r, _, _ in plans], device=ids.device)
    masked, where = ids[rows].clone(), torch.zeros(len(plans), ids.shape[1], dtype=torch.bool, device=ids.device)
    for j, (_, _, positions) in enumerate(plans):
        where[j, positions] = True
    original = masked[where]
    masked[where] = mask_id
    logits = predict(masked, mask[rows], where).float()
    logits[:, never_predicted(tokenizer, vocab_size).to(logits.device)] = float("-inf")
    shapes = token_shapes(tokenizer, vocab_size).to(logits.device)
    logits[shapes[None] != shapes[original][:, None]] = float("-inf")
    logits[torch.arange(len(original), device=logits.device), original] = float("-inf")
    best = logits.argmax(dim=-1)
    fillable = torch.isfinite(logits.max(dim=-1).values)
    filled = ids[rows].clone()
    filled[where] = torch.where(fillable, best, original)
    done = 0
    for j, (r, level, positions) in enumerate(plans):
        ok = bool(fillable[done: done + len(positions)].all())
        done += len(positions)
        new = filled[j][mask[r].bool()].tolist()
        text = tokenizer.decode(new, skip_special_tokens=True).strip()
        seen = {tokenizer.decode(ids[r][mask[r].bool()].tolist(), skip_special_tokens=True).strip(),
                *(w.text for w in out[r])}
        if ok and text not in seen:
            out[r].append(ModelRewrite(r, filled[j].tolist(), tuple(positions), level, text))
    return out
