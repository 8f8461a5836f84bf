"""UniT — "UniT: Multimodal Multitask Learning with a Unified Transformer" (Hu & Singh, ICCV 2021, arXiv 2102.10772).

Architecture (``modeling.UnitModel``, a ``save_pretrained`` checkpoint of model type ``vlforge_unit``): per-modality
encoders (a ResNet + DETR transformer encoder for images, BERT for text), one transformer decoder shared by every
task, task-specific learned query embeddings and task embeddings in both encoders, and a classification head per
task on the first query's output; a task decodes over the concatenated encodings of the modalities it uses (MMF's
``shared_dec`` configuration, ``projects/unit/configs/all_8_datasets/shared_dec.yaml``). Nothing is frozen.

Training is multitask as in the paper: every step draws ONE task with ``training.multitask.sample_task`` from
``recipe.task_weights`` (a pure function of the recipe's seed and ``batch.step``, so all data-parallel ranks draw
the same task and a resumed run repeats the draws), among the tasks the batch has data for (``tasks.py``):
- ``vqa``: the builtin scenes' questions (``scene_tasks.vqa_questions``) as classification over the fixed answer
  vocabulary ``tasks.VQA_ANSWERS`` (23 answers) with softmax CE: each question has one answer. MMF's VQAv2 loss
  (logit BCE x number of answers, made for soft multi-annotator scores) is ``vqa_loss: bce`` (the base recipe's); it
  starts near 16 against 0.7-1.8 for the other tasks. Skipped for batches without scene facts;
- ``itm``: caption with its image vs with another sample's image (``heads.sample_negatives``), CE (``losses.itm_loss``);
- ``text_cls``: the caption's ``meta["label"]`` among ``recipe.text_classes`` from the text alone (a GLUE-like
  text-only task), CE. MMF decodes GLUE over BERT's [CLS] state only, which suits its pretrained BERT; from scratch
  the [CLS] state hardly differs between captions at first and the task did not learn in 25 steps, so the decoder
  reads every text token unless ``text_task_cls_only: true``;
- ``detection``: DETR's set prediction on the scene facts' boxes (``tasks.detection_target``: each object's shape
  among ``tasks.DETECTION_CLASSES`` and its box), image only, as the paper's COCO/VG detection: ``detection_queries``
  learned queries (DETR, UniT: 100; tiny: 10, the scenes hold at most 3 objects), a class layer with no-object and
  DETR's box MLP on every query, Hungarian matching and CE (no-object weighted ``detection_eos_coef`` 0.1) + 5 x L1 +
  2 x GIoU on the final and (``detection_aux_loss``) every earlier decoder layer, DETR's and MMF's coefficients
  (``components/models/set_prediction.py``). Skipped for batches without boxes.
The returned ``loss`` is the drawn task's loss; ``task_index`` (position in ``tasks.TASKS``), ``loss_<task>`` and
``accuracy`` are logged (for detection also DETR's ``loss_ce``, ``loss_bbox``, ``loss_giou``, ``cardinality_error``;
its ``accuracy`` is the matched queries' class accuracy). ITM negatives draw from
``masking.batch_generator(keys, seed + step)``.

Not implemented: the paper's datasets (VQAv2, SNLI-VE, GLUE), DETR's dilated C5 (``dilation: true``; the
``transformers`` ResNet has no dilation, so the base model's image tokens have stride 32, not 16), its frozen
BatchNorm and frozen stem/layer1 (they freeze ImageNet-pretrained weights; here everything trains from scratch),
variable-size images with padding masks (images are square, so no image token is masked), and the 256-row task
embedding tables (one row per task here). The text task token is inserted after BERT's embeddings, as in MMF.

Capability "itm": ``score_pairs`` gives the ITM head's match log-odds, which also serves eval's pair scoring.
Capability "detection": ``detect_objects`` (DETR's post-processing: each query's best real class and its score), the
eval task ``detection`` scoring it with COCO box mAP (pycocotools). A checkpoint saved before the detection task
existed has no detection head, and ``detect_objects`` says so.

Run:  vlforge run train --family unit --data shapes --recipe tiny
Recipes: ``recipes/tiny.yaml`` (2 CPU cores, minutes), ``recipes/base.yaml`` (the paper's shared-decoder model)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from vlforge.components.models.common.config import VocabRecipe, checked_task_weights
from vlforge.components.models.common.preflight import check_multiple, check_per_worker_batch, check_vocab_size
from vlforge.components.models.masking import batch_generator
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe, load_pretrained, register_family
from vlforge.components.models.registry import unwrap as _unwrap
from vlforge.components.models.set_prediction import postprocess
from vlforge.components.models.unit.modeling import MODEL_TYPE, UnitConfig, UnitModel
from vlforge.components.models.unit.tasks import (
    DETECTION_CLASSES,
    TASKS,
    VQA_ANSWERS,
    draw_task,
    supported_tasks,
    task_inputs,
)
from vlforge.components.sources.shapes import SHAPES

from vlforge.errors import UserError


class UnitRecipe(VocabRecipe):
    task_weights: dict[str, float] = Field(
        default_factory=lambda: {"vqa": 1.0, "itm": 1.0, "text_cls": 1.0, "detection": 1.0},
        description="sampling weight of each task (vqa, itm, text_cls, detection); one task is drawn per step")
    text_classes: list[str] = Field(default_factory=lambda: list(SHAPES),
                                    description="classes of the text-only task (meta['label']); default: the scenes' shapes")
    vqa_loss: Literal["bce", "ce"] = Field("ce", description="ce: softmax cross-entropy (one answer per scene question); "
                                           "bce: MMF's logit BCE x number of answers (for VQAv2's soft scores)")
    # image encoder: ResNet backbone (transformers ResNetConfig) + DETR transformer encoder
    backbone_embedding_size: int = Field(32, ge=8, description="ResNet stem width")
    backbone_hidden_sizes: list[int] = Field(default_factory=lambda: [32, 64, 128], description="ResNet stage widths")
    backbone_depths: list[int] = Field(default_factory=lambda: [1, 1, 1], description="ResNet blocks per stage")
    backbone_layer_type: Literal["basic", "bottleneck"] = "basic"
    encoder_hidden_size: int = Field(128, ge=8)
    encoder_layers: int = Field(2, ge=1)
    encoder_heads: int = Field(4, ge=1)
    encoder_ffn_dim: int = Field(512, ge=8)
    # text encoder: BERT
    text_hidden_size: int = Field(128, ge=8)
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(4, ge=1)
    text_intermediate_size: int = Field(512, ge=8)
    max_text_positions: int | None = Field(None, ge=4, description="BERT positions; None: max_text_length")
    # shared decoder
    decoder_hidden_size: int = Field(128, ge=8)
    decoder_layers: int = Field(2, ge=1)
    decoder_heads: int = Field(4, ge=1)
    decoder_ffn_dim: int = Field(512, ge=8)
    num_queries: int = Field(4, ge=1, description="learned queries per task (MMF: 25 for non-detection tasks)")
    dropout: float = Field(0.1, ge=0, lt=1)
    task_embeddings: bool = Field(True, description="a learned task token in each encoder (MMF use_task_embedding_in_*)")
    text_task_cls_only: bool = Field(False, description="text_cls decodes over BERT's [CLS] state only (MMF's GLUE "
                                     "setting, made for a pretrained BERT) instead of every text token")
    # detection (DETR's set prediction; coefficients as DETR's main.py and MMF's unit defaults)
    detection_queries: int = Field(100, ge=1, description="object queries of the detection task (DETR, UniT: 100)")
    detection_aux_loss: bool = Field(True, description="DETR's auxiliary set losses on every decoder layer")
    detection_eos_coef: float = Field(0.1, ge=0, description="CE weight of the no-object class (DETR: 0.1)")
    detection_ce_weight: float = Field(1.0, ge=0, description="class cost and CE weight (DETR: 1)")
    detection_l1_weight: float = Field(5.0, ge=0, description="box L1 cost and loss weight (DETR: 5)")
    detection_giou_weight: float = Field(2.0, ge=0, description="GIoU cost and loss weight (DETR: 2)")

    @field_validator("task_weights")
    @classmethod
    def _known_tasks(cls, v: dict[str, float]) -> dict[str, float]:
        return checked_task_weights(v, TASKS, "weights must be >= 0 and at least one positive", quote=lambda t: f"'{t}'")

    @field_validator("text_classes")
    @classmethod
    def _classes(cls, v: list[str]) -> list[str]:
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError("needs at least two distinct classes")
        return v

    @model_validator(mode="after")
    def _backbone(self) -> UnitRecipe:
        if len(self.backbone_hidden_sizes) != len(self.backbone_depths) or not self.backbone_depths:
            raise ValueError("backbone_hidden_sizes and backbone_depths need one entry per ResNet stage")
        return self


def unit_config(recipe: UnitRecipe, vocab_size: int, special_ids: dict[str, int]) -> UnitConfig:
    return UnitConfig(
        task_names=list(TASKS), task_num_labels=[len(VQA_ANSWERS), 2, len(recipe.text_classes), len(DETECTION_CLASSES)],
        cls_only_tasks=["text_cls"] if recipe.text_task_cls_only else [], vqa_loss=recipe.vqa_loss,
        detection_tasks=["detection"], detection_classes=list(DETECTION_CLASSES), detection_num_queries=recipe.detection_queries,
        detection_aux_loss=recipe.detection_aux_loss, detection_eos_coef=recipe.detection_eos_coef,
        detection_ce_weight=recipe.detection_ce_weight, detection_l1_weight=recipe.detection_l1_weight,
        detection_giou_weight=recipe.detection_giou_weight,
        backbone_embedding_size=recipe.backbone_embedding_size, backbone_hidden_sizes=list(recipe.backbone_hidden_sizes),
        backbone_depths=list(recipe.backbone_depths), backbone_layer_type=recipe.backbone_layer_type,
        encoder_hidden_size=recipe.encoder_hidden_size, encoder_layers=recipe.encoder_layers,
        encoder_heads=recipe.encoder_heads, encoder_ffn_dim=recipe.encoder_ffn_dim,
        vocab_size=recipe.vocab_size or vocab_size, text_hidden_size=recipe.text_hidden_size, text_layers=recipe.text_layers,
        text_heads=recipe.text_heads, text_intermediate_size=recipe.text_intermediate_size,
        max_text_positions=recipe.max_text_positions or recipe.max_text_length, pad_token_id=special_ids.get("pad", 0),
        decoder_hidden_size=recipe.decoder_hidden_size, decoder_layers=recipe.decoder_layers,
        decoder_heads=recipe.decoder_heads, decoder_ffn_dim=recipe.decoder_ffn_dim, num_queries=recipe.num_queries,
        dropout=recipe.dropout, task_embeddings=recipe.task_embeddings,
    )


@register_family
class UnitFamily(Family):
    name = "unit"
    paper = "Hu & Singh, UniT: Multimodal Multitask Learning with a Unified Transformer, ICCV 2021 (arXiv 2102.10772)"
    recipe_cls = UnitRecipe
    capabilities = frozenset({"itm", "vqa_answer", "detection"})
    objectives = ("one task per step, sampled by task_weights: vqa (answer classification) | itm | text_cls (text only) "
                  "| detection (DETR set prediction)",)
    image_mean = (0.485, 0.456, 0.406)  # DETR / MMF UniT normalise with the ImageNet statistics
    image_std = (0.229, 0.224, 0.225)
    shard_blocker = "its loss adds every parameter x 0 (so each rank has a gradient for each), outside their layers"

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, UnitRecipe)
        for part in ("encoder", "text", "decoder"):
            check_multiple(self.name, f"{part}_hidden_size", getattr(recipe, f"{part}_hidden_size"),
                           f"{part}_heads", getattr(recipe, f"{part}_heads"))
        if recipe.encoder_hidden_size % 4:
            raise UserError(f"unit recipe: encoder_hidden_size {recipe.encoder_hidden_size} must be a multiple of 4 (2-D sine positions)")
        return UnitModel(unit_config(recipe, vocab_size, special_ids))

    def preflight(self, recipe: Recipe, tokenizer: object) -> None:
        assert isinstance(recipe, UnitRecipe)
        check_vocab_size(tokenizer, recipe.vocab_size)
        if recipe.task_weights.get("itm", 0) > 0:
            check_per_worker_batch(self.name, recipe, "pairs", "ITM needs another image")

    def task_formats(self, recipe: Recipe) -> frozenset[str]:
        assert isinstance(recipe, UnitRecipe)
        return frozenset({"vqa"}) if recipe.task_weights.get("vqa", 0) > 0 else frozenset()  # the vqa task

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, UnitRecipe)
        task = draw_task(recipe.task_weights, batch, recipe.text_classes, recipe.seed)
        if task is None:
            raise UserError(f"unit: this batch supports none of the weighted tasks {sorted(t for t, w in recipe.task_weights.items() if w > 0)} "
                            f"(it supports {supported_tasks(batch, recipe.text_classes) or 'none'})")
        gen = batch_generator(batch.keys, recipe.seed + batch.step)
        inputs = task_inputs(task, batch, recipe.text_classes, gen)
        out = model(**inputs.as_kwargs())
        device = out["loss"].device
        detr_terms = {k: out[k] for k in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error") if k in out}
        return {"loss": out["loss"], f"loss_{task}": out["loss"].detach(), "accuracy": out["accuracy"], **detr_terms,
                "task_index": torch.tensor(float(TASKS.index(task)), device=device)}

    def load(self, model_dir: Path) -> nn.Module:
        return load_pretrained(model_dir, UnitModel, MODEL_TYPE, "UniT")

    # ---- capability "itm" -------------------------------------------------------------------------------
    def score_pairs(
        self, model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        tokenizer: Any = None,
    ) -> torch.Tensor:
        """Match log-odds (B,) of each (image i, text i) pair from the ITM task's queries and head."""
        logits = _unwrap(model).task_logits("itm", pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        return logits[:, 1] - logits[:, 0]

    # ---- capability "detection" ---------------------------------------------------------------------------
    @torch.no_grad()
    def detect_objects(self, model: nn.Module, pixel_values: torch.Tensor) -> list[dict[str, Any]]:
        """DETR's post-processing of the detection task: per image, every query's box (normalised corners), its
        best real class's name and that class's probability."""
        core = _unwrap(model)
        if "detection" not in core.config.detection_tasks:
            raise UserError("this UniT model has no detection head (it was saved before UniT trained detection); "
                            "train a new one to evaluate detection")
        logits, boxes, _ = core.detection_outputs("detection", pixel_values)
        classes = list(core.config.detection_classes)
        return [{"boxes": d["boxes"], "scores": d["scores"], "labels": [classes[i] for i in d["labels"].tolist()]}
                for d in postprocess(logits, boxes)]

    # ---- capability "vqa_answer" --------------------------------------------------------------------------
    @torch.no_grad()
    def answer_questions(self, model: nn.Module, pixel_values: torch.Tensor, questions: list[str], tokenizer: Any) -> list[str]:
        """The VQA task's queries and head: the answer (of ``tasks.VQA_ANSWERS``) to question i about image i.
        Padding is masked, so padding to the longest question gives what training's fixed length gives."""
        core = _unwrap(model)
        enc = tokenizer(list(questions), padding="longest", truncation=True, max_length=core.config.max_text_positions,
                        return_tensors="pt")
        device = pixel_values.device
        logits = core.task_logits("vqa", pixel_values=pixel_values, input_ids=enc["input_ids"].to(device),
                                  attention_mask=enc["attention_mask"].to(device))
        return [VQA_ANSWERS[i] for i in logits.argmax(dim=-1).tolist()]
