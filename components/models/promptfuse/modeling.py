"""The PromptFuse model: a frozen CLIP image encoder, a frozen causal LM, and ``n_prompts`` trainable prompt vectors
in the LM's input space — the only trained parameters (Liang et al., 2022).

``PromptFuseModel`` is a plain ``nn.Module``: ``image_encoder`` (``CLIPVisionModelWithProjection``, the CLIP
teacher's vision tower and visual projection), ``language_model`` (``GPT2LMHeadModel``) and ``prompts`` (an
``nn.Parameter`` of shape (n_prompts, d_lm), initialised from randomly drawn rows of the LM's word embeddings, the
"sampled vocabulary" initialisation of prompt tuning). The image enters the LM as CLIP's projected embedding
(``image_tokens: pooled``: one token; ``patches``: every token through CLIP's post-LayerNorm and projection),
L2-normalised and scaled to the LM's mean word-embedding norm (the ``image_scale`` buffer), then — only where the
CLIP width differs from the LM's — mapped by a fixed random semi-orthogonal matrix (the ``image_map`` buffer, drawn
once from the seed). Neither is trained: the paper trains only the prompts, and its ViT-base and BERT-base share
width 768, so it needs no map at all. Its checkpoint is self-contained (``config.json`` + ``model.safetensors``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    GPT2Config,
    GPT2LMHeadModel,
)
from vlforge.components.models.prefix_lm import (
    load_composite_weights,
    read_composite_config,
    save_composite,
)

MODEL_TYPE = "vlforge_promptfuse"


def fixed_image_map(d_in: int, d_out: int, seed: int) -> torch.Tensor:
    """A (d_in, d_out) matrix with orthonormal rows (d_in <= d_out) or columns: norm-preserving where it can be."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randn(max(d_in, d_out), min(d_in, d_out), generator=g, device="cpu")
    q, _ = torch.linalg.qr(a)  # (max, min), orthonormal columns
    return (q.T if d_in < d_out else q).contiguous()


class PromptFuseModel(nn.Module):
    def __init__(self, config: dict[str, Any], language_model: GPT2LMHeadModel | None = None,
                 image_encoder: CLIPVisionModelWithProjection | None = None):
        super().__init__()
        self.config = dict(config)
        self.language_model = language_model or GPT2LMHeadModel(GPT2Config.from_dict(config["lm_config"]))
        self.image_encoder = image_encoder or CLIPVisionModelWithProjection(CLIPVisionConfig.from_dict(config["vision_config"]))
        self.lm_width = self.language_model.config.n_embd
        self.n_prompts = int(config["n_prompts"])
        wte = self.language_model.get_input_embeddings().weight
        rows = torch.randint(0, wte.shape[0], (self.n_prompts,), device="cpu",
                             generator=torch.Generator(device="cpu").manual_seed(config["seed"]))
        self.prompts = nn.Parameter(wte.detach()[rows.to(wte.device)].clone())
        self.register_buffer("image_scale", wte.detach().norm(dim=-1).mean().clone())
        d_img = self.image_encoder.config.projection_dim
        if d_img != self.lm_width:
            self.register_buffer("image_map", fixed_image_map(d_img, self.lm_width, config["seed"]).to(wte.device))
        else:
            self.image_map = None

    @property
    def special_ids(self) -> dict[str, int]:
        return self.config["special_ids"]

    def train(self, mode: bool = True) -> PromptFuseModel:
        """Both encoders are frozen, so they stay in eval mode (no dropout) while the prompts train."""
        super().train(mode)
        self.language_model.eval()
        self.image_encoder.eval()
        return self

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image as LM input embeddings (B, 1 or 1 + patches, d_lm); resized to CLIP's resolution if needed."""
        size = self.image_encoder.config.image_size
        if pixel_values.shape[-1] != size or pixel_values.shape[-2] != size:
            pixel_values = F.interpolate(pixel_values, size=(size, size), mode="bilinear", align_corners=False)
        out = self.image_encoder(pixel_values=pixel_values)
        if self.config["image_tokens"] == "pooled":
            feats = out.image_embeds[:, None]
        else:
            tower = self.image_encoder.vision_model
            feats = self.image_encoder.visual_projection(tower.post_layernorm(out.last_hidden_state))
        feats = F.normalize(feats, dim=-1) * self.image_scale
        return feats @ self.image_map if self.image_map is not None else feats

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens (B, n_img, d_lm) and the prompts (B, n_prompts, d_lm)."""
        image = self.image_tokens(pixel_values)
        return image, self.prompts[None].expand(image.shape[0], -1, -1)

    # ---- checkpoint ------------------------------------------------------------------------------------
    def save_pretrained(self, out_dir: Path | str) -> None:
        config = {**self.config, "model_type": MODEL_TYPE, "lm_config": self.language_model.config.to_dict(),
                  "vision_config": self.image_encoder.config.to_dict()}
        save_composite(self, out_dir, config)

    @classmethod
    def from_pretrained(cls, model_dir: Path | str) -> PromptFuseModel:
        model = cls(read_composite_config(model_dir, MODEL_TYPE, "PromptFuse"))
        return load_composite_weights(model, model_dir)  # type: ignore[return-value]
