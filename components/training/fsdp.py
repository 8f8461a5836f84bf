"""Fully sharded data parallelism for the training loop (the recipe field ``parallel: fsdp``): torch's FSDP2
``fully_shard`` (Zhao et al., "PyTorch FSDP", VLDB 2023) over the Ray Train workers' process group.

Each transformer layer of the family's model (the blocks ``grad_checkpointing`` checkpoints:
``models/common/checkpointing.py``) is one FSDP unit; a root unit, ``ShardedModel`` (a thin module around the
family's model, ``.module`` like DDP's, so ``registry.unwrap`` finds the family's model in it), holds the rest.
Every family call of a step (``training_step``, GradCache's ``features`` / ``loss_from_features``) runs as the
root's forward (``ShardedFamily``), so the root's parameters are gathered for it and their gradients
reduce-scattered after it whichever of its model's methods the family calls. Scalar parameters (CLIP's temperature),
which ``fully_shard`` cannot shard, stay replicated and ``sync_replicated_grads`` averages their gradients over the
ranks as DDP would. Rank 0 keeps a plain CPU copy of the model that ``gather`` loads the full state dict into, for
the checkpoint (the same ``save_pretrained`` directory as under DDP) and validation. Teachers held outside the
model's modules (``models.teachers.attach_teacher``) are neither sharded nor trained."""
from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from vlforge.components.models.common.checkpointing import transformer_layers
from vlforge.components.models.registry import Family

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered, on rank 0's CPU only


class ShardedModel(nn.Module):
    """The root FSDP unit: its forward runs ``call(self.module, *args)``, a family method on its model."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, call: Any, *args: Any) -> Any:
        return call(self.module, *args)


class ShardedFamily:
    """``family`` whose step calls run as ``root``'s forward (the model they are given is ignored: it is the root's);
    every other attribute is the family's."""

    def __init__(self, family: Family, root: ShardedModel) -> None:
        self._family, self._root = family, root

    def __getattr__(self, name: str) -> Any:
        return getattr(self._family, name)

    def training_step(self, model: nn.Module, batch: Any, recipe: Any) -> dict[str, torch.Tensor]:
        return self._root(self._family.training_step, batch, recipe)

    def features(self, model: nn.Module, batch: Any, recipe: Any) -> dict[str, torch.Tensor] | None:
        return self._root(self._family.features, batch, recipe)

    def loss_from_features(self, model: nn.Module, features: dict[str, torch.Tensor], recipe: Any) -> dict[str, torch.Tensor]:
        return self._root(self._family.loss_from_features, features, recipe)


def _outside_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Modules a module of ``model`` holds in a plain attribute (attached teachers), not as a sub-module."""
    def walk(value: Any) -> Iterator[nn.Module]:
        if isinstance(value, nn.Module):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from walk(v)

    for module in model.modules():
        for name, value in vars(module).items():
            if name not in ("_modules", "_parameters", "_buffers"):
                yield from walk(value)


class Sharding:
    """The family's model sharded over the process group (``root``), rank 0's plain copy (``copy``, None elsewhere)
    and the calls that move state between them; every method here is collective (all ranks call it)."""

    def __init__(self, model: nn.Module, device: torch.device, keep_copy: bool) -> None:
        # a copy made before sharding; attached teachers are shared with it, not copied
        self.copy = copy.deepcopy(model, {id(t): t for t in _outside_modules(model)}).cpu() if keep_copy else None
        if device.type == "cuda":
            torch.cuda.set_device(device)
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        replicated = {p for p in model.parameters() if p.ndim == 0}
        model.to(device)
        for layer in reversed(transformer_layers(model)):  # inner layers before the layers holding them
            fully_shard(layer, mesh=mesh, ignored_params=replicated & set(layer.parameters()))
        self.root = ShardedModel(model)
        fully_shard(self.root, mesh=mesh, ignored_params=replicated)

    def family(self, family: Family) -> Family:
        return ShardedFamily(family, self.root)  # type: ignore[return-value]

    def gather(self) -> nn.Module | None:
        """Load the full state dict into rank 0's copy and return it (None on the other ranks)."""
        state = get_model_state_dict(self.root, options=FULL)
        if self.copy is not None:
            self.copy.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        return self.copy

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimiser's full state, keyed by parameter name (on rank 0; empty elsewhere)."""
        return get_optimizer_state_dict(self.root, optimizer, options=FULL)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Shard ``optimizer_state``'s full state (every rank read it from the checkpoint) into ``optimizer``."""
        set_optimizer_state_dict(self.root, optimizer, state, options=StateDictOptions(full_state_dict=True))


def sync_replicated_grads(model: nn.Module) -> None:
    """Average over the ranks the gradients of the parameters FSDP leaves replicated (scalars), as DDP would."""
    params = [p for p in model.parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if dist.get_world_size() == 1 or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for p, synced in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(synced.view_as(p.grad))


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded and replicated gradients: the norm of the whole (gathered) gradient."""
    params = [p for p in model.parameters() if p.grad is not None]
    parts = [[p for p in params if isinstance(p, DTensor) == sharded] for sharded in (True, False)]
    norms = []
    for part in parts:
        if part:
            norm = torch.nn.utils.get_total_norm([p.grad for p in part])
            norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
    for part in parts:
        if part:
            torch.nn.utils.clip_grads_with_norm_(part, max_norm, total)
    return total
