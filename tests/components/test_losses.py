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
