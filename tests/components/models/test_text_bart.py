"""text-bart: the BART-base parameter count, and that text infilling replaces whole-word Poisson spans by one <mask>."""
import itertools
import math

import pytest
import torch
from conftest import SPECIALS, paper_size_model, parameter_count
from vlforge.components.models.registry import ImageTextBatch, get_family
from vlforge.components.models.text_bart.family import decoder_labels
from vlforge.components.models.infilling import (
    poisson_span_lengths,
    text_infilling,
)

SPECIAL_SET = set(SPECIALS.values())


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bart_base_parameter_count() -> None:
    # BART-base: 140M in Lewis et al. 2020 (fairseq's bart.base listing); the released model has 139,420,416
    # parameters with the 50,265-token vocabulary, counting the tied input/output embedding table once and the
    # 1,026 x 768 learned positions of encoder and decoder (final_logits_bias is a buffer, not counted).
    model = paper_size_model("text-bart", 50265)
    count = parameter_count(model)
    assert count == 139_420_416
    assert abs(count - 140_000_000) / 140_000_000 < 0.01
    assert model.lm_head.weight is model.model.shared.weight  # tied, as in BART


def _rows(n_rows: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``<bos> w1 .. wn <eos> <pad>..`` of distinct content ids (so each noised row has one reading)."""
    ids = torch.zeros(n_rows, length, dtype=torch.long)
    for r in range(n_rows):
        n = int(torch.randint(1, length - 1, (1,), generator=gen))
        ids[r, 0], ids[r, n + 1] = 3, 4
        ids[r, 1 : n + 1] = torch.randperm(200, generator=gen)[:n] + 10
    return ids, (ids != 0).long()


def _apply_spans(row: list[int], spans: list[tuple[int, int]]) -> list[int]:
    out, i = [], 0
    for start, end in spans:
        out += row[i:start] + [SPECIALS["mask"]]
        i = end
    return out + row[i:]


def test_infilling_replaces_each_span_by_one_mask() -> None:
    gen = torch.Generator().manual_seed(0)
    ids, mask = _rows(64, 24, gen)
    masked_share = []
    for seed in range(10):
        noised, noised_mask, spans = text_infilling(ids, mask, mask_id=2, pad_id=0, special_ids=SPECIAL_SET,
                                                    generator=torch.Generator().manual_seed(seed))
        assert noised.shape == ids.shape
        for r in range(ids.shape[0]):
            real = [t for t, m in zip(ids[r].tolist(), mask[r].tolist()) if m]
            got = [t for t, m in zip(noised[r].tolist(), noised_mask[r].tolist()) if m]
            assert got == _apply_spans(ids[r].tolist(), spans[r])[: len(got)]  # exactly the spans, nothing else
            assert got[0] == 3 and got[-1] == 4  # specials are never masked
            assert all(not (a == b == 2) for a, b in itertools.pairwise(got))  # one <mask> per (merged) span
            covered = sum(e - s for s, e in spans[r])
            n = len(real) - 2
            assert 1 <= covered <= math.ceil(0.3 * n)  # the span lengths sum to ceil(30%); overlaps cover less
            assert all(1 <= s and e <= len(real) - 1 for s, e in spans[r])
            masked_share.append((covered / n, math.ceil(0.3 * n) / n))
    covered_mean = sum(c for c, _ in masked_share) / len(masked_share)
    target_mean = sum(t for _, t in masked_share) / len(masked_share)  # ceil(30%): above 0.3 on short rows
    assert 0.85 * target_mean < covered_mean <= target_mean  # overlapping spans lose a little


def test_spans_cover_whole_words_and_full_mask() -> None:
    ids = torch.tensor([[3, 10, 11, 12, 13, 14, 15, 16, 17, 4, 0, 0]])
    mask = (ids != 0).long()
    words = torch.tensor([[-1, 0, 0, 1, 1, 1, 2, 3, 3, -1, -1, -1]])
    for seed in range(20):
        _, _, spans = text_infilling(ids, mask, mask_id=2, pad_id=0, special_ids=SPECIAL_SET, word_ids=words,
                                     generator=torch.Generator().manual_seed(seed))
        for s, e in spans[0]:
            if e > s:  # a span starts and ends on word boundaries
                assert s == 0 or words[0, s] != words[0, s - 1]
                assert words[0, e] != words[0, e - 1]
    full, full_mask, _ = text_infilling(ids, mask, mask_id=2, pad_id=0, special_ids=SPECIAL_SET,
                                        full_mask=torch.tensor([True]))
    assert full[0, :3].tolist() == [3, 2, 4] and full_mask[0].sum() == 3


def test_poisson_lengths_sum_to_target_and_are_deterministic() -> None:
    a = poisson_span_lengths(9, 3.0, torch.Generator().manual_seed(1))
    b = poisson_span_lengths(9, 3.0, torch.Generator().manual_seed(1))
    assert a == b and sum(a) == 9 and all(n >= 0 for n in a)
    draws = [n for s in range(200) for n in poisson_span_lengths(50, 3.0, torch.Generator().manual_seed(s))[:-1]]
    assert abs(sum(draws) / len(draws) - 3.0) < 0.2  # Poisson(3) mean, the last (cut) span left out


def test_decoder_reconstructs_the_caption_and_images_are_ignored() -> None:
    family = get_family("text-bart")
    recipe = family.recipe("tiny", {"max_text_length": 12, "d_model": 32, "ffn_dim": 64})
    torch.manual_seed(0)
    model = family.build_model(recipe, 256, SPECIALS).eval()
    ids, mask = _rows(4, 12, torch.Generator().manual_seed(3))
    labels = decoder_labels(ids, mask)
    assert torch.equal(labels[mask.bool()], ids[mask.bool()]) and (labels[~mask.bool()] == -100).all()

    def loss(pixels: torch.Tensor) -> torch.Tensor:
        batch = ImageTextBatch(pixels, ids, mask, [""] * 4, [f"k{i}" for i in range(4)], step=5)
        with torch.no_grad():
            return family.training_step(model, batch, recipe)["loss"]

    assert torch.equal(loss(torch.zeros(4, 3, 8, 8)), loss(torch.randn(4, 3, 8, 8)))
