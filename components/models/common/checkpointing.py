"""Activation checkpointing of a model's transformer layers (the recipe field ``grad_checkpointing``).

Every layer stack in vlforge is made of ``transformers``' ``GradientCheckpointingLayer`` blocks: Hugging Face's own
(CLIP, BERT, GPT-2, ViT, DETR, T5, BART layers) and vlforge's (VLMo's ``MultiwayBlock`` subclasses it), so one
switch covers every family: Hugging Face models through ``activation_checkpointing_enable`` (the successor of
``gradient_checkpointing_enable``), and any layer outside such a model (vlforge's own stacks) here, with
``torch.utils.checkpoint`` (``use_reentrant=False``). A checkpointed layer keeps only its input in the forward pass
and recomputes the rest in the backward pass: the same loss and gradients, less memory. The same layers are the
units ``parallel: fsdp`` shards (``components/training/fsdp.py``)."""
from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """Every transformer layer of ``model`` (its ``GradientCheckpointingLayer`` blocks), in ``modules()`` order."""
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Checkpoint every transformer layer of ``model``; returns how many layers are checkpointed."""
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            module.activation_checkpointing_enable({"use_reentrant": False})
    layers = transformer_layers(model)
    for layer in layers:
        if not layer.gradient_checkpointing:
            layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
            layer.gradient_checkpointing = True
    return len(layers)
