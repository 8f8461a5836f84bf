"""CLIP — "Learning Transferable Visual Models From Natural Language Supervision" (Radford et al., 2021).

Architecture: a ViT image tower and a causal Transformer text tower pooled at the end-of-text token, each
linearly projected into a joint space; no fusion. Built from ``transformers``' ``CLIPModel`` so a checkpoint
is a ``save_pretrained`` directory that ``CLIPModel.from_pretrained`` loads.
Objective: symmetric InfoNCE over the global batch (features gathered across Ray workers) with a learnable
temperature, ``s = exp(t)``, ``t₀ = log(1/0.07)``, clipped at 100 as in the paper (section 2.5).

Pretrained text tower (open_clip's HF text towers): a recipe with ``text_tower`` (a local Hugging Face model
directory, or ``minilm`` for the packaged all-MiniLM-L6-v2) builds ``hf_text.HFTextCLIPModel`` instead: the same
ViT image tower, the pretrained encoder pooled (``text_pooler``: mean over the mask, or cls) and linearly
projected, optionally frozen (``lock_text``, but the last ``lock_text_unlocked_layers`` layers). Its tokenizer
must be the tower's own: ``tokenizer: {kind: pretrained, pretrained_dir: <tower dir>}``. The text_width,
text_layers, text_heads and vocab_size fields are ignored then; the lock fields are ignored without a tower.

Fine-tuning (``init_from``): ``--set init_from=catalog:REF`` starts from a clip model of the catalog, trained or
imported (``vlforge import model``, e.g. an open_clip checkpoint), with its architecture and weights; the run's
image_size, max_text_length and tokenizer must fit it (one-line errors name both sides), the model becomes a parent.

Run:  vlforge run train --family clip --data shapes --recipe tiny
Recipes: ``recipes/tiny.yaml`` (64 px, 2 CPU cores, minutes), ``recipes/base.yaml`` (ViT-B/32, 151M params)
and ``recipes/tiny-minilm.yaml`` (tiny's image tower + frozen all-MiniLM-L6-v2 text tower).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
from vlforge.components.losses import gathered_info_nce, info_nce
from vlforge.components.models.clip.hf_text import MODEL_TYPE as HF_TEXT_MODEL_TYPE
from vlforge.components.models.clip.hf_text import (
    HFTextCLIPModel,
    build_hf_text_clip,
    check_tokenizer,
    resolve_text_tower,
)
from vlforge.components.models.common.config import PatchRecipe, VocabRecipe, transformer_sizes
from vlforge.components.models.common.preflight import check_vocab_size
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe, register_family, special_token_ids
from vlforge.components.models.registry import unwrap as _unwrap
from vlforge.errors import UserError


class ClipRecipe(VocabRecipe, PatchRecipe):
    embed_dim: int = Field(128, ge=1)
    vision_width: int = Field(128, ge=8)
    vision_layers: int = Field(3, ge=1)
    vision_heads: int = Field(4, ge=1)
    text_width: int = Field(128, ge=8)
    text_layers: int = Field(3, ge=1)
    text_heads: int = Field(4, ge=1)
    mlp_ratio: int = Field(4, ge=1)
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = Field(100.0, gt=0)
    gather_features: bool = True
    text_tower: str | None = Field(None, description="a local HF model dir (or 'minilm'): pretrained text tower")
    text_pooler: Literal["mean", "cls"] = "mean"
    lock_text: bool = Field(False, description="freeze the pretrained text tower")
    lock_text_unlocked_layers: int = Field(0, ge=0, description="with lock_text: leave the last N layers trainable")
    init_from: str | None = Field(None, description="fine-tuning: a clip model (directory or catalog:REF, e.g. an "
                                  "imported one) to start from, with its architecture; image_size and "
                                  "max_text_length must fit it")


def vision_config(recipe: ClipRecipe) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        **transformer_sizes(recipe.vision_width, recipe.vision_layers, recipe.vision_heads, recipe.mlp_ratio),
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        projection_dim=recipe.embed_dim,
    )


def clip_config(recipe: ClipRecipe, vocab_size: int, special_ids: dict[str, int]) -> CLIPConfig:
    text = CLIPTextConfig(
        vocab_size=recipe.vocab_size or vocab_size,
        **transformer_sizes(recipe.text_width, recipe.text_layers, recipe.text_heads, recipe.mlp_ratio),
        max_position_embeddings=recipe.max_text_length,
        projection_dim=recipe.embed_dim,
        pad_token_id=special_ids.get("pad", 0),
        bos_token_id=special_ids.get("bos", 3),
        eos_token_id=special_ids.get("eos", 4),
    )
    return CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision_config(recipe).to_dict(),
        projection_dim=recipe.embed_dim,
        logit_scale_init_value=recipe.logit_scale_init,
    )


@register_family
class ClipFamily(Family):
    name = "clip"
    paper = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021 (arXiv 2103.00020)"
    recipe_cls = ClipRecipe
    capabilities = frozenset({"retrieval", "zero_shot_classification"})
    objectives = ("itc",)
    artifact_fields = ("text_tower", "init_from")

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, ClipRecipe)
        if recipe.init_from:
            return check_continued(self.load(Path(recipe.init_from)), recipe, vocab_size, special_ids)
        if recipe.text_tower is None:
            return CLIPModel(clip_config(recipe, vocab_size, special_ids))
        return build_hf_text_clip(
            recipe.text_tower,
            vision_config(recipe),
            vocab_size=vocab_size,
            special_ids=special_ids,
            max_text_length=recipe.max_text_length,
            projection_dim=recipe.embed_dim,
            logit_scale_init_value=recipe.logit_scale_init,
            text_pooler=recipe.text_pooler,
            lock_text=recipe.lock_text,
            lock_text_unlocked_layers=recipe.lock_text_unlocked_layers,
        )

    def preflight(self, recipe: Recipe, tokenizer: object) -> None:
        assert isinstance(recipe, ClipRecipe)
        if recipe.text_tower is not None:
            check_tokenizer(resolve_text_tower(recipe.text_tower), len(tokenizer), special_token_ids(tokenizer), recipe.text_tower)
        else:
            check_vocab_size(tokenizer, recipe.vocab_size)

    batch_coupled_loss = True
    supports_local_loss = True

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        return self.loss_from_features(model, self.features(model, batch, recipe), recipe)

    def features(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values)
        return {"image": F.normalize(out.image_embeds, dim=-1), "text": F.normalize(out.text_embeds, dim=-1)}

    def loss_from_features(self, model: nn.Module, features: dict[str, torch.Tensor], recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, ClipRecipe)
        img, txt = features["image"], features["text"]
        scale = _unwrap(model).logit_scale.exp()
        loss = gathered_info_nce(img, txt, scale, recipe.local_loss) if recipe.gather_features else info_nce(img, txt, scale)
        return {"loss": loss, "contrastive": loss.detach(), "logit_scale": scale.detach()}

    def after_optimizer_step(self, model: nn.Module, recipe: Recipe) -> None:
        assert isinstance(recipe, ClipRecipe)
        with torch.no_grad():
            _unwrap(model).logit_scale.clamp_(0, math.log(recipe.max_logit_scale))

    def save(self, model: nn.Module, out_dir: Path, recipe: Recipe) -> None:
        """The saved recipe describes the saved network: a model started from ``init_from`` has that model's shape."""
        if isinstance(model, CLIPModel) and getattr(recipe, "init_from", None):
            from vlforge.components.models.convert.hf_checkpoint import HF_ARCHITECTURES

            recipe = recipe.model_copy(update=HF_ARCHITECTURES["clip"].recipe_fields(model.config.to_dict(), "model"))
        super().save(model, out_dir, recipe)

    def load(self, model_dir: Path) -> nn.Module:
        config_file = Path(model_dir) / "config.json"
        if not config_file.is_file():
            raise UserError(f"'{model_dir}' holds no CLIP checkpoint (no config.json)")
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type == HF_TEXT_MODEL_TYPE:
            return HFTextCLIPModel.from_pretrained(model_dir, local_files_only=True)
        if model_type == "clip":
            return CLIPModel.from_pretrained(model_dir, local_files_only=True)
        raise UserError(f"'{model_dir}' holds a '{model_type}' model, not a CLIP one ('clip' or '{HF_TEXT_MODEL_TYPE}')")

    def encode_images(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(_features(_unwrap(model).get_image_features(pixel_values=pixel_values)), dim=-1)

    def encode_texts(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = _unwrap(model).get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(_features(out), dim=-1)


def check_continued(model: nn.Module, recipe: ClipRecipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
    """The ``init_from`` model, to train on; UserError naming both sides where the run's images, text length or
    tokenizer do not fit it."""
    vision = model.config.vision_config
    text = getattr(model.config, "text_config", None)
    if vision.image_size != recipe.image_size:
        raise UserError(f"init_from '{recipe.init_from}' takes {vision.image_size} px images; this recipe's "
                        f"image_size is {recipe.image_size} (--set image_size={vision.image_size})")
    if text is not None and getattr(text, "model_type", "") == "clip_text_model":
        if recipe.max_text_length > text.max_position_embeddings:
            raise UserError(f"init_from '{recipe.init_from}' reads {text.max_position_embeddings} tokens; this recipe's "
                            f"max_text_length is {recipe.max_text_length}")
        if vocab_size > text.vocab_size or (text.eos_token_id != 2 and special_ids.get("eos") != text.eos_token_id):
            raise UserError(f"init_from '{recipe.init_from}' embeds {text.vocab_size} tokens ending at id "
                            f"{text.eos_token_id}; this run's tokenizer has {vocab_size} ending at id "
                            f"{special_ids.get('eos')} (train with the model's own tokenizer)")
    return model


def _features(out: torch.Tensor | object) -> torch.Tensor:
    """``get_*_features`` give a tensor (older transformers) or an output whose ``pooler_output`` is the projection."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]


