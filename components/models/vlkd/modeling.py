"""The VLKD model: a BART student, the frozen CLIP image tower it sees images through, and the two bridges.

``VlkdModel`` registers (and so saves):
- ``bart``: ``BartForConditionalGeneration``, initialised from a text-bart checkpoint, trained;
- ``clip_vision``: ``CLIPVisionModelWithProjection`` (the teacher's vision transformer + ``visual_projection``),
  frozen, kept in the checkpoint so a saved VLKD model can see images on its own (captioning, VQA, retrieval);
- ``image_prefix``: CLIP joint space -> BART input space, applied to every projected CLIP image token
  ([CLS] + patches) to make the encoder's image prefix (ICTI);
- ``text_proj`` and ``logit_scale``: the mean-pooled BART encoder output -> CLIP joint space (TTDM, ITCL).
The teacher's text tower (TTDM's target) is held in ``text_teacher``, a plain attribute: not a sub-module, so it is
in no ``state_dict``, no optimiser and no data-parallel wrapper, and never in the checkpoint; ``load`` re-attaches it
from the teacher directory recorded in ``config.json`` when that directory still exists.

A checkpoint directory holds ``config.json`` (``model_type`` ``vlforge_vlkd``: the BART and CLIP-vision configs, the
special ids and the teacher directory) and ``model.safetensors``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)
from transformers.modeling_outputs import BaseModelOutput
from vlforge.components.models.teachers import attach_teacher, attached_teacher
from vlforge.components.losses import lm_loss

MODEL_TYPE = "vlforge_vlkd"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def vision_tower_from(teacher: nn.Module) -> CLIPVisionModelWithProjection:
    """The teacher's image tower as a ``CLIPVisionModelWithProjection`` sharing the teacher's modules (no copy).
    Works for ``CLIPModel`` (``vision_model`` is the transformer) and the CLIP family's ``HFTextCLIPModel``
    (``vision_model`` is a ``CLIPVisionModel`` wrapping it)."""
    vcfg = CLIPVisionConfig.from_dict(teacher.config.vision_config.to_dict())
    vcfg.projection_dim = teacher.config.projection_dim
    tower = CLIPVisionModelWithProjection(vcfg)
    transformer = teacher.vision_model
    tower.vision_model = getattr(transformer, "vision_model", transformer)
    tower.visual_projection = teacher.visual_projection
    return tower


class VlkdModel(nn.Module):
    def __init__(self, config: dict[str, Any], bart: BartForConditionalGeneration | None = None,
                 clip_vision: CLIPVisionModelWithProjection | None = None):
        super().__init__()
        self.config = dict(config)
        self.bart = bart if bart is not None else BartForConditionalGeneration(BartConfig.from_dict(config["bart_config"]))
        self.clip_vision = clip_vision if clip_vision is not None else CLIPVisionModelWithProjection(
            CLIPVisionConfig.from_dict(config["vision_config"]))
        d_model, embed_dim = self.bart.config.d_model, self.clip_vision.config.projection_dim
        self.image_prefix = nn.Linear(embed_dim, d_model)
        self.text_proj = nn.Linear(d_model, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config["logit_scale_init"])))
        attach_teacher(self, "text_teacher", None)  # not a sub-module: see the module docstring

    # ---- the teacher's text tower (TTDM only) ---------------------------------------------------------
    def attach_text_teacher(self, teacher: nn.Module | None) -> None:
        attach_teacher(self, "text_teacher", teacher)

    @property
    def text_teacher(self) -> nn.Module | None:
        return attached_teacher(self, "text_teacher")[1]

    # ---- images -------------------------------------------------------------------------------------
    @property
    def clip_image_size(self) -> int:
        return int(self.clip_vision.config.image_size)

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen CLIP image embedding (B, E) and every output token projected to the joint space (B, P, E).
        Pixels are resized to the CLIP's input size when the run's image size differs."""
        size = self.clip_image_size
        if pixel_values.shape[-2:] != (size, size):
            pixel_values = F.interpolate(pixel_values, size=(size, size), mode="bilinear", align_corners=False,
                                         antialias=pixel_values.shape[-1] > size)
        vision = self.clip_vision.vision_model(pixel_values=pixel_values)
        proj = self.clip_vision.visual_projection
        tokens = proj(self.clip_vision.vision_model.post_layernorm(vision.last_hidden_state))
        return proj(vision.pooler_output), tokens

    def num_image_tokens(self) -> int:
        cfg = self.clip_vision.config
        return (cfg.image_size // cfg.patch_size) ** 2 + 1

    # ---- text ---------------------------------------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The BART encoder's caption representation (mean over real tokens) projected to the CLIP space (B, E)."""
        hidden = self.bart.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.text_proj((hidden * m).sum(1) / m.sum(1).clamp(min=1))

    def encoder_inputs(self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's input: the image prefix, then the (noised) text's scaled token embeddings."""
        text = self.bart.model.encoder.embed_tokens(input_ids)
        embeds = torch.cat([prefix.to(text.dtype), text], dim=1)
        mask = torch.cat([attention_mask.new_ones(prefix.shape[:2]), attention_mask], dim=1)
        return embeds, mask

    def seq2seq_loss(self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
        """Decoder cross-entropy on ``labels`` given [image prefix; text] in the encoder (teacher forcing)."""
        embeds, mask = self.encoder_inputs(prefix, input_ids, attention_mask)
        out = self.bart(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False)
        return lm_loss(out.logits, labels, shift=False)

    @torch.no_grad()
    def greedy(self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding from ``<decoder_start> <bos>`` (BART's forced first token); returns the new tokens."""
        specials = self.config["special_ids"]
        embeds, mask = self.encoder_inputs(prefix, input_ids, attention_mask)
        enc = BaseModelOutput(last_hidden_state=self.bart.model.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state)
        bsz = input_ids.shape[0]
        dec = torch.tensor([[self.bart.config.decoder_start_token_id, specials["bos"]]], device=input_ids.device).repeat(bsz, 1)
        done = torch.zeros(bsz, dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            logits = self.bart(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec, use_cache=False).logits[:, -1]
            nxt = logits.argmax(-1).masked_fill(done, specials["pad"])
            dec = torch.cat([dec, nxt[:, None]], dim=1)
            done |= nxt == specials["eos"]
            if bool(done.all()):
                break
        return dec[:, 2:]

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                infill: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                vqa: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """One training pass (through ``forward``, so a data-parallel wrapper sees it): the frozen CLIP image
        embedding, the temperature, and as asked the projected caption representation (``input_ids``), the
        infilling loss (``infill`` = noised ids, their mask, labels) and the VQA infilling loss (``vqa`` = the
        rows of the batch it covers, prompt ids, their mask, labels)."""
        image_emb, tokens = self.image_features(pixel_values)
        out = {"image_embeds": image_emb, "logit_scale": self.logit_scale.exp()}
        if input_ids is not None:
            out["text_embeds"] = self.encode_text(input_ids, attention_mask)
        if infill is not None or vqa is not None:
            prefix = self.image_prefix(tokens)
            if infill is not None:
                out["iti"] = self.seq2seq_loss(prefix, *infill)
            if vqa is not None:
                rows, ids, mask, labels = vqa
                out["vqa"] = self.seq2seq_loss(prefix[rows], ids, mask, labels)
        return out

    # ---- checkpoint ---------------------------------------------------------------------------------
    def full_config(self) -> dict[str, Any]:
        return {**self.config, "model_type": MODEL_TYPE, "bart_config": self.bart.config.to_dict(),
                "vision_config": self.clip_vision.config.to_dict()}

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CONFIG_FILE).write_text(json.dumps(self.full_config(), indent=2, sort_keys=True, default=str))
        save_model(self, str(out_dir / WEIGHTS_FILE))  # drops BART's tied embedding duplicates; load_model restores

    @classmethod
    def load(cls, model_dir: Path) -> VlkdModel:
        config = json.loads((model_dir / CONFIG_FILE).read_text())
        model = cls(config)
        load_model(model, str(model_dir / WEIGHTS_FILE))
        return model
