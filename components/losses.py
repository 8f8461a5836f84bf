"""Losses and feature utilities that several families share (one implementation each).

``info_nce`` is the symmetric, multi-positive contrastive loss used by CLIP (and by VLMo's ITC, UNIMO's CMCL,
VLKD's ITCL and Jin et al.'s CMCL/TCL as they land). ``gather_with_grad`` lets every data-parallel worker
contrast against the whole global batch, as open_clip does, while gradients still reach the local features."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (rank order); identity outside torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    import warnings

    import torch.distributed.nn.functional as dist_fn

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_ragged_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``gather_with_grad`` for tensors whose first dimension differs between ranks (e.g. UNIMO's contrastive texts,
    whose rewrites vary per batch): pad to the largest, gather, drop the padding. Identity outside
    torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    counts = [int(s.item()) for s in sizes]
    width = max(counts)
    gathered = gather_with_grad(torch.cat([x, x.new_zeros((width - x.shape[0], *x.shape[1:]))]))
    return torch.cat([gathered[r * width: r * width + n] for r, n in enumerate(counts)])


def gather_objects(obj: object) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` outside torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor | float,
    pos_mask: torch.Tensor | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """Contrastive loss between L2-normalised rows of ``q`` (N, D) and ``k`` (M, D).

    Without ``pos_mask`` the positives are the diagonal (N == M): CLIP's ``½[CE(s·QKᵀ) + CE(s·KQᵀ)]``.
    With a boolean ``pos_mask`` (N, M) every marked pair is a positive (UNIMO-style multi-positive):
    ``-log Σ_pos e^{s·sim} / Σ_all e^{s·sim}`` per row, averaged; symmetric over columns too."""
    logits = scale * (q @ k.t())
    if pos_mask is None:
        if q.shape[0] != k.shape[0]:
            raise ValueError("info_nce without pos_mask needs as many queries as keys")
        target = torch.arange(q.shape[0], device=q.device)
        loss = F.cross_entropy(logits, target)
        return 0.5 * (loss + F.cross_entropy(logits.t(), target)) if symmetric else loss
    pos_mask = pos_mask.to(torch.bool)

    def one_side(lg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        has_pos = mask.any(dim=1)
        pos = torch.logsumexp(lg.masked_fill(~mask, float("-inf")), dim=1)
        return (torch.logsumexp(lg, dim=1) - pos)[has_pos].mean()

    loss = one_side(logits, pos_mask)
    return 0.5 * (loss + one_side(logits.t(), pos_mask.t())) if symmetric else loss


def gathered_info_nce(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor | float, local_loss: bool = False) -> torch.Tensor:
    """CLIP's symmetric ``info_nce`` over the global batch (``q``, ``k``: this rank's (n, D) rows; every rank the
    same n). ``local_loss`` (open_clip's): this rank's rows against the gathered ones only, so the logits are
    (n, world·n) instead of (world·n, world·n). Its mean over ranks is the global loss, and after the
    data-parallel gradient average its gradient is the global loss's (the gather carries gradients back)."""
    q_all, k_all = gather_with_grad(q), gather_with_grad(k)
    if not local_loss or q_all.shape[0] == q.shape[0]:
        return info_nce(q_all, k_all, scale)
    target = torch.arange(q.shape[0], device=q.device) + dist.get_rank() * q.shape[0]
    return 0.5 * (F.cross_entropy(scale * (q @ k_all.t()), target) + F.cross_entropy(scale * (k @ q_all.t()), target))


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-language-modelling cross-entropy over the positions whose label is not -100 (see models/masking.py)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image-text matching cross-entropy: ``logits`` (N, 2) from an ITM head, ``labels`` 1 = matched, 0 = not."""
    return F.cross_entropy(logits.float(), labels.long())


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton distillation: ``T² · KL(softmax(t/T) || softmax(s/T))`` over the last dim, averaged over the rows
    ``mask`` keeps (all rows without one). The teacher side carries no gradient."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    per_row = (t.exp() * (t - s)).sum(-1) * temperature**2
    if mask is not None:
        per_row = per_row[mask.to(torch.bool)]
    return per_row.mean()


def feature_distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Regress student features onto (detached) teacher features: ``mse``, ``smooth_l1`` or ``cosine``
    (1 - cosine similarity), averaged over rows. Shapes must match (project the student first)."""
    teacher = teacher.detach().float()
    student = student.float()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(student, teacher)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    raise ValueError(f"unknown feature distillation kind '{kind}'")


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """Token cross-entropy ignoring -100 labels; ``shift`` for causal LMs (position t predicts token t+1)."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


def ipot_plan(cost: torch.Tensor, x_mask: torch.Tensor, y_mask: torch.Tensor, beta: float = 0.5, iterations: int = 50,
              inner: int = 1) -> torch.Tensor:
    """Optimal-transport plans (B, M, N) between ``x`` (M points) and ``y`` (N points) under ``cost`` (B, M, N) by the
    inexact proximal point method (IPOT, Xie et al. 2019) as ViLT and UNITER run it: uniform marginals over each
    side's kept points (``x_mask`` (B, M), ``y_mask`` (B, N); True = kept), step ``beta``, ``iterations`` outer and
    ``inner`` Sinkhorn steps. No gradient flows through the plan."""
    cost = cost.detach().float()
    keep = (x_mask[:, :, None] & y_mask[:, None, :]).to(cost.dtype)
    x_len = x_mask.sum(1).clamp(min=1).to(cost.dtype)[:, None, None]
    y_len = y_mask.sum(1).clamp(min=1).to(cost.dtype)[:, None, None]
    kernel = torch.exp(-cost / beta) * keep
    plan = keep.clone()
    x_pad = (~x_mask).to(cost.dtype)[:, :, None] * 1e4  # makes a padded point's scaling ~0
    y_pad = (~y_mask).to(cost.dtype)[:, None, :] * 1e4
    sigma = x_mask.to(cost.dtype)[:, :, None] / x_len  # (B, M, 1)
    for _ in range(iterations):
        q = kernel * plan
        for _ in range(inner):
            delta = 1.0 / (y_len * (q.transpose(1, 2) @ sigma).transpose(1, 2) + y_pad)  # (B, 1, N)
            sigma = 1.0 / (x_len * (q @ delta.transpose(1, 2)) + x_pad)  # (B, M, 1)
        plan = sigma * q * delta
    return plan * keep


def word_patch_alignment_loss(text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor, image_mask: torch.Tensor,
                              matched: torch.Tensor) -> torch.Tensor:
    """ViLT's word-patch alignment (UNITER's word-region alignment): the optimal-transport distance between a pair's
    word features ``text`` (B, M, D) and patch features ``image`` (B, N, D) under the cosine cost, from an IPOT plan;
    minimised for matched pairs and maximised for mismatched ones: (sum over matched - sum over mismatched) / B.
    Masks are True for the points that take part (the caller leaves out [CLS], [SEP] and padding)."""
    t, v = F.normalize(text.float(), dim=-1), F.normalize(image.float(), dim=-1)
    cost = (1.0 - t @ v.transpose(1, 2)) * (text_mask[:, :, None] & image_mask[:, None, :])
    plan = ipot_plan(cost, text_mask, image_mask)
    distance = (cost * plan).sum(dim=(1, 2))
    sign = torch.where(matched.bool(), 1.0, -1.0).to(distance.dtype)
    return (sign * distance).sum() / max(1, distance.shape[0])
