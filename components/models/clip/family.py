"""CLIP — "Learning Transferable Visual Models From Natural Language Supervision" (Radford et al., 2021).

Architecture: a ViT image tower and a causal Transformer text tower pooled at the end-of-text token, each
linearly projected into a joint space; no fusion. Built from ``transformers``' ``CLIPModel`` so a checkpoint
is a ``save_pretrained`` directory that ``CLIPModel.from_pretrained`` loads.
Objective: symmetric InfoNCE over the global batch (features gathered across Ray workers) with a learnable
temperature, ``s = exp(t)``, ``t₀ = log(1/0.07)``, clipped at 100 as in the paper (section 2.5).

Run:  vlforge run train --family clip --data shapes --recipe tiny
Recipes: ``recipes/tiny.yaml`` (64 px, 2 CPU cores, minutes) and ``recipes/base.yaml`` (ViT-B/32, 151M params).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

from vlforge.components.losses import gather_with_grad, info_nce
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe, register_family


class ClipRecipe(Recipe):
    embed_dim: int = Field(128, ge=1)
    vision_width: int = Field(128, ge=8)
    vision_layers: int = Field(3, ge=1)
    vision_heads: int = Field(4, ge=1)
    patch_size: int = Field(8, ge=1)
    text_width: int = Field(128, ge=8)
    text_layers: int = Field(3, ge=1)
    text_heads: int = Field(4, ge=1)
    mlp_ratio: int = Field(4, ge=1)
    vocab_size: int | None = Field(None, ge=8, description="None: the tokenizer's size")
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = Field(100.0, gt=0)
    gather_features: bool = True


def clip_config(recipe: ClipRecipe, vocab_size: int, special_ids: dict[str, int]) -> CLIPConfig:
    text = CLIPTextConfig(
        vocab_size=recipe.vocab_size or vocab_size,
        hidden_size=recipe.text_width,
        intermediate_size=recipe.text_width * recipe.mlp_ratio,
        num_hidden_layers=recipe.text_layers,
        num_attention_heads=recipe.text_heads,
        max_position_embeddings=recipe.max_text_length,
        projection_dim=recipe.embed_dim,
        pad_token_id=special_ids.get("pad", 0),
        bos_token_id=special_ids.get("bos", 3),
        eos_token_id=special_ids.get("eos", 4),
    )
    vision = CLIPVisionConfig(
        hidden_size=recipe.vision_width,
        intermediate_size=recipe.vision_width * recipe.mlp_ratio,
        num_hidden_layers=recipe.vision_layers,
        num_attention_heads=recipe.vision_heads,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        projection_dim=recipe.embed_dim,
    )
    return CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=recipe.embed_dim,
        logit_scale_init_value=recipe.logit_scale_init,
    )


@register_family
class ClipFamily(Family):
    name = "clip"
    paper = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021 (arXiv 2103.00020)"
    recipe_cls = ClipRecipe
    capabilities = frozenset({"retrieval", "zero_shot_classification"})

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, ClipRecipe)
        return CLIPModel(clip_config(recipe, vocab_size, special_ids))

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, ClipRecipe)
        core = _unwrap(model)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values)
        img = F.normalize(out.image_embeds, dim=-1)
        txt = F.normalize(out.text_embeds, dim=-1)
        if recipe.gather_features:
            img, txt = gather_with_grad(img), gather_with_grad(txt)
        scale = core.logit_scale.exp()
        loss = info_nce(img, txt, scale)
        return {"loss": loss, "contrastive": loss.detach(), "logit_scale": scale.detach()}

    def after_optimizer_step(self, model: nn.Module, recipe: Recipe) -> None:
        assert isinstance(recipe, ClipRecipe)
        with torch.no_grad():
            _unwrap(model).logit_scale.clamp_(0, math.log(recipe.max_logit_scale))

    def load(self, model_dir: Path) -> nn.Module:
        return CLIPModel.from_pretrained(model_dir, local_files_only=True)

    def encode_images(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(_unwrap(model).get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)

    def encode_texts(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = _unwrap(model).get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(out.pooler_output, dim=-1)


def _unwrap(model: nn.Module) -> CLIPModel:
    return getattr(model, "module", model)  # DistributedDataParallel wraps the CLIPModel
