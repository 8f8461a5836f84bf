"""One optimizer step's gradients from ``recipe.accum_freq`` micro-batches (the training loop's ``accum_freq``).

A family whose loss contrasts samples across the batch (``Family.batch_coupled_loss``) gets GradCache (Gao et al.,
"Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", 2021): the features of every
micro-batch without a graph, the loss of the whole batch on them (its gradient reaches the loss's own parameters,
e.g. CLIP's temperature, and the features), then each micro-batch recomputed with a graph and back-propagated from
its cached feature gradient; the parameters' gradients equal one batch of batch_size × accum_freq. Other families
sum micro-batch losses / k, exact for losses that average per sample. Under data parallelism the micro-batches
run without the wrapper's gradient sync and the gradients are averaged over ranks once at the end."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vlforge.components.models.registry import Family, ImageTextBatch, Recipe


def accumulate_gradients(family: Family, model: nn.Module, batches: Sequence[ImageTextBatch], recipe: Recipe,
                         autocast: Any = None, backward: Callable[[torch.Tensor], None] | None = None) -> dict[str, torch.Tensor]:
    """Accumulate into ``.grad`` the gradient of one step over ``batches``; return the step's losses (detached,
    averaged over micro-batches for plain accumulation). ``backward`` runs a loss's backward pass (a GradScaler's
    ``scale(loss).backward()``); ``autocast`` is the precision context."""
    autocast = autocast or contextlib.nullcontext()
    backward = backward or (lambda loss: loss.backward())
    distributed = isinstance(model, nn.parallel.DistributedDataParallel)
    with (model.no_sync() if distributed else contextlib.nullcontext()):
        if family.batch_coupled_loss and len(batches) > 1:
            losses = _grad_cache(family, model, batches, recipe, autocast, backward)
        else:
            losses = _plain(family, model, batches, recipe, autocast, backward)
    if distributed:
        average_gradients(model)
    return losses


def _plain(family: Family, model: nn.Module, batches: Sequence[ImageTextBatch], recipe: Recipe, autocast: Any,
           backward: Callable[[torch.Tensor], None]) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for batch in batches:
        with autocast:
            losses = family.training_step(model, batch, recipe)
        backward(losses["loss"] / len(batches))
        for k, v in losses.items():
            total[k] = total.get(k, 0) + v.detach().float() / len(batches)
    return total


def _grad_cache(family: Family, model: nn.Module, batches: Sequence[ImageTextBatch], recipe: Recipe, autocast: Any,
                backward: Callable[[torch.Tensor], None]) -> dict[str, torch.Tensor]:
    with torch.no_grad(), autocast:
        cached = [family.features(model, b, recipe) for b in batches]
    if cached[0] is None:
        raise RuntimeError(f"family '{family.name}' has a batch-coupled loss but no features(): accum_freq must be 1")
    sizes = [next(iter(c.values())).shape[0] for c in cached]
    full = {k: torch.cat([c[k] for c in cached]).detach().requires_grad_(True) for k in cached[0]}
    with autocast:
        losses = family.loss_from_features(model, full, recipe)
    backward(losses["loss"])  # the loss's own parameters get their gradient here, the features theirs below
    grads = {k: v.grad.split(sizes) if v.grad is not None else None for k, v in full.items()}
    for i, batch in enumerate(batches):
        with autocast:
            feats = family.features(model, batch, recipe)
        # d(loss)/d(params of micro-batch i) = J_iᵀ · cached d(loss)/d(features_i); already scaled by a GradScaler
        surrogate = sum((feats[k].float() * g[i].float()).sum() for k, g in grads.items() if g is not None)
        surrogate.backward()  # type: ignore[union-attr]
    return {k: v.detach() for k, v in losses.items()}


def average_gradients(model: nn.Module) -> None:
    """Average every trainable parameter's gradient over the ranks in one flat all-reduce (what DDP's sync does)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)
