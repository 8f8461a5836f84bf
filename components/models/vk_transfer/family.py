"""Visual-knowledge transfer — "Leveraging Visual Knowledge in Language Tasks: An Empirical Study on Intermediate
Pre-training for Cross-modal Knowledge Transfer" (Jin et al., ACL 2022, arXiv 2203.07519).

The paper asks which intermediate pretraining on image-caption data best carries visual knowledge into a text-only
language model that is then fine-tuned on language tasks. The student here is BERT (``modeling.VkTransferModel``:
``BertModel`` + ``BertOnlyMLMHead`` with ``BertForMaskedLM``'s parameter names, built from a ``BertConfig``, or
initialised from a ``text-mlm`` checkpoint through the recipe's ``text_init``), plus three small heads into the
joint space of a frozen CLIP teacher (recipe field ``teacher``: a catalog CLIP; the train flow trains one first).

Objectives, each selected by its weight in the recipe's ``objectives`` (weight 0 or absent: not computed at all, and
its head is frozen so a data-parallel run has no unused trainable parameter):
- ``mlm``: BERT MLM on the captions (15% whole-word masking, ``masking.mask_tokens``).
- ``simcse`` (the paper's text contrastive learning, TCL): unsupervised SimCSE — every caption is encoded twice,
  each pass with its own dropout; the two views of a caption (and of any identical caption in the batch) are the
  positives, the other captions the negatives; one-sided InfoNCE (``losses.info_nce``) on the pooler's [CLS] at
  temperature 0.05 (Gao et al., 2021). In eval mode dropout is off, the two views coincide and the loss is a pure
  function of the batch.
- ``voken`` (voken classification, after Tan & Bansal's Vokenization): every caption token is classified into a
  "voken", an image. The voken vocabulary is the batch's images (no k-means, no fixed image bank), each voken
  represented by the teacher's image embedding; the target of a token is chosen by contextual retrieval with the
  teacher: ``argmax_j cos(teacher token feature, teacher image j)`` (``voken_target: contextual``; the token
  feature is CLIP's final text state projected into the joint space), or simply the caption's own image
  (``voken_target: paired``). The student scores its token states, projected by ``voken_head``, against the same
  image embeddings (cosine / ``voken_temperature``); cross-entropy over caption tokens (specials and padding
  ignored).
- ``mlm_visual`` (MLM with visual clues): the paired image's teacher embedding, projected by ``visual_prefix``,
  is prepended as one input token (token type 1) before the masked caption; MLM on the caption positions. It uses
  the same mask as ``mlm`` when both run.
- ``xmodal_contrastive`` (CMCL): the student's sentence embedding (pooler [CLS] -> ``xmodal_proj``) against the
  teacher's image embedding of the batch, symmetric InfoNCE at ``xmodal_temperature`` (a sample's own image and any
  image with the same key are positives).
- ``xmodal_kd`` (CMKD): distil the teacher into the student's sentence embedding: ``kd_target: similarity`` (default)
  matches the teacher's text-to-image similarity distribution over the batch's images (``losses.kd_kl_loss``, both
  sides scaled by the teacher's own logit scale, temperature ``kd_temperature``); ``kd_target: feature`` regresses
  the teacher's text embedding (``losses.feature_distill_loss``, cosine).
The total is the weighted sum. The comparison of the paper is re-run as a sweep of single-objective recipes
(``recipes/tiny-<objective>.yaml``) or by overriding the selection: ``--set objectives=mlm,voken`` (weight 1 each)
or ``--set 'objectives={mlm: 1.0, xmodal_kd: 0.5}'``.

Not implemented (deliberately or not yet): the paper's adversarial negatives for CMCL and augmented negatives for
TCL (in-batch negatives only; no cross-worker gathering); Vokenization's fixed image bank and its separately trained
vokenizer (the batch's images and the CLIP teacher stand in); the paper's language-task fine-tuning (PIQA, CSQA,
...): the project's ``nlu_probe`` evaluation fine-tunes ``text_features`` instead; RoBERTa students.

Capabilities: ``text_features`` only (the NLU probe; ``text_features`` = the pooler [CLS], ``text_encoder(model)``
returns the ``BertModel`` for other fine-tuning). ``encode_texts`` gives the L2-normalised sentence embedding in the
teacher's joint space, but "retrieval" is not declared: the student has no image tower (its images live only in
the teacher, which is not part of the checkpoint) and only ``xmodal_contrastive``/``xmodal_kd`` train that space.

Randomness (masks, and the dropout of every pass, through a forked RNG) draws from ``masking.batch_generator``
seeded by (recipe seed + step, batch keys), so a step is a function of the batch and the weights.

Run:  vlforge run train --family vk-transfer --data shapes --recipe tiny      (trains the CLIP teacher first)
      vlforge run train --family vk-transfer --data shapes --recipe tiny-voken --teacher <clip model id>
Recipes: ``tiny`` (mlm + voken + xmodal_contrastive), ``tiny-<objective>`` (one objective each), ``base``
(BERT-base, 110M)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from vlforge.components.losses import (
    feature_distill_loss,
    info_nce,
    kd_kl_loss,
    mlm_loss,
)
from vlforge.components.models.common.config import MaskedLMRecipe, TransformerRecipe, VocabRecipe
from vlforge.components.models.common.preflight import check_heads, check_token, check_vocab_size, require_mask_id
from vlforge.components.models.heads import same_sample_mask
from vlforge.components.models.masking import IGNORE_INDEX, batch_generator, mask_tokens
from vlforge.components.models.registry import FAMILY_FILE, Family, ImageTextBatch, Recipe, register_family
from vlforge.components.models.registry import unwrap as _unwrap
from vlforge.components.models.teachers import seeded_rng
from vlforge.components.models.vk_transfer.modeling import (
    TEACHER_DIM_ATTR,
    VkTransferModel,
    load_teacher,
    load_text_init,
    student_config,
    teacher_config,
    teacher_features,
    text_init_config,
)

from vlforge.errors import UserError

OBJECTIVES = ("mlm", "simcse", "voken", "mlm_visual", "xmodal_contrastive", "xmodal_kd")
TEACHER_OBJECTIVES = frozenset({"voken", "mlm_visual", "xmodal_contrastive", "xmodal_kd"})
DEFAULT_TEACHER_DIM = 512  # CLIP ViT-B/32's joint space, for a model built without a teacher (parameter counts)


class VkTransferRecipe(MaskedLMRecipe, VocabRecipe, TransformerRecipe):
    objectives: dict[str, float] = Field(
        default_factory=lambda: {"mlm": 1.0, "voken": 1.0, "xmodal_contrastive": 1.0},
        description=f"objective -> loss weight (0 or absent: off); of {', '.join(OBJECTIVES)}. Also a list or a "
                    "comma-separated string of names (weight 1 each)")
    teacher: str | None = Field(None, description="the frozen CLIP teacher's directory (catalog:REF)")
    text_init: str | None = Field(None, description="a BertForMaskedLM (text-mlm) checkpoint to start from "
                                  "(catalog:REF); its architecture replaces the recipe's")
    num_layers: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1, description="BERT's hidden and attention dropout (SimCSE's noise)")
    max_position_embeddings: int | None = Field(None, ge=4, description="None: max_text_length + 1 (the visual prefix)")
    teacher_embed_dim: int | None = Field(None, ge=1, description="None: the teacher's projection_dim (512 without one)")
    simcse_temperature: float = Field(0.05, gt=0)
    voken_target: Literal["contextual", "paired"] = "contextual"
    voken_temperature: float = Field(0.07, gt=0)
    xmodal_temperature: float = Field(0.07, gt=0)
    kd_target: Literal["similarity", "feature"] = "similarity"
    kd_temperature: float = Field(1.0, gt=0)

    @field_validator("objectives", mode="before")
    @classmethod
    def _objectives(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            value = {name: 1.0 for name in value}
        if isinstance(value, dict):
            unknown = [k for k in value if k not in OBJECTIVES]
            if unknown:
                raise ValueError(f"unknown objective '{unknown[0]}' (objectives: {', '.join(OBJECTIVES)})")
            if not any(float(v or 0) > 0 for v in value.values()):
                raise ValueError("no objective has a positive weight")
            if any(float(v or 0) < 0 for v in value.values()):
                raise ValueError("objective weights must not be negative")
        return value

    def weights(self) -> dict[str, float]:
        """The objectives that run, in the family's order, with their weights."""
        return {name: float(self.objectives[name]) for name in OBJECTIVES if self.objectives.get(name, 0) > 0}


def voken_targets(teacher_tokens: torch.Tensor | None, teacher_images: torch.Tensor, caption_tokens: torch.Tensor,
                  mode: str) -> torch.Tensor:
    """(B, L) index of each caption token's voken among the batch's B images; ``IGNORE_INDEX`` where
    ``caption_tokens`` is False. ``contextual``: the image nearest the teacher's feature of the token in context;
    ``paired``: the caption's own image."""
    bsz, length = caption_tokens.shape
    if mode == "paired":
        target = torch.arange(bsz, device=caption_tokens.device)[:, None].expand(bsz, length)
    else:
        assert teacher_tokens is not None
        target = (teacher_tokens @ teacher_images.t()).argmax(dim=-1)
    return target.masked_fill(~caption_tokens, IGNORE_INDEX)


def same_caption_mask(captions: list[str], device: torch.device) -> torch.Tensor:
    """(B, B) bool: True where two captions are the same text (SimCSE's positives; the diagonal included)."""
    return same_sample_mask(list(captions), device)


@register_family
class VkTransferFamily(Family):
    name = "vk-transfer"
    batch_coupled_loss = True  # in-batch contrastive loss: accum_freq > 1 needs GradCache (not implemented here)
    paper = ("Jin et al., Leveraging Visual Knowledge in Language Tasks: An Empirical Study on Intermediate "
             "Pre-training for Cross-modal Knowledge Transfer, ACL 2022 (arXiv 2203.07519)")
    recipe_cls = VkTransferRecipe
    capabilities = frozenset({"text_features"})
    objectives = OBJECTIVES
    teachers = {"teacher": ("clip",)}  # noqa: RUF012
    artifact_fields = ("text_init",)

    # ---- model -------------------------------------------------------------------------------------------
    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, VkTransferRecipe)
        require_mask_id(self.name, special_ids)
        teacher_dim = recipe.teacher_embed_dim
        if teacher_dim is None:
            teacher_dim = teacher_config(recipe.teacher)["projection_dim"] if recipe.teacher else DEFAULT_TEACHER_DIM
        positions = recipe.max_position_embeddings or recipe.max_text_length + 1
        if recipe.text_init is not None:
            config = text_init_config(recipe.text_init)
            setattr(config, TEACHER_DIM_ATTR, teacher_dim)
        else:
            check_heads(self.name, recipe)
            config = student_config(
                vocab_size=recipe.vocab_size or vocab_size, hidden_size=recipe.hidden_size, num_layers=recipe.num_layers,
                num_heads=recipe.num_heads, intermediate_size=recipe.hidden_size * recipe.mlp_ratio,
                max_position_embeddings=positions, dropout=recipe.dropout, teacher_dim=teacher_dim,
                pad_id=special_ids.get("pad", 0),
            )
        needed = recipe.max_text_length + (1 if "mlm_visual" in recipe.weights() else 0)
        if config.max_position_embeddings < needed:
            raise UserError(f"vk-transfer: {config.max_position_embeddings} text positions, fewer than the {needed} "
                            "that max_text_length (+1 visual prefix for mlm_visual) needs")
        if config.vocab_size < vocab_size:
            raise UserError(f"vk-transfer: the tokenizer has {vocab_size} tokens, more than the student's vocabulary {config.vocab_size}")
        config.vlforge_special_ids = dict(special_ids)  # saved with the checkpoint: masking needs them
        config.vlforge_tokenizer_size = vocab_size  # random MLM replacements stay within the tokenizer
        model = VkTransferModel(config)
        if recipe.text_init is not None:
            load_text_init(model, recipe.text_init)
        return model

    def frozen_patterns(self, recipe: Recipe) -> list[str]:
        """The heads of objectives that are off: they would get no gradient, which a data-parallel run forbids."""
        assert isinstance(recipe, VkTransferRecipe)
        on = set(recipe.weights())
        frozen = []
        if not on & {"mlm", "mlm_visual"}:
            frozen.append("cls.*")
        if "mlm_visual" not in on:
            frozen.append("visual_prefix.*")
        if "voken" not in on:
            frozen.append("voken_head.*")
        if not on & {"xmodal_contrastive", "xmodal_kd"}:
            frozen.append("xmodal_proj.*")
        if not on & {"simcse", "xmodal_contrastive", "xmodal_kd"}:
            frozen.append("bert.pooler.*")
        return frozen

    def preflight(self, recipe: Recipe, tokenizer: Any) -> None:
        assert isinstance(recipe, VkTransferRecipe)
        from vlforge.components.tokenizer import load_tokenizer

        check_token(self.name, tokenizer, "mask")
        if recipe.text_init is None:
            check_vocab_size(tokenizer, recipe.vocab_size)
        vocab = tokenizer.get_vocab()
        for field in ("teacher", "text_init"):
            where = getattr(recipe, field)
            if where is None:
                continue
            path = Path(where)
            has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
            if has_tokenizer and load_tokenizer(path).get_vocab() != vocab:
                raise UserError(f"vk-transfer: the {field} '{where}' was trained with another tokenizer than this run's; "
                                    "train it on the same tokenizer (--tokenizer)")
        if recipe.teacher is not None:
            cfg = teacher_config(recipe.teacher)
            if cfg["vocab_size"] is not None and cfg["vocab_size"] < len(tokenizer):
                raise UserError(f"vk-transfer: the teacher's vocabulary ({cfg['vocab_size']}) is smaller than the tokenizer's ({len(tokenizer)})")
            if cfg["max_positions"] < recipe.max_text_length:
                raise UserError(f"vk-transfer: the teacher reads {cfg['max_positions']} text positions, fewer than max_text_length {recipe.max_text_length}")
        elif TEACHER_OBJECTIVES & set(recipe.weights()):
            need = sorted(TEACHER_OBJECTIVES & set(recipe.weights()))
            raise UserError(f"vk-transfer: objective '{need[0]}' needs a teacher (recipe field 'teacher' or --teacher)")
        if recipe.text_init is not None:
            text_init_config(recipe.text_init)
        if {"simcse", "xmodal_contrastive", "voken"} & set(recipe.weights()) and recipe.batch_size // recipe.num_workers < 2:
            raise UserError(f"vk-transfer: batch_size {recipe.batch_size} over {recipe.num_workers} workers leaves fewer "
                            "than 2 samples per worker; in-batch negatives need more")

    # ---- objectives --------------------------------------------------------------------------------------
    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, VkTransferRecipe)
        core = _unwrap(model)
        weights = recipe.weights()
        on = set(weights)
        device = batch.input_ids.device
        special_ids: dict[str, int] = core.config.vlforge_special_ids
        gen = batch_generator(batch.keys, recipe.seed + batch.step)

        teacher = None
        if on & TEACHER_OBJECTIVES:
            if recipe.teacher is None:
                raise UserError(f"vk-transfer: objective '{min(on & TEACHER_OBJECTIVES)}' needs a teacher")
            teacher = teacher_features(
                load_teacher(recipe.teacher, device), batch.pixel_values, batch.input_ids, batch.attention_mask,
                text="xmodal_kd" in on,
                tokens="voken" in on and recipe.voken_target == "contextual",
            )
        masked_ids = labels = None
        if on & {"mlm", "mlm_visual"}:
            masked_ids, labels = mask_tokens(
                batch.input_ids, batch.attention_mask, mask_id=special_ids["mask"],
                vocab_size=getattr(core.config, "vlforge_tokenizer_size", core.config.vocab_size),
                special_ids=special_ids.values(), word_ids=batch.word_ids, p=recipe.mlm_probability,
                whole_word=recipe.whole_word_masking, generator=gen,
            )
        with seeded_rng(gen, device):
            out = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, mlm_input_ids=masked_ids,
                text_mlm="mlm" in on, visual_clues=teacher["image"] if "mlm_visual" in on else None,  # type: ignore[index]
                sentence_views=2 if "simcse" in on else (1 if on & {"xmodal_contrastive", "xmodal_kd"} else 0),
                token_features="voken" in on,
            )
        losses: dict[str, torch.Tensor] = {}
        if "mlm" in on:
            losses["mlm"] = mlm_loss(out["mlm_logits"], labels)
        if "mlm_visual" in on:
            losses["mlm_visual"] = mlm_loss(out["mlm_visual_logits"], labels)
        if "simcse" in on:
            z = F.normalize(out["pooled"].float(), dim=-1)
            first, second = z.chunk(2)
            losses["simcse"] = info_nce(first, second, 1.0 / recipe.simcse_temperature,
                                        pos_mask=same_caption_mask(batch.captions, device), symmetric=False)
        if "voken" in on:
            caption_tokens = batch.attention_mask.bool() & ~torch.isin(
                batch.input_ids, torch.tensor(sorted(special_ids.values()), device=device))
            targets = voken_targets(teacher.get("tokens"), teacher["image"], caption_tokens, recipe.voken_target)  # type: ignore[union-attr]
            logits = F.normalize(out["voken_features"].float(), dim=-1) @ teacher["image"].t() / recipe.voken_temperature  # type: ignore[index]
            losses["voken"] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        if on & {"xmodal_contrastive", "xmodal_kd"}:
            sentence = F.normalize(out["sentence"].float(), dim=-1)
            if "xmodal_contrastive" in on:
                losses["xmodal_contrastive"] = info_nce(sentence, teacher["image"], 1.0 / recipe.xmodal_temperature,  # type: ignore[index]
                                                        pos_mask=same_sample_mask(batch.keys, device))
            if "xmodal_kd" in on:
                if recipe.kd_target == "feature":
                    losses["xmodal_kd"] = feature_distill_loss(sentence, teacher["text"], "cosine")  # type: ignore[index]
                else:
                    scale = teacher["scale"]  # type: ignore[index]
                    losses["xmodal_kd"] = kd_kl_loss(scale * sentence @ teacher["image"].t(),  # type: ignore[index]
                                                     scale * teacher["text"] @ teacher["image"].t(),  # type: ignore[index]
                                                     recipe.kd_temperature)
        loss = sum(weights[name] * value for name, value in losses.items())
        return {"loss": loss, **{name: value.detach() for name, value in losses.items()}}

    def load(self, model_dir: Path) -> nn.Module:
        config_file = Path(model_dir) / "config.json"
        if not config_file.is_file() or not (Path(model_dir) / FAMILY_FILE).is_file():
            raise UserError(f"'{model_dir}' holds no vk-transfer checkpoint (no config.json / {FAMILY_FILE})")
        model = VkTransferModel.from_pretrained(model_dir, local_files_only=True)
        if getattr(model.config, TEACHER_DIM_ATTR, None) is None:
            raise UserError(f"'{model_dir}' holds a plain BERT model, not a vk-transfer student")
        return model

    # ---- capabilities ------------------------------------------------------------------------------------
    def text_encoder(self, model: nn.Module) -> nn.Module:
        """The student's ``BertModel`` (embeddings, encoder, pooler), for fine-tuning on language tasks."""
        return _unwrap(model).bert

    def text_features(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """The pooler's [CLS] (B, D), what BERT's sequence classifiers fine-tune; images are not used."""
        return self.text_encoder(model)(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def encode_texts(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The L2-normalised sentence embedding in the teacher's joint space (what xmodal_* objectives train)."""
        core = _unwrap(model)
        return F.normalize(core.xmodal_proj(self.text_features(core, input_ids, attention_mask)), dim=-1)
