"""The visual-knowledge-transfer student and its frozen CLIP teacher (Jin et al., ACL 2022; see family.py).

``VkTransferModel`` is BERT (``BertModel`` with its pooler + ``BertOnlyMLMHead``, the parameter names of
``BertForMaskedLM``, so a ``text-mlm`` checkpoint loads straight into it) plus three small heads into the teacher's
joint image-text space: the visual-clue prefix projection, the voken head and the sentence projection. One
``forward`` call runs every pass a training step needs, so a data-parallel wrapper sees a single forward.

The teacher is a catalog CLIP directory, loaded once per process by ``load_teacher`` and cached outside every
``nn.Module`` (``models.teachers.load_frozen_teacher``): it is never part of the student's ``state_dict`` (so never saved with it, never optimised) and stays in
``eval`` mode without gradients."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel
from transformers.models.bert.modeling_bert import BertOnlyMLMHead, BertPreTrainedModel
from vlforge.components.models.common.parts import load_part, part_family
from vlforge.components.models.teachers import load_frozen_teacher

from vlforge.errors import UserError

TEACHER_DIM_ATTR = "vk_teacher_dim"  # config attribute: the teacher's joint-space width the heads map to/from


class VkTransferModel(BertPreTrainedModel):
    """BERT student with MLM head, pooler (SimCSE's MLP on [CLS]) and heads into the teacher's joint space."""

    _tied_weights_keys = {  # noqa: RUF012 (transformers reads this class attribute), as BertForMaskedLM
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: BertConfig):
        super().__init__(config)
        width, joint = config.hidden_size, getattr(config, TEACHER_DIM_ATTR)
        self.bert = BertModel(config, add_pooling_layer=True)
        self.cls = BertOnlyMLMHead(config)
        self.visual_prefix = nn.Linear(joint, width)  # mlm_visual: teacher image embedding -> one input token
        self.voken_head = nn.Linear(width, joint)  # voken: token state -> teacher image space
        self.xmodal_proj = nn.Linear(width, joint)  # xmodal_contrastive / xmodal_kd: sentence -> teacher space
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mlm_input_ids: torch.Tensor | None = None,
        text_mlm: bool = True,
        visual_clues: torch.Tensor | None = None,
        sentence_views: int = 0,
        token_features: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The passes one step asks for (B captions of length L):

        - ``mlm_input_ids`` (B, L) masked captions -> ``mlm_logits`` (B, L, V) (unless ``text_mlm`` is False);
        - with ``visual_clues`` (B, T) teacher image embeddings too, the same masked captions after a visual prefix
          token (token type 1) -> ``mlm_visual_logits`` (B, L, V);
        - ``sentence_views`` copies of the unmasked captions (2 for SimCSE: each copy draws its own dropout) ->
          ``pooled`` (views*B, D), the pooler's [CLS], and ``sentence`` (B, T), the first view's projection;
        - ``token_features`` -> ``voken_features`` (B, L, T), the first view's token states in the teacher space.
        The masked and unmasked texts share one encoder call (same length); the prefixed pass is a second one."""
        out: dict[str, torch.Tensor] = {}
        bsz = input_ids.shape[0]
        views = max(sentence_views, 1 if token_features else 0)
        text_mlm = text_mlm and mlm_input_ids is not None
        ids = ([mlm_input_ids] if text_mlm else []) + [input_ids] * views
        if ids:
            enc = self.bert(input_ids=torch.cat(ids), attention_mask=attention_mask.repeat(len(ids), 1))
            hidden, pooled = enc.last_hidden_state, enc.pooler_output
            start = 0
            if text_mlm:
                out["mlm_logits"] = self.cls(hidden[:bsz])
                start = bsz
            if views:
                out["pooled"] = pooled[start:]
                out["sentence"] = self.xmodal_proj(pooled[start : start + bsz])
                if token_features:
                    out["voken_features"] = self.voken_head(hidden[start : start + bsz])
        if visual_clues is not None:
            if mlm_input_ids is None:
                raise ValueError("visual_clues need mlm_input_ids")
            prefix = self.visual_prefix(visual_clues.to(self.visual_prefix.weight.dtype)).unsqueeze(1)
            words = self.bert.embeddings.word_embeddings(mlm_input_ids)
            types = torch.zeros(mlm_input_ids.shape[0], mlm_input_ids.shape[1] + 1, dtype=torch.long, device=words.device)
            types[:, 0] = 1
            mask = torch.cat([attention_mask.new_ones(bsz, 1), attention_mask], dim=1)
            enc = self.bert(inputs_embeds=torch.cat([prefix, words], dim=1), attention_mask=mask, token_type_ids=types)
            out["mlm_visual_logits"] = self.cls(enc.last_hidden_state[:, 1:])
        return out


def student_config(
    *, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int,
    max_position_embeddings: int, dropout: float, teacher_dim: int, pad_id: int,
) -> BertConfig:
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=pad_id,
        tie_word_embeddings=True,
    )
    setattr(config, TEACHER_DIM_ATTR, teacher_dim)
    return config


def load_text_init(model: VkTransferModel, init_dir: str) -> None:
    """Copy a ``text-mlm`` model (a ``BertForMaskedLM``: one trained here, or a BERT imported with ``vlforge import
    model DIR --family text-mlm``) into the student's ``bert`` and ``cls``; the pooler and the joint-space heads keep
    their initialisation (a masked LM has no pooler)."""
    init = load_part(init_dir, "text_init", "vk-transfer", ("text-mlm",))
    result = model.load_state_dict(init.state_dict(), strict=False)
    if result.unexpected_keys:
        raise UserError(f"vk-transfer: text_init '{init_dir}': unexpected weight {result.unexpected_keys[0]}")


def text_init_config(init_dir: str) -> BertConfig:
    """The ``text_init`` model's BERT config, read without its weights (UserError unless it is a ``text-mlm`` model)."""
    part_family(init_dir, "text_init", "vk-transfer", ("text-mlm",))
    return BertConfig.from_pretrained(Path(init_dir), local_files_only=True)


# ------------------------------------------------------------------------------------------------- teacher
def teacher_config(teacher_dir: str) -> dict[str, Any]:
    """The teacher's config.json (read without loading weights): joint width, image size, text positions, vocab."""
    path = Path(teacher_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"teacher '{teacher_dir}' is not a CLIP model directory (no config.json)")
    cfg = json.loads(path.read_text())
    text, vision = cfg.get("text_config") or {}, cfg.get("vision_config") or {}
    return {
        "projection_dim": int(cfg.get("projection_dim", 512)),
        "image_size": int(vision.get("image_size", 224)),
        "max_positions": int(text.get("max_position_embeddings", 512)),
        "vocab_size": text.get("vocab_size"),
        "model_type": cfg.get("model_type"),
    }


def load_teacher(teacher_dir: str, device: torch.device) -> nn.Module:
    """The frozen CLIP teacher on ``device``, cached outside the student (``models.teachers.load_frozen_teacher``)."""
    return load_frozen_teacher("clip", teacher_dir, device)


def _features(out: torch.Tensor | Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def teacher_features(
    teacher: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    *, text: bool, tokens: bool,
) -> dict[str, torch.Tensor]:
    """L2-normalised teacher embeddings: ``image`` (B, T) always, ``text`` (B, T) and per-token ``tokens`` (B, L, T,
    the text tower's final states through its text projection) on request, and the teacher's ``scale``.
    Images are resized to the teacher's resolution when the student's recipe uses another one."""
    size = teacher.config.vision_config.image_size
    if pixel_values.shape[-1] != size or pixel_values.shape[-2] != size:
        pixel_values = F.interpolate(pixel_values, size=(size, size), mode="bilinear", align_corners=False)
    out = {"image": F.normalize(_features(teacher.get_image_features(pixel_values=pixel_values)).float(), dim=-1),
           "scale": teacher.logit_scale.exp().float()}
    if text:
        feats = teacher.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        out["text"] = F.normalize(_features(feats).float(), dim=-1)
    if tokens:
        hidden = teacher.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out["tokens"] = F.normalize(teacher.text_projection(hidden).float(), dim=-1)
    return out
