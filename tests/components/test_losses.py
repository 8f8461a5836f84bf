import pytest
import torch
import torch.nn.functional as F
from vlforge.components.losses import info_nce


def test_info_nce_is_clip_loss() -> None:
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    logits = 10.0 * img @ txt.t()
    target = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    assert torch.allclose(info_nce(img, txt, 10.0), expected)
    # the diagonal as an explicit positive mask gives the same loss
    assert torch.allclose(info_nce(img, txt, 10.0, pos_mask=torch.eye(6, dtype=torch.bool)), expected, atol=1e-6)


def test_multi_positive_and_perfect_alignment() -> None:
    x = F.normalize(torch.eye(4), dim=-1)
    assert info_nce(x, x, 100.0) < 1e-3  # aligned pairs, sharp temperature -> ~0
    assert info_nce(x, x.flip(0), 100.0) > 10  # every pair wrong -> large
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = mask[0, 1] = True  # row 0 has two positives; the other rows have none (ignored)
    sims = 5.0 * (x @ x.t())
    expected_row0 = torch.logsumexp(sims[0], 0) - torch.logsumexp(sims[0, :2], 0)
    assert torch.allclose(info_nce(x, x, 5.0, pos_mask=mask, symmetric=False), expected_row0)


def test_ipot_plan_keeps_the_marginals_and_follows_the_cost() -> None:
    from vlforge.components.losses import ipot_plan

    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 5, 7, generator=gen)
    x_mask = torch.ones(3, 5, dtype=torch.bool)
    x_mask[1, 3:] = False
    y_mask = torch.ones(3, 7, dtype=torch.bool)
    y_mask[2, 5:] = False
    plan = ipot_plan(cost, x_mask, y_mask, iterations=200)
    assert torch.allclose(plan.sum(dim=(1, 2)), torch.ones(3), atol=1e-4)
    assert torch.allclose(plan[1].sum(1), torch.tensor([1 / 3] * 3 + [0, 0]), atol=1e-4)  # padding gets nothing
    assert torch.allclose(plan[2].sum(0), torch.tensor([0.2] * 5 + [0, 0]), atol=1e-4)
    eye = ipot_plan(1 - torch.eye(4)[None], torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool), iterations=200)
    assert torch.allclose(eye[0], torch.eye(4) / 4, atol=1e-3)  # all mass on the zero-cost matches


def test_word_patch_alignment_rewards_aligned_matched_pairs() -> None:
    from vlforge.components.losses import word_patch_alignment_loss

    gen = torch.Generator().manual_seed(0)
    words = torch.randn(2, 4, 8, generator=gen, requires_grad=True)
    patches = torch.cat([words.detach(), torch.randn(2, 2, 8, generator=gen)], dim=1)  # each word has its patch
    masks = torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 6, dtype=torch.bool)
    matched = word_patch_alignment_loss(words, patches, *masks, torch.tensor([1, 1]))
    swapped = word_patch_alignment_loss(words, patches, *masks, torch.tensor([0, 0]))
    assert matched.item() == pytest.approx(-swapped.item()) and matched.item() > 0
    unrelated = word_patch_alignment_loss(words, torch.randn(2, 6, 8, generator=gen), *masks, torch.tensor([1, 1]))
    assert matched.item() < unrelated.item()  # aligned words and patches are nearer than unrelated ones
    matched.backward()
    assert words.grad is not None and words.grad.abs().sum() > 0
