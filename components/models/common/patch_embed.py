"""ViT's patch embedding as the families that write their own image tokens use it (UNIMO's [IMG] + patches, VLMo's
[CLS] + patches), and the weight initialisation of the models built on it.

``PatchEmbedding`` holds the linear patch projection (``proj``: a stride-``patch_size`` ``Conv2d``, Dosovitskiy et
al. 2021) and writes masked patches (masked image modelling) as the subclass's learned ``mask_token``. A subclass
adds its own leading token and positions under its own names (they are checkpoint keys) and lists them in
``learned_tokens`` for ``init_vit_weights``. ``transformers``' ``ViTEmbeddings`` is the same module under other
parameter names (``patch_embeddings.projection``), which is why the families with checkpoints of their own keep this
one; the unified family uses ``ViTEmbeddings`` itself."""
from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init


class PatchEmbedding(nn.Module):
    """``proj`` and ``num_patches``; subclasses define ``mask_token`` (1, 1, D) and their leading token/positions."""

    mask_token: nn.Parameter

    def __init__(self, hidden_size: int, image_size: int, patch_size: int) -> None:
        super().__init__()
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, hidden_size, kernel_size=patch_size, stride=patch_size)

    def patches(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) projected patches, row-major; where ``patch_mask`` (B, N) is True, the mask token instead."""
        x = self.proj(pixel_values).flatten(2).transpose(1, 2)
        if patch_mask is not None:
            x = torch.where(patch_mask[..., None], self.mask_token.to(x.dtype).expand_as(x), x)
        return x

    def learned_tokens(self) -> tuple[nn.Parameter, ...]:
        """The learned tokens and positions, which ``init_vit_weights`` draws like the weights."""
        raise NotImplementedError


def init_vit_weights(module: nn.Module, std: float) -> bool:
    """BEiT/timm's initialisation of one module, as ``PreTrainedModel._init_weights`` calls it: truncated normal
    (``std``) for Linear and Embedding weights and a ``PatchEmbedding``'s learned tokens, zero biases, unit
    LayerNorms, and the patch projection at the fan-in scale (ViT/timm do not draw it at 0.02). False when the
    module is none of these (the caller initialises its own)."""
    if isinstance(module, nn.Linear):
        init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        init.normal_(module.weight, std=module.weight[0].numel() ** -0.5)
        init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        init.trunc_normal_(module.weight, std=std)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    elif isinstance(module, PatchEmbedding):
        for p in module.learned_tokens():
            init.trunc_normal_(p, std=std)
    else:
        return False
    return True
