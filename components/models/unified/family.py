"""unified — "Towards a Unified Foundation Model: Jointly Pre-Training Transformers on Unpaired Images and Text"
(Li, Gong, Cui, Kondratyuk, Du, Yang, Brown; arXiv 2112.07074, 2021).

Architecture (``modeling.UnifiedModel``, model type ``vlforge_unified``): modality-specific tokenizers (BERT word
embeddings; ViT patch projection with [CLS] and positions), ONE shared modality-agnostic transformer (``BertEncoder``
layers) and modality-specific heads (MLM; image classifier / distillation projections / MIM, built as the losses
need them). The paper's student is BERT-base / ViT-B sized (``recipes/base.yaml``).

Unpaired training: each batch is split by key (``unpaired_split``): the images of one half of the samples and the
captions of the OTHER half are used, so the model never sees an image with its own caption (a key repeated in a
batch goes wholly to one side). The split, like the MLM and MIM masks, draws from ``masking.batch_generator`` with the
recipe seed and the batch's keys: reproducible, and fresh for every new batch of a shuffled stream. Losses:
- text side (captions of the text half): whole-word MLM (``masking.mask_tokens``, ``losses.mlm_loss``) + knowledge
  distillation from the frozen text teacher (a ``text-mlm`` BERT, fed the same masked captions): Hinton KD on the
  MLM logits at the masked positions (``losses.kd_kl_loss``), optionally hidden-state distillation of every
  non-padding token through ``text_distill_proj`` (``losses.feature_distill_loss``; weight 0 by default);
- image side (images of the image half): distillation from the frozen image teacher (an ``image-teacher`` ViT):
  with a supervised teacher, KD on its class logits (``kd_kl_loss``, the paper's ``KL(p_ViT‖p_S)``) and cross-entropy
  on the source's labels under the teacher's saved label mapping (the paper's classification CE); with any teacher,
  hidden-state distillation of the final hidden states (every token when the patch grids match, else [CLS])
  through ``image_distill_proj``; optional MIM (``mim_weight``; pixel regression on masked patches, a second image
  pass). The teacher sees the student's pixels, resized to its own ``image_size`` if that differs.
- gradient masking (``training.gradient_masking.gradient_masked_loss``): on the shared encoder parameters the update is
  ``g = g_txt + M ⊙ g_img`` (``grad_mask_target: image``; or the roles swapped), ``M`` recomputed each step from the
  image gradient's element magnitudes (``grad_mask: magnitude``, keeping ``grad_mask_keep`` of each tensor's
  elements), or from sign conflicts with the text gradient (``conflict``), or all ones (``none``). The paper's own
  mask schedule is not checked in our notes; this per-step mask is our reading. The training loop only calls
  ``loss.backward()``, so ``training_step`` returns a surrogate loss whose value is ``text_loss + image_loss`` and
  whose gradient is exactly the masked combination (see ``components/training/gradient_masking.py``). In evaluation (no grad mode) the
  loss is the plain sum.

Teachers (``teachers``: ``text_teacher`` from ``text-mlm``, ``image_teacher`` from ``image-teacher``): recipe fields
holding a checkpoint directory (``catalog:REF`` is resolved by the train stage; left empty, the train flow trains
both first in the DAG, on the same data and tokenizer, and they become the student's parents). ``build_model`` reads
only their configs (widths, classes, label mapping: saved in the student's config); their weights are loaded on the
first training step and cached on the student as a plain attribute (not a submodule): frozen, in eval mode, outside
the student's ``state_dict``, ``parameters()`` (so the loop's optimiser never sees them) and checkpoint. Without a
teacher the matching distillation terms are skipped (MLM alone on the text side; the image side then needs MIM).
The default image teacher is trained supervised on the source's labels where the training split has them (the
paper's teacher is an ImageNet-supervised ViT), else with MIM: ``image_teacher_objective`` (``auto``), through
``Family.teacher_overrides``.

Capabilities: "image_features" (``encode_images``: the final [CLS] of the image path, L2-normalised, for the linear
probe) and "text_features" (``text_features``: the attention-masked mean of the text path, for the NLU probe, the
project's stand-in for the paper's GLUE fine-tuning; the image argument is ignored). ``encode_texts`` (the same,
L2-normalised) is implemented too, but "retrieval" is NOT declared: nothing aligns the two modalities without pairs,
so their features share a width, not a space.
Pixels are normalised to [-1, 1] (mean = std = 0.5, ViT's), as the image teacher was trained.

Not implemented: the paper's fine-tuning evaluations (ImageNet-style classification, GLUE) beyond this project's
linear probe; its exact mask schedule; its large-scale data (ImageNet-21k/JFT images, BookCorpus/Wikipedia text).

Run:  vlforge run train --family unified --data shapes-300 --recipe tiny   (trains both teachers first)
Recipes: ``recipes/tiny.yaml`` (2 CPU cores, minutes), ``recipes/base.yaml`` (BERT-base-sized shared transformer)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from vlforge.components.losses import feature_distill_loss, kd_kl_loss, mlm_loss
from vlforge.components.models.common.config import MaskedLMRecipe, PatchRecipe, TransformerRecipe, VocabRecipe, dropouts, recipe_sizes
from vlforge.components.models.common.preflight import check_heads, check_patches, check_per_worker_batch, check_text_fits, check_token, check_vocab_size, require_mask_id
from vlforge.components.models.teachers import attach_teacher, attached_teacher
from vlforge.components.models.heads import mean_pool
from vlforge.components.models.image_teacher.family import batch_labels
from vlforge.components.models.masking import (
    IGNORE_INDEX,
    batch_generator,
    mask_tokens,
    masked_patch_loss,
    patchify,
    random_patch_mask,
)
from vlforge.components.models.registry import FAMILY_FILE, Family, ImageTextBatch, Recipe, get_family, load_pretrained, register_family
from vlforge.components.models.registry import unwrap as _unwrap
from vlforge.components.models.unified.modeling import (
    MODEL_TYPE,
    UnifiedConfig,
    UnifiedModel,
)
from vlforge.components.training.gradient_masking import (
    MaskFn,
    conflict_mask,
    gradient_masked_loss,
    magnitude_mask,
    no_mask,
)

from vlforge.errors import UserError



class UnifiedRecipe(MaskedLMRecipe, VocabRecipe, PatchRecipe, TransformerRecipe):
    text_teacher: str | None = Field(None, description="a text-mlm model directory (or catalog:REF); empty: the "
                                     "train flow trains one first")
    image_teacher: str | None = Field(None, description="an image-teacher model directory (or catalog:REF); empty: "
                                      "the train flow trains one first")
    image_teacher_objective: Literal["auto", "supervised", "mim"] = Field(
        "auto", description="the objective of the image teacher the train flow trains when image_teacher is empty: "
        "supervised on the source's labels, as the paper's ViT teacher (auto: when the training split has labels, "
        "else mim)")
    max_position_embeddings: int = Field(512, ge=4)
    dropout: float = Field(0.1, ge=0, lt=1)
    initializer_range: float = Field(0.02, gt=0)
    mlm_weight: float = Field(1.0, ge=0)
    text_kd_weight: float = Field(1.0, ge=0, description="KD on the text teacher's MLM logits (masked positions)")
    text_feature_kd_weight: float = Field(0.0, ge=0, description="hidden-state distillation from the text teacher")
    image_logit_kd_weight: float = Field(1.0, ge=0, description="KD on a supervised image teacher's class logits")
    image_label_weight: float = Field(1.0, ge=0, description="label CE under a supervised image teacher's mapping")
    image_feature_kd_weight: float = Field(1.0, ge=0, description="hidden-state distillation from the image teacher")
    mim_weight: float = Field(0.0, ge=0, description="masked image modelling on the image half (0: off)")
    mim_mask_ratio: float = Field(0.4, gt=0, lt=1)
    kd_temperature: float = Field(1.0, gt=0)
    feature_kd_kind: Literal["mse", "smooth_l1", "cosine"] = "mse"
    grad_mask: Literal["magnitude", "conflict", "none"] = Field("magnitude", description="how the masked loss's "
                                                                 "gradient is masked on the shared encoder")
    grad_mask_keep: float = Field(0.5, gt=0, le=1, description="magnitude: share of elements kept per tensor")
    grad_mask_target: Literal["image", "text"] = Field("image", description="whose gradient is masked: g = g_other + M ⊙ g_target")


def unpaired_split(keys: list[str], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of the image half and of the text half of a batch: the distinct keys are shuffled and split in
    two (the image half gets the smaller half for an odd count), and every row goes with its key, so no sample's
    image and caption are ever both used. UserError for fewer than two distinct samples."""
    unique = list(dict.fromkeys(keys))
    if len(unique) < 2:
        raise UserError(f"unified: a batch needs at least 2 distinct samples to split into unpaired images and texts (got {len(unique)})")
    order = torch.randperm(len(unique), generator=generator).tolist()
    image_keys = {unique[i] for i in order[: len(unique) // 2]}
    image_idx = [i for i, k in enumerate(keys) if k in image_keys]
    text_idx = [i for i, k in enumerate(keys) if k not in image_keys]
    return torch.tensor(image_idx, dtype=torch.long), torch.tensor(text_idx, dtype=torch.long)


def _read_config(path: str | None, field: str, family_name: str) -> dict[str, Any] | None:
    """A teacher checkpoint's config.json, after checking it is a model of ``family_name``; None without one."""
    if not path:
        return None
    model_dir = Path(path).expanduser()
    meta = model_dir / FAMILY_FILE
    if not meta.is_file() or not (model_dir / "config.json").is_file():
        raise UserError(f"unified {field} '{path}' is not a vlforge model directory (no {FAMILY_FILE} or config.json)")
    family = json.loads(meta.read_text()).get("family")
    if family != family_name:
        raise UserError(f"unified {field} '{path}' is a '{family}' model; the {field} must be a '{family_name}' model")
    return json.loads((model_dir / "config.json").read_text())


def unified_config(recipe: UnifiedRecipe, vocab_size: int, special_ids: dict[str, int]) -> UnifiedConfig:
    """The student's config; the distillation heads' sizes and the image label mapping come from the teachers."""
    vocab = recipe.vocab_size or vocab_size
    text_t = _read_config(recipe.text_teacher, "text_teacher", "text-mlm")
    image_t = _read_config(recipe.image_teacher, "image_teacher", "image-teacher")
    if text_t is not None:
        if text_t["vocab_size"] != vocab:
            raise UserError(f"unified text_teacher '{recipe.text_teacher}' has a vocabulary of {text_t['vocab_size']} "
                            f"tokens, the student {vocab}: train the teacher with the student's tokenizer")
        if text_t["max_position_embeddings"] < recipe.max_text_length:
            raise UserError(f"unified text_teacher '{recipe.text_teacher}' takes {text_t['max_position_embeddings']} "
                            f"positions, fewer than max_text_length {recipe.max_text_length}")
    supervised = image_t is not None and image_t["vlforge_objective"] == "supervised"
    classes = image_t["vlforge_num_classes"] if supervised and (recipe.image_logit_kd_weight or recipe.image_label_weight) else 0
    config = UnifiedConfig(
        vocab_size=vocab,
        **recipe_sizes(recipe),
        **dropouts(recipe.dropout),
        max_position_embeddings=recipe.max_position_embeddings,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        initializer_range=recipe.initializer_range,
        pad_token_id=special_ids.get("pad", 0),
        num_classes=classes,
        image_distill_size=image_t["hidden_size"] if image_t is not None and recipe.image_feature_kd_weight else 0,
        text_distill_size=text_t["hidden_size"] if text_t is not None and recipe.text_feature_kd_weight else 0,
        use_mim_head=recipe.mim_weight > 0,
    )
    config.vlforge_special_ids = dict(special_ids)  # saved with the checkpoint: masking needs them
    # the supervised image teacher's label mapping, so the student's classifier means the teacher's classes
    config.vlforge_num_classes = classes
    config.vlforge_class_names = image_t.get("vlforge_class_names") if classes else None
    config.vlforge_label_rule = image_t.get("vlforge_label_rule") if classes else None
    return config


def load_teachers(core: UnifiedModel, recipe: UnifiedRecipe, device: torch.device) -> dict[str, nn.Module | None]:
    """The recipe's teachers, frozen and in eval mode, loaded once and cached on ``core`` outside its modules (so
    they are in no state_dict, optimiser or checkpoint of the student)."""
    out: dict[str, nn.Module | None] = {}
    for field, family_name in (("text_teacher", "text-mlm"), ("image_teacher", "image-teacher")):
        path = getattr(recipe, field)
        found, teacher = attached_teacher(core, field, source=path)
        if not found:
            teacher = None
            if path:
                _read_config(path, field, family_name)
                teacher = get_family(family_name).load(Path(path).expanduser())
            attach_teacher(core, field, teacher, source=path)
        if teacher is not None:
            teacher.to(device)  # a no-op once there
        out[field] = teacher
    return out


def grad_mask_fn(recipe: UnifiedRecipe) -> MaskFn:
    if recipe.grad_mask == "magnitude":
        return magnitude_mask(recipe.grad_mask_keep)
    return conflict_mask if recipe.grad_mask == "conflict" else no_mask


@register_family
class UnifiedFamily(Family):
    name = "unified"
    paper = ("Li et al., Towards a Unified Foundation Model: Jointly Pre-Training Transformers on Unpaired Images and "
             "Text, arXiv 2112.07074 (2021)")
    recipe_cls = UnifiedRecipe
    capabilities = frozenset({"image_features", "text_features"})
    teachers = {"text_teacher": ("text-mlm",), "image_teacher": ("image-teacher",)}  # noqa: RUF012
    objectives = ("mlm + text KD (BERT teacher)", "image KD (ViT teacher: logits + labels, or features) [+ mim]",
                  "gradient masking on the shared encoder")
    image_mean = (0.5, 0.5, 0.5)  # ViT's [-1, 1], as the image teacher
    image_std = (0.5, 0.5, 0.5)
    shard_blocker = "its gradient masking differentiates each loss with respect to every parameter inside the step"

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, UnifiedRecipe)
        check_heads(self.name, recipe)
        check_patches(self.name, recipe)
        check_text_fits(self.name, recipe)
        require_mask_id(self.name, special_ids)
        return UnifiedModel(unified_config(recipe, vocab_size, special_ids))

    def teacher_overrides(self, field: str, recipe: Recipe, offers: frozenset[str]) -> dict[str, Any]:
        """The paper distils a ViT trained supervised (ImageNet): the default image teacher is trained on the
        source's labels when the training split has them (``image_teacher_objective: auto``), else with MIM."""
        assert isinstance(recipe, UnifiedRecipe)
        if field != "image_teacher":
            return {}
        objective = recipe.image_teacher_objective
        if objective == "auto":
            objective = "supervised" if "labels" in offers else "mim"
        elif objective == "supervised" and "labels" not in offers:
            raise UserError("unified: image_teacher_objective 'supervised' needs a dataset whose training split has "
                            "class labels (at least 2); this one has none (use 'mim' or 'auto')")
        return {"objective": objective}

    def preflight(self, recipe: Recipe, tokenizer: object) -> None:
        assert isinstance(recipe, UnifiedRecipe)
        check_token(self.name, tokenizer, "mask")
        check_vocab_size(tokenizer, recipe.vocab_size)
        check_per_worker_batch(self.name, recipe, "samples", "the unpaired split needs two")
        image_t = _read_config(recipe.image_teacher, "image_teacher", "image-teacher")
        _read_config(recipe.text_teacher, "text_teacher", "text-mlm")
        if recipe.mim_weight == 0 and (image_t is None or not (recipe.image_feature_kd_weight or (
                image_t["vlforge_objective"] == "supervised" and (recipe.image_logit_kd_weight or recipe.image_label_weight)))):
            raise UserError("unified: no image loss (no image teacher to distil and mim_weight 0): set image_teacher or mim_weight")

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, UnifiedRecipe)
        core = _unwrap(model)
        cfg = core.config
        device = batch.input_ids.device
        gen = batch_generator(batch.keys, recipe.seed)
        image_idx, text_idx = (i.to(device) for i in unpaired_split(list(batch.keys), gen))
        # ---- the text half: masked captions -------------------------------------------------------------------
        ids, attn = batch.input_ids[text_idx], batch.attention_mask[text_idx]
        special_ids: dict[str, int] = cfg.vlforge_special_ids
        masked_ids, labels = mask_tokens(
            ids, attn, mask_id=special_ids["mask"], vocab_size=cfg.vocab_size, special_ids=special_ids.values(),
            word_ids=None if batch.word_ids is None else batch.word_ids[text_idx], p=recipe.mlm_probability,
            whole_word=recipe.whole_word_masking, generator=gen,
        )
        # ---- the image half ---------------------------------------------------------------------------------------
        pixels = batch.pixel_values[image_idx]
        num_patches = core.image_embeddings.patch_embeddings.num_patches
        mim_mask = None
        if cfg.use_mim_head and recipe.mim_weight > 0:
            mim_mask = random_patch_mask(pixels.shape[0], num_patches, recipe.mim_mask_ratio, device, gen)
        out = model(input_ids=masked_ids, attention_mask=attn, pixel_values=pixels,
                    mim_pixel_values=pixels if mim_mask is not None else None, mim_patch_mask=mim_mask)
        teachers = load_teachers(core, recipe, device)
        logs: dict[str, torch.Tensor] = {}

        text_h = out["text"]
        mlm_logits = core.mlm_head(text_h)
        mlm = mlm_loss(mlm_logits, labels)
        text_loss = recipe.mlm_weight * mlm
        logs["mlm"] = mlm
        if (text_t := teachers["text_teacher"]) is not None:
            with torch.no_grad():
                t_hidden = text_t.bert(input_ids=masked_ids, attention_mask=attn).last_hidden_state
                t_logits = text_t.cls(t_hidden)
            if recipe.text_kd_weight:
                chosen = (labels != IGNORE_INDEX).reshape(-1)
                kd = kd_kl_loss(mlm_logits.reshape(-1, mlm_logits.shape[-1]), t_logits.reshape(-1, t_logits.shape[-1]),
                                recipe.kd_temperature, mask=chosen)
                text_loss = text_loss + recipe.text_kd_weight * kd
                logs["text_kd"] = kd
            if cfg.text_distill_size and recipe.text_feature_kd_weight:
                keep = attn.bool()
                feat = feature_distill_loss(core.text_distill_proj(text_h)[keep], t_hidden[keep], recipe.feature_kd_kind)
                text_loss = text_loss + recipe.text_feature_kd_weight * feat
                logs["text_feature_kd"] = feat

        image_h = out["image"]
        image_loss = image_h.new_zeros(())
        if (image_t := teachers["image_teacher"]) is not None:
            t_size = image_t.config.image_size
            t_pixels = pixels if pixels.shape[-1] == t_size else F.interpolate(pixels, size=(t_size, t_size), mode="bilinear", align_corners=False)
            with torch.no_grad():
                t_hidden = image_t(pixel_values=t_pixels)
            if cfg.num_classes:
                s_logits = core.image_classifier(image_h[:, 0])
                if recipe.image_logit_kd_weight:
                    with torch.no_grad():
                        t_logits = image_t.class_logits(t_hidden)
                    kd = kd_kl_loss(s_logits, t_logits, recipe.kd_temperature)
                    image_loss = image_loss + recipe.image_logit_kd_weight * kd
                    logs["image_kd"] = kd
                image_labels = batch_labels([(batch.meta or [None] * len(batch.keys))[i] for i in image_idx.tolist()], cfg, device)
                if recipe.image_label_weight and (image_labels != IGNORE_INDEX).any():
                    ce = F.cross_entropy(s_logits.float(), image_labels, ignore_index=IGNORE_INDEX)
                    image_loss = image_loss + recipe.image_label_weight * ce
                    logs["image_ce"] = ce
            if cfg.image_distill_size and recipe.image_feature_kd_weight:
                student = core.image_distill_proj(image_h)
                if student.shape[1] != t_hidden.shape[1]:  # different patch grids: distil [CLS] only
                    student, t_hidden = student[:, :1], t_hidden[:, :1]
                feat = feature_distill_loss(student.reshape(-1, student.shape[-1]), t_hidden.reshape(-1, t_hidden.shape[-1]),
                                            recipe.feature_kd_kind)
                image_loss = image_loss + recipe.image_feature_kd_weight * feat
                logs["image_feature_kd"] = feat
        if mim_mask is not None:
            pred = core.mim_head(out["image_masked"][:, 1:])
            mim = masked_patch_loss(pred.float(), patchify(pixels, cfg.patch_size).float(), mim_mask)
            image_loss = image_loss + recipe.mim_weight * mim
            logs["mim"] = mim

        # ---- gradient masking on the shared encoder -------------------------------------------------------------
        shared_names = set(core.shared_parameter_names())
        shared = [p for n, p in core.named_parameters() if n in shared_names and p.requires_grad]
        rest = [p for n, p in core.named_parameters() if n not in shared_names and p.requires_grad]
        first, second = (text_loss, image_loss) if recipe.grad_mask_target == "image" else (image_loss, text_loss)
        loss = gradient_masked_loss(first, second, shared, rest, grad_mask_fn(recipe))
        return {"loss": loss, "text_loss": text_loss.detach(), "image_loss": image_loss.detach(),
                **{k: v.detach() for k, v in logs.items()}}

    def save(self, model: nn.Module, out_dir: Path, recipe: Recipe) -> None:
        """The student alone: ``save_pretrained`` writes its own modules, never the cached teachers."""
        super().save(_unwrap(model), out_dir, recipe)

    def load(self, model_dir: Path) -> nn.Module:
        return load_pretrained(model_dir, UnifiedModel, MODEL_TYPE, "unified")

    # ---- capabilities "image_features" and "text_features" (no shared space: "retrieval" is not declared) --------
    def encode_images(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """The final [CLS] of the image path, L2-normalised."""
        return F.normalize(_unwrap(model).encode_image(pixel_values)[:, 0], dim=-1)

    def text_features(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """The attention-masked mean of the text path's final hidden states (B, D); text needs no image here."""
        return mean_pool(_unwrap(model).encode_text(input_ids, attention_mask), attention_mask)

    def encode_texts(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``text_features``, L2-normalised."""
        return F.normalize(self.text_features(model, input_ids, attention_mask), dim=-1)
