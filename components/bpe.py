"""A deterministic subword trainer (BPE merges) for the tokenizer stage.

``tokenizers``' own trainers assign the initial alphabet's ids in hash-map order, and merge ties are broken by
those ids, so two trainings on the same captions give different tokenizers (checked: three runs, three
``tokenizer.json`` hashes). A reproducible DAG needs the same tokenizer every time, so the merges are learned
here with a total order — highest pair count first, then the lexicographically smallest pair — and handed to
``tokenizers.models.BPE`` / ``WordPiece``, which do the encoding. Pair counts are updated incrementally (only the
words containing the merged pair are touched), which keeps it fast for caption vocabularies."""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable


def _symbols(word: str, suffix: str, prefix: str) -> tuple[str, ...]:
    if suffix:
        return (*word[:-1], word[-1] + suffix)
    return (word[0], *(prefix + c for c in word[1:]))


def learn_merges(
    words: Iterable[str],
    vocab_size: int,
    specials: list[str],
    min_frequency: int = 1,
    end_of_word_suffix: str = "",
    continuing_prefix: str = "",
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn a vocabulary (token -> id: specials, then the alphabet by (-count, symbol), then merged tokens in merge
    order) and the ordered merges. Exactly one of ``end_of_word_suffix`` (BPE, CLIP-style ``</w>``) or
    ``continuing_prefix`` (WordPiece ``##``) marks word boundaries."""
    join: Callable[[str, str], str] = (lambda a, b: a + b[len(continuing_prefix):]) if continuing_prefix else (lambda a, b: a + b)
    counts = Counter(w for w in words if w)
    entries = sorted(counts.items(), key=lambda kv: kv[0])
    seqs = [list(_symbols(w, end_of_word_suffix, continuing_prefix)) for w, _ in entries]
    freqs = [c for _, c in entries]

    alphabet: Counter[str] = Counter()
    for seq, f in zip(seqs, freqs):
        for s in seq:
            alphabet[s] += f
    vocab: dict[str, int] = {}
    for tok in [*specials, *sorted(alphabet, key=lambda s: (-alphabet[s], s))]:
        vocab.setdefault(tok, len(vocab))

    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, (seq, f) in enumerate(zip(seqs, freqs)):
        for pair in zip(seq, seq[1:]):
            pair_counts[pair] += f
            where[pair].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:  # stale heap entry
            continue
        if -neg < min_frequency:
            break
        merged = join(*pair)
        merges.append(pair)
        vocab.setdefault(merged, len(vocab))
        touched: Counter[tuple[str, str]] = Counter()
        for i in sorted(where.pop(pair, ())):
            seq, f = seqs[i], freqs[i]
            for p in zip(seq, seq[1:]):
                touched[p] -= f
            out, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and (seq[j], seq[j + 1]) == pair:
                    out.append(merged)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
            for p in zip(out, out[1:]):
                touched[p] += f
                where[p].add(i)
        for p, delta in touched.items():
            if delta:
                pair_counts[p] += delta
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], p))
                else:
                    pair_counts.pop(p, None)
        pair_counts.pop(pair, None)
    return vocab, merges
