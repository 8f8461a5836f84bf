"""The Frozen model: a trainable vision encoder whose pooled feature is linearly mapped to ``n_prefix`` embeddings in
a frozen causal LM's input space (Tsimpoukelli et al., 2021, section 3; figure 2).

``FrozenModel`` is a plain ``nn.Module`` of three ``transformers`` parts: ``language_model`` (``GPT2LMHeadModel``),
``vision_encoder`` (``ViTModel`` without pooler, its final-LayerNorm [CLS]; or ``ResNetModel``, its global average
pool — the paper's NF-ResNet-50 is a normaliser-free ResNet-50, which ``transformers`` lacks) and
``visual_prefix`` (``Linear(d_vision, n_prefix · d_lm)``, reshaped). Its checkpoint is self-contained: ``config.json``
(model type ``vlforge_frozen``, the sub-models' configs) and one ``model.safetensors`` with every weight, the frozen
LM's included, so a checkpoint never depends on the teacher directory it was built from."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTModel,
)
from vlforge.components.models.prefix_lm import (
    load_composite_weights,
    read_composite_config,
    save_composite,
)

from vlforge.errors import UserError

MODEL_TYPE = "vlforge_frozen"


def build_vision_encoder(kind: str, config: dict[str, Any]) -> nn.Module:
    if kind == "vit":
        return ViTModel(ViTConfig(**config), add_pooling_layer=False)
    if kind == "resnet":
        return ResNetModel(ResNetConfig(**config))
    raise UserError(f"frozen: unknown vision encoder '{kind}' (vit or resnet)")


def vision_width(kind: str, config: dict[str, Any]) -> int:
    return config["hidden_size"] if kind == "vit" else config["hidden_sizes"][-1]


class FrozenModel(nn.Module):
    def __init__(self, config: dict[str, Any], language_model: GPT2LMHeadModel | None = None):
        super().__init__()
        self.config = dict(config)
        self.language_model = language_model or GPT2LMHeadModel(GPT2Config.from_dict(config["lm_config"]))
        self.vision_encoder = build_vision_encoder(config["vision"], config["vision_config"])
        self.n_prefix = int(config["n_prefix"])
        self.lm_width = self.language_model.config.n_embd
        self.visual_prefix = nn.Linear(vision_width(config["vision"], config["vision_config"]), self.n_prefix * self.lm_width)

    @property
    def special_ids(self) -> dict[str, int]:
        return self.config["special_ids"]

    def train(self, mode: bool = True) -> FrozenModel:
        """The frozen LM stays in eval mode (no dropout) while the vision side trains, as the paper keeps it fixed."""
        super().train(mode)
        if self.config.get("freeze_lm", True):
            self.language_model.eval()
        return self

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.config["vision"] == "vit":
            return self.vision_encoder(pixel_values=pixel_values).last_hidden_state[:, 0]
        return self.vision_encoder(pixel_values=pixel_values).pooler_output.flatten(1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The visual prefix (B, n_prefix, d_lm): the image as ``n_prefix`` LM input embeddings."""
        return self.visual_prefix(self.image_features(pixel_values)).view(-1, self.n_prefix, self.lm_width)

    # ---- checkpoint ------------------------------------------------------------------------------------
    def save_pretrained(self, out_dir: Path | str) -> None:
        config = {**self.config, "model_type": MODEL_TYPE, "lm_config": self.language_model.config.to_dict()}
        save_composite(self, out_dir, config)

    @classmethod
    def from_pretrained(cls, model_dir: Path | str) -> FrozenModel:
        model = cls(read_composite_config(model_dir, MODEL_TYPE, "Frozen"))
        return load_composite_weights(model, model_dir)  # type: ignore[return-value]
