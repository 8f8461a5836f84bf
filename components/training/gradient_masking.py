"""Gradient masking (Li et al., 2021, arXiv 2112.07074, "Towards a Unified Foundation Model"), the training loop's
general hook for balancing two losses on shared parameters: any multi-loss family returns
``gradient_masked_loss(...)`` as its ``loss`` (the unified family does).

Two losses that train the same (shared) parameters, e.g. the text and the image pretraining losses of one
transformer, pull its weights in directions that may conflict. Li et al. combine their gradients on the shared
parameters as ``g = g_a + M ⊙ g_b``: the second loss only updates the elements a mask ``M`` keeps. How the paper
schedules its mask is not checked in our notes ([M]); here ``M`` is recomputed each step from the current gradients
(``magnitude_mask``: the ``keep`` share of g_b's elements of largest magnitude in each tensor; ``conflict_mask``:
the elements where g_b does not point against g_a), which keeps the step a pure function of the batch.

The training loop only calls ``losses["loss"].backward()``, so ``gradient_masked_loss`` returns a *surrogate* loss:
it computes both gradients with ``torch.autograd.grad``, builds the combined gradient ``g`` of every parameter, and
returns ``Σ_p ⟨p, g_p.detach()⟩ - (that).detach() + (loss_a + loss_b).detach()``. Its value is exactly
``loss_a + loss_b`` (x - x is exactly 0 in floating point) and its gradient with respect to each parameter ``p`` is
exactly ``g_p``: the loop's ``backward()`` (and a data-parallel wrapper's gradient hooks, which fire as the
surrogate accumulates into ``p.grad``) sees the masked combination. The two ``autograd.grad`` passes cost what one
backward of ``loss_a + loss_b`` costs when the losses come from separate forward passes."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (g_a, g_b) of one tensor -> mask for g_b


def magnitude_mask(keep: float) -> MaskFn:
    """Keep the ``keep`` share (0 < keep <= 1) of g_b's elements with the largest magnitude, per tensor (ties at the
    threshold are kept, so the count may exceed the share by the tied elements)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")

    def mask(g_a: torch.Tensor, g_b: torch.Tensor) -> torch.Tensor:
        if keep >= 1:
            return torch.ones_like(g_b)
        mag = g_b.abs().flatten()
        k = max(1, math.ceil(keep * mag.numel()))
        threshold = mag.kthvalue(mag.numel() - k + 1).values  # the k-th largest magnitude
        return (g_b.abs() >= threshold).to(g_b.dtype)

    return mask


def conflict_mask(g_a: torch.Tensor, g_b: torch.Tensor) -> torch.Tensor:
    """Keep g_b's elements that do not point against g_a (same sign, or either is zero)."""
    return (g_a * g_b >= 0).to(g_b.dtype)


def no_mask(g_a: torch.Tensor, g_b: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(g_b)


def masked_combination(
    loss_a: torch.Tensor, loss_b: torch.Tensor, params: Sequence[torch.Tensor], shared: Sequence[bool], mask_fn: MaskFn,
) -> list[torch.Tensor]:
    """The combined gradient of every parameter: ``g_a + mask_fn(g_a, g_b) ⊙ g_b`` where ``shared``, ``g_a + g_b``
    elsewhere (a loss that does not reach a parameter contributes zeros)."""

    def grads(loss: torch.Tensor, retain: bool) -> list[torch.Tensor | None]:
        if not loss.requires_grad:
            return [None] * len(params)
        return list(torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True))

    ga = grads(loss_a, retain=True)  # the graphs may share nodes (one forward pass for both losses)
    gb = grads(loss_b, retain=False)
    out = []
    for p, a, b, is_shared in zip(params, ga, gb, shared, strict=True):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        out.append(a + mask_fn(a, b) * b if is_shared else a + b)
    return out


def gradient_masked_loss(
    loss_a: torch.Tensor, loss_b: torch.Tensor, shared: Sequence[torch.Tensor], rest: Sequence[torch.Tensor],
    mask_fn: MaskFn,
) -> torch.Tensor:
    """A surrogate loss whose value is ``loss_a + loss_b`` and whose ``backward()`` gives each ``shared`` parameter
    ``g_a + mask_fn(g_a, g_b) ⊙ g_b`` and each ``rest`` parameter ``g_a + g_b``. Pass every trainable parameter in
    one of the two lists (a data-parallel wrapper expects a gradient for each). Without grad mode (evaluation) it is
    the plain sum."""
    if not torch.is_grad_enabled() or not (loss_a.requires_grad or loss_b.requires_grad):
        return loss_a + loss_b
    params = [*shared, *rest]
    combined = masked_combination(loss_a, loss_b, params, [True] * len(shared) + [False] * len(rest), mask_fn)
    surrogate = sum((p * g.detach()).sum() for p, g in zip(params, combined, strict=True))
    return surrogate - surrogate.detach() + (loss_a + loss_b).detach()
