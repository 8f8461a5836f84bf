"""VL-T5 and VL-BART — "Unifying Vision-and-Language Tasks via Text Generation" (Cho et al., ICML 2021, arXiv 2102.02779).

Two families, one code path; they differ only in the backbone:
- ``vl-t5``: ``transformers``' ``T5ForConditionalGeneration`` (T5 v1.0 layout: ReLU FFN, tied LM head, relative
  position bias; decoder starts from the pad token, T5's convention);
- ``vl-bart``: ``BartForConditionalGeneration`` (learned positions; the decoder starts from the bos token).

Architecture (``modeling.py``): the encoder reads the text token embeddings followed by a *visual embedding* per
image region, the paper's ``feature projection + box projection + image-order embedding + region-id embedding``
(the region id is the word embedding of the region token ``<vis_extra_id_k>``). The paper's regions are 36 Faster
R-CNN RoIs, whose features come from a detector pretrained on Visual Genome and kept frozen; here a ViT over a patch
grid supplies one feature per patch, and each patch's normalised box ``(x1, y1, x2, y2)`` and area go through the box
projection. The decoder writes every answer as text.

Region features (``region_features``): ``teacher`` (the default, as the paper) takes the ViT of an ``image-teacher``
model (``region_encoder``: a catalog REF or directory; left empty, the train flow trains one first on the same data,
and it becomes a parent in the lineage), copies its weights into the region encoder and freezes them
(``frozen_patterns``); the checkpoint stays self-contained. ``scratch`` trains a small ViT with the rest instead, unless a ``region_encoder`` is given (``--teacher REF``):
``region_features`` only decides whether the flow trains a default teacher when none is given.
Measured on 600 builtin scenes: with a ViT trained from scratch, 600 steps learned fluent but image-independent
captions (the visual embedding's variation across images fell from 0.35 to 0.02: the model learned to ignore the
image while the language prior was easier), so grounding needs features that already carry the image.

Text backbone (``text_init``): the paper starts VL-T5 from t5-base and VL-BART from bart-base. ``text_init`` names
the text model to start from (``catalog:REF`` of an imported or trained model, which becomes a parent in the
lineage): a ``text-bart`` model for VL-BART (``vlforge import model DIR --family text-bart`` takes a Hugging Face
``BartForConditionalGeneration``), a ``text-t5`` model for VL-T5 (``--family text-t5``: a
``T5ForConditionalGeneration``). Its sizes replace the recipe's (width, depth, heads, FFN); its encoder, decoder,
word embeddings and LM head are copied, the region-token rows after its vocabulary and the visual embedding start
fresh. Its vocabulary must be the run's tokenizer's (train with the imported model's tokenizer) and BART's
learned positions must cover the recipe's (the first ones are copied); otherwise a one-line error names both sides.

Objective: one token cross-entropy (``labels`` of the seq2seq model) on a text-to-text task drawn per step with
``training.multitask.sample_task(recipe.task_weights, recipe.seed, step)`` among the tasks the batch supports
(``tasks.py``): multimodal LM (T5 span corruption / BART text infilling of the caption), captioning, VQA
(``"question: <q> answer:"`` -> answer, exactly the evaluation's prompt), image-text matching (``"image text
match: <caption>"`` -> ``true``/``false``, mismatches are other samples' different captions), visual grounding
(phrase -> region token) and grounded captioning (region token -> phrase); the last three use the builtin scenes'
facts and are not offered for batches without them. Prompts, negatives and spans draw from
``masking.batch_generator(keys, seed + step)``, so a step's loss is a pure function of the batch and the step.
Deviations from the paper: one task per step for the whole batch (the paper mixes tasks inside a batch); with
vlforge's own tokenizer one ``<mask>`` sentinel for every span (a released T5 tokenizer's ``<extra_id_k>`` are used
where present: ``tasks.span_sentinels``); T5's relative bias and BART's positions also cover
the region positions; images are patches, not detector regions.

Capabilities:
- "generate": ``generate_texts(model, pixels, tokenizer, prompts | None, max_new_tokens)``: greedy
  ``model.generate`` from ``inputs_embeds``; no prompt means the captioning prompt ``"caption:"``. A generated
  region token reads ``<vis_extra_id_k>``.
- "itm": ``score_pairs`` = log P("true") - log P("false") of the decoder for ``"image text match: <caption>"``.
  The ITM prompt and answers are written with the run's tokenizer, which the evaluation passes (``tokenizer=``).
  The evaluation's VQA scores statements through "itm" and also answers by generation (what the ``vqa`` task
  trains), reporting both.

Fine-tuning (``init_from``, recipe ``tiny-caption``): as the paper fine-tunes its pretrained model on each
downstream task, ``--recipe tiny-caption --set init_from=catalog:REF`` continues a model of the same family on
captioning alone (its weights, architecture, frozen region encoder and tokenizer; no teacher is trained again, and
the pretrained model becomes a parent). The saved recipe forgets ``init_from`` (``Family.save``), so the
evaluation's untrained baseline stays a fresh model. Measured on 600 builtin scenes (BENCHMARKS.md): the 5-task mix
gives captioning one step in five and the captions hardly depend on the image (VL-T5 at 400 steps: 3 distinct
captions for 97 images); 200 fine-tuning steps give 23 (CIDEr 0.719), VL-BART's 46 (CIDEr 1.350).

Run:  vlforge run train --family vl-t5 --data shapes --recipe tiny   (or --family vl-bart)
Recipes: ``recipes/<family>/tiny.yaml`` (2 CPU cores, minutes), ``recipes/<family>/tiny-caption.yaml`` (captioning
fine-tuning) and ``recipes/<family>/base.yaml`` (T5-base / BART-base, the paper's backbones)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from transformers import BartConfig, T5Config
from vlforge.components.models.common.config import VocabRecipe, checked_task_weights
from vlforge.components.models.common.preflight import check_patches, check_token, check_vocab_size
from vlforge.components.models.common.parts import copy_part, load_part, part_family
from vlforge.components.models.masking import batch_generator
from vlforge.components.models.teachers import image_teacher_vit
from vlforge.components.models.registry import FAMILY_FILE, Family, ImageTextBatch, Recipe, register_family
from vlforge.components.models.registry import unwrap as _unwrap
from vlforge.components.models.vlt5.modeling import (
    VLBartForConditionalGeneration,
    VLT5ForConditionalGeneration,
    region_encoder_state,
)
from vlforge.components.models.vlt5.tasks import (
    CAPTION_PROMPT,
    ITM_ANSWERS,
    ITM_PREFIX,
    TASKS,
    TaskContext,
    build_task,
    check_sentinels,
    encode_prompts,
    prefixed,
    region_token,
    supported_tasks,
)
from vlforge.components.training.multitask import sample_task

from vlforge.errors import UserError

DEFAULT_TASK_WEIGHTS = {"lm": 1.0, "caption": 1.0, "vqa": 1.0, "itm": 1.0, "grounding": 0.5, "grounded_caption": 0.5}


class VLSeq2SeqRecipe(VocabRecipe):
    d_model: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1, description="encoder layers")
    num_decoder_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    d_ff: int = Field(512, ge=8, description="feed-forward width")
    dropout: float = Field(0.1, ge=0, lt=1)
    patch_size: int = Field(8, ge=1, description="image patch side: each patch is one region")
    vision_width: int = Field(128, ge=8, description="width of the ViT that gives each patch its region feature")
    vision_layers: int = Field(2, ge=0)
    vision_heads: int = Field(4, ge=1)
    vocab_size: int | None = Field(None, ge=8, description="text vocabulary; None: the tokenizer's size (region tokens come after it)")
    max_prompt_length: int | None = Field(None, ge=4, description="encoder text tokens (prompt + caption); None: max_text_length + 16")
    max_target_length: int | None = Field(None, ge=2, description="decoder label tokens; None: max_text_length")
    initializer_range: float = Field(0.02, gt=0, description="std of the visual embedding's initialisation")
    task_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS),
                                           description=f"sampling weight per task ({', '.join(TASKS)})")
    span_mask_ratio: float = Field(0.15, gt=0, lt=1, description="share of caption words masked (multimodal LM)")
    mean_span_length: float = Field(3.0, ge=1)
    itm_negative_prob: float = Field(0.5, ge=0, le=1, description="chance an ITM caption is another sample's")
    region_features: Literal["teacher", "scratch"] = Field(
        "teacher", description="teacher: the frozen ViT of an image-teacher (region_encoder; the flow trains one "
        "when empty), as the paper's frozen detector; scratch: a small ViT trained with the model")
    region_encoder: str | None = Field(None, description="an image-teacher model directory (or catalog:REF) whose "
                                       "frozen ViT gives the region features (used whenever given)")
    text_init: str | None = Field(None, description="the text backbone to start from: a text-bart model for vl-bart, "
                                  "a text-t5 model for vl-t5 (directory or catalog:REF, imported or trained); its "
                                  "sizes replace the recipe's, the visual embedding starts fresh")
    init_from: str | None = Field(None, description="fine-tuning: a model of this family (directory or catalog:REF) "
                                  "to continue from, with its architecture; the recipe then sets only the training "
                                  "(tasks, steps, lr). The paper fine-tunes its pretrained model on captioning this way")

    @field_validator("task_weights")
    @classmethod
    def _known_tasks(cls, weights: dict[str, float]) -> dict[str, float]:
        return checked_task_weights(weights, TASKS, "task weights must be >= 0 with at least one positive")

    def prompt_length(self) -> int:
        return self.max_prompt_length or self.max_text_length + 16

    def target_length(self) -> int:
        return self.max_target_length or self.max_text_length


class VLT5Recipe(VLSeq2SeqRecipe):
    d_kv: int | None = Field(None, ge=4, description="attention head width; None: d_model / num_heads")
    feed_forward_proj: str = Field("relu", pattern="^(relu|gated-gelu|gated-silu)$", description="relu: T5 v1.0 (t5-base)")
    relative_attention_num_buckets: int = Field(32, ge=2)
    initializer_factor: float = Field(1.0, gt=0, description="T5's init scale (1.0 as T5; embeddings get std = factor)")


class VLBartRecipe(VLSeq2SeqRecipe):
    max_position_embeddings: int | None = Field(None, ge=8, description="learned positions; None: prompt + regions")
    activation_function: str = Field("gelu", pattern="^(gelu|relu|silu|gelu_new)$")
    init_std: float = Field(0.02, gt=0, description="BART's init std")


def _vl_fields(config: Any, recipe: VLSeq2SeqRecipe, text_vocab: int, special_ids: dict[str, int], style: str) -> None:
    """The VL settings the model and the task builders read back from a saved config."""
    config.vl_style = style
    config.vl_image_size = recipe.image_size
    config.vl_patch_size = recipe.patch_size
    config.vl_vision_width = recipe.vision_width
    config.vl_vision_layers = recipe.vision_layers
    config.vl_vision_heads = recipe.vision_heads
    config.vl_text_vocab_size = text_vocab
    config.vl_initializer_range = recipe.initializer_range
    config.vl_max_prompt_length = recipe.prompt_length()
    config.vl_max_target_length = recipe.target_length()
    config.vl_special_ids = dict(special_ids)


def t5_config(recipe: VLT5Recipe, text_vocab: int, regions: int, special_ids: dict[str, int]) -> T5Config:
    pad = special_ids.get("pad", 0)
    return T5Config(
        vocab_size=text_vocab + regions,
        d_model=recipe.d_model,
        d_kv=recipe.d_kv or recipe.d_model // recipe.num_heads,
        d_ff=recipe.d_ff,
        num_layers=recipe.num_layers,
        num_decoder_layers=recipe.num_decoder_layers,
        num_heads=recipe.num_heads,
        relative_attention_num_buckets=recipe.relative_attention_num_buckets,
        dropout_rate=recipe.dropout,
        initializer_factor=recipe.initializer_factor,
        feed_forward_proj=recipe.feed_forward_proj,
        tie_word_embeddings=True,
        pad_token_id=pad,
        eos_token_id=special_ids["eos"],
        decoder_start_token_id=pad,  # T5's convention
    )


def bart_config(recipe: VLBartRecipe, text_vocab: int, regions: int, special_ids: dict[str, int]) -> BartConfig:
    positions = recipe.max_position_embeddings or max(recipe.prompt_length() + regions, recipe.target_length() + 1, 64)
    bos = special_ids.get("bos", special_ids["eos"])
    return BartConfig(
        vocab_size=text_vocab + regions,
        d_model=recipe.d_model,
        encoder_layers=recipe.num_layers,
        decoder_layers=recipe.num_decoder_layers,
        encoder_attention_heads=recipe.num_heads,
        decoder_attention_heads=recipe.num_heads,
        encoder_ffn_dim=recipe.d_ff,
        decoder_ffn_dim=recipe.d_ff,
        activation_function=recipe.activation_function,
        max_position_embeddings=positions,
        dropout=recipe.dropout,
        init_std=recipe.init_std,
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=False,  # as bart-base
        tie_word_embeddings=True,
        pad_token_id=special_ids.get("pad", 0),
        bos_token_id=bos,
        eos_token_id=special_ids["eos"],
        decoder_start_token_id=bos,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
    )


def task_context(core: nn.Module, tokenizer: Any, recipe: VLSeq2SeqRecipe | None = None) -> TaskContext:
    cfg = core.config
    return TaskContext(
        tokenizer=tokenizer,
        special_ids=cfg.vl_special_ids,
        max_prompt_length=cfg.vl_max_prompt_length,
        max_target_length=cfg.vl_max_target_length,
        grid=cfg.vl_image_size // cfg.vl_patch_size,
        text_vocab=cfg.vl_text_vocab_size,
        style=cfg.vl_style,
        span_density=recipe.span_mask_ratio if recipe else 0.15,
        mean_span_length=recipe.mean_span_length if recipe else 3.0,
        itm_negative_prob=recipe.itm_negative_prob if recipe else 0.5,
    )


_VOCAB_ROWS = ("shared.weight", "embed_tokens.weight", "lm_head.weight", "final_logits_bias")


def text_backbone_state(model: nn.Module, source: nn.Module, text_vocab: int, who: str, where: str) -> dict[str, torch.Tensor]:
    """``source``'s weights (a T5 / BART of the same class) for ``model``: the vocabulary tables get the model's own
    region-token rows after the source's ``text_vocab`` rows, learned positions are cut to the model's; UserError
    naming both sides when the vocabulary differs or the source has fewer positions."""
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, value in source.state_dict().items():
        mine = target.get(name)
        if name.endswith(_VOCAB_ROWS) and mine is not None:
            axis = -1 if name.endswith("final_logits_bias") else 0
            if value.shape[axis] != text_vocab:
                raise UserError(f"{who}: text_init '{where}' has a vocabulary of {value.shape[axis]} tokens, this run's "
                                f"tokenizer {text_vocab} (train with the text_init model's tokenizer)")
            value = torch.cat([value, mine.narrow(axis, text_vocab, mine.shape[axis] - text_vocab)], dim=axis)
        elif "embed_positions" in name and mine is not None and value.shape[1:] == mine.shape[1:]:
            if value.shape[0] < mine.shape[0]:
                raise UserError(f"{who}: text_init '{where}' has {value.shape[0] - 2} learned positions, the model "
                                f"{mine.shape[0] - 2} (prompt + regions): set max_position_embeddings to at most "
                                f"{value.shape[0] - 2} or use a larger image patch")
            value = value[: mine.shape[0]]
        out[name] = value
    return out


def decode_generated(ids: list[int], tokenizer: Any, text_vocab: int, special_ids: dict[str, int]) -> str:
    """Generated ids as text: the tokenizer's decoding (special tokens skipped), region tokens as
    ``<vis_extra_id_k>``; decoding stops at the first eos."""
    eos = special_ids["eos"]
    pieces: list[str] = []
    run: list[int] = []
    for t in ids:
        if t == eos:
            break
        if t >= text_vocab:
            pieces.append(tokenizer.decode(run, skip_special_tokens=True))
            pieces.append(region_token(t - text_vocab))
            run = []
        else:
            run.append(t)
    pieces.append(tokenizer.decode(run, skip_special_tokens=True))
    return " ".join(p.strip() for p in pieces if p.strip())


class VLSeq2SeqFamily(Family):
    """The shared family code; subclasses name the backbone."""

    style: ClassVar[Literal["t5", "bart"]]
    model_cls: ClassVar[type[nn.Module]]
    text_family: ClassVar[str]  # the family whose models ``text_init`` takes
    capabilities = frozenset({"generate", "itm"})
    teachers = {"region_encoder": ("image-teacher",)}  # noqa: RUF012
    artifact_fields = ("init_from", "text_init")
    image_mean = (0.5, 0.5, 0.5)  # ViT's normalisation, which the image-teacher region encoder is trained with
    image_std = (0.5, 0.5, 0.5)
    objectives = ("multimodal LM (span corruption / text infilling)", "captioning", "vqa", "itm (true/false)",
                  "visual grounding", "grounded captioning")

    def recipe_dir(self) -> Path:
        return Path(__file__).resolve().parent / "recipes" / self.name

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, VLSeq2SeqRecipe)
        if recipe.init_from:
            return self.continued_model(recipe, vocab_size, special_ids)
        for what, width, heads in (("d_model", recipe.d_model, recipe.num_heads),
                                   ("vision_width", recipe.vision_width, recipe.vision_heads)):
            if width % heads:
                raise UserError(f"{self.name} recipe: {what} {width} is not a multiple of its heads {heads}")
        check_patches(self.name, recipe)
        if "eos" not in special_ids:
            raise UserError(f"{self.name} needs a tokenizer with an eos token")
        text_vocab = recipe.vocab_size or vocab_size
        text_source = None
        if recipe.text_init:
            text_source = load_part(recipe.text_init, "text_init", self.name, (self.text_family,))
            recipe = recipe.model_copy(update=self.backbone_sizes(text_source, str(recipe.text_init)))
        teacher = None
        if recipe.region_encoder:
            teacher = self.region_teacher(recipe)
            tc = teacher.config
            recipe = recipe.model_copy(update={"vision_width": tc.hidden_size, "vision_layers": tc.num_hidden_layers,
                                               "vision_heads": tc.num_attention_heads, "patch_size": tc.patch_size})
        regions = (recipe.image_size // recipe.patch_size) ** 2
        config = self.make_config(recipe, text_vocab, regions, special_ids)
        _vl_fields(config, recipe, text_vocab, special_ids, self.style)
        if teacher is not None:
            config.vl_vision_intermediate = teacher.config.intermediate_size
            config.vl_vision_layer_norm_eps = teacher.config.layer_norm_eps
            config.vl_region_encoder = "image-teacher"
        model = self.model_cls(config)
        if teacher is not None:
            model.visual_embedding.image_encoder.load_state_dict(region_encoder_state(teacher.state_dict()))
        if text_source is not None:
            copy_part(model, text_backbone_state(model, text_source, text_vocab, self.name, str(recipe.text_init)),
                      self.name, "text_init", recipe.text_init, "max_position_embeddings")
        return model

    def backbone_sizes(self, source: nn.Module, where: str) -> dict[str, Any]:
        """The recipe fields the ``text_init`` model at ``where`` decides (UserError for one this family cannot take as it is)."""
        raise NotImplementedError

    def continued_model(self, recipe: VLSeq2SeqRecipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        """The ``init_from`` checkpoint, to train on (fine-tuning); UserError unless it is a model of this family
        written with the same tokenizer."""
        model = self.load(Path(str(recipe.init_from)))
        cfg = model.config
        if cfg.vl_text_vocab_size != (recipe.vocab_size or vocab_size) or dict(cfg.vl_special_ids) != dict(special_ids):
            raise UserError(f"init_from '{recipe.init_from}' was trained with another tokenizer ({cfg.vl_text_vocab_size} "
                            f"tokens, special ids {dict(cfg.vl_special_ids)}; this run's: {recipe.vocab_size or vocab_size}, "
                            f"{dict(special_ids)})")
        return model

    def region_teacher(self, recipe: VLSeq2SeqRecipe) -> nn.Module:
        """The image-teacher's ``ViTModel`` named by ``region_encoder``."""
        return image_teacher_vit(str(recipe.region_encoder), self.name, recipe.image_size)

    def needed_teachers(self, recipe: Recipe) -> dict[str, tuple[str, ...]]:
        assert isinstance(recipe, VLSeq2SeqRecipe)
        return {} if recipe.region_features == "scratch" or recipe.init_from else dict(self.teachers)

    def frozen_patterns(self, recipe: Recipe) -> list[str]:
        assert isinstance(recipe, VLSeq2SeqRecipe)
        if recipe.init_from:  # a continued model keeps its region encoder frozen if it was a teacher's
            config_file = Path(str(recipe.init_from)) / "config.json"  # build_model names a missing checkpoint
            config = json.loads(config_file.read_text()) if config_file.is_file() else {}
            return ["visual_embedding.image_encoder.*"] if config.get("vl_region_encoder") else []
        return ["visual_embedding.image_encoder.*"] if recipe.region_encoder else []

    def make_config(self, recipe: Recipe, text_vocab: int, regions: int, special_ids: dict[str, int]) -> Any:
        raise NotImplementedError

    def preflight(self, recipe: Recipe, tokenizer: Any) -> None:
        assert isinstance(recipe, VLSeq2SeqRecipe)
        check_token(self.name, tokenizer, "eos", ", which the text-to-text tasks need")
        check_sentinels(self.name, tokenizer)
        check_vocab_size(tokenizer, recipe.vocab_size)
        if recipe.text_init and not recipe.init_from:
            part_family(recipe.text_init, "text_init", self.name, (self.text_family,))

    def task_formats(self, recipe: Recipe) -> frozenset[str]:
        assert isinstance(recipe, VLSeq2SeqRecipe)
        return frozenset({"vqa"}) if recipe.task_weights.get("vqa", 0) > 0 else frozenset()  # the vqa task

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, VLSeq2SeqRecipe)
        if batch.tokenizer is None:
            raise RuntimeError(f"{self.name} writes task prompts and needs the batch's tokenizer")
        core = _unwrap(model)
        facts = batch.facts()
        offered = supported_tasks(batch.captions, batch.keys, facts)
        weights = {t: w for t, w in recipe.task_weights.items() if t in offered and w > 0}
        if not weights:
            raise UserError(f"{self.name}: no task with a positive weight fits this batch (offered: {sorted(offered)})")
        task = sample_task(weights, recipe.seed, batch.step)
        gen = batch_generator(batch.keys, recipe.seed + batch.step)
        ids, mask, labels = build_task(task, task_context(core, batch.tokenizer, recipe), batch.captions, batch.keys,
                                       facts, batch.input_ids.cpu(), batch.attention_mask.cpu(), gen)
        device = batch.input_ids.device
        out = model(pixel_values=batch.pixel_values, input_ids=ids.to(device), attention_mask=mask.to(device),
                    labels=labels.to(device))
        loss = out.loss
        return {"loss": loss, f"loss_{task}": loss.detach(),
                "task_index": torch.tensor(float(TASKS.index(task)), device=device)}

    def load(self, model_dir: Path) -> nn.Module:
        model_dir = Path(model_dir)
        config_file, family_file = model_dir / "config.json", model_dir / FAMILY_FILE
        if not config_file.is_file():
            raise UserError(f"'{model_dir}' holds no {self.name} checkpoint (no config.json)")
        model_type = json.loads(config_file.read_text()).get("model_type")
        family = json.loads(family_file.read_text()).get("family") if family_file.is_file() else self.name
        if model_type != self.style or family != self.name:
            raise UserError(f"'{model_dir}' holds a '{family}' ({model_type}) model, not a {self.name} one")
        return self.model_cls.from_pretrained(model_dir, local_files_only=True)

    # ---- capability "generate" ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate_texts(self, model: nn.Module, pixel_values: torch.Tensor, tokenizer: Any,
                       prompts: list[str] | None, max_new_tokens: int) -> list[str]:
        """Greedy generation for each image, from ``prompts`` (None: the captioning prompt ``"caption:"``)."""
        core = _unwrap(model)
        cfg = core.config
        device = next(core.parameters()).device
        texts = [CAPTION_PROMPT] * pixel_values.shape[0] if prompts is None else list(prompts)
        ids, mask = encode_prompts(task_context(core, tokenizer), texts)
        embeds, enc_mask = core.embed_inputs(pixel_values.to(device), ids.to(device), mask.to(device))
        out = core.generate(inputs_embeds=embeds, attention_mask=enc_mask, max_new_tokens=max_new_tokens,
                            do_sample=False, num_beams=1, decoder_start_token_id=cfg.decoder_start_token_id,
                            eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
        return [decode_generated(row.tolist(), tokenizer, cfg.vl_text_vocab_size, cfg.vl_special_ids) for row in out]

    # ---- capability "itm" --------------------------------------------------------------------------------
    @torch.no_grad()
    def score_pairs(self, model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, tokenizer: Any = None) -> torch.Tensor:
        """Match log-odds (B,) of (image i, caption i): log P("true") - log P("false") of the decoder, each the
        sum of its tokens' log-probabilities, after ``"image text match: <caption>"`` (written with ``tokenizer``,
        the model's own, which this family needs)."""
        if tokenizer is None:
            raise ValueError("VL-T5 / VL-BART score pairs with the model's tokenizer: pass tokenizer=")
        core = _unwrap(model)
        device = next(core.parameters()).device
        ctx = task_context(core, tokenizer)
        words = ctx.words([ITM_PREFIX, *ITM_ANSWERS])
        cache = {"itm_prefix": words[0], **dict(zip(ITM_ANSWERS, words[1:]))}
        ids, mask = prefixed(ctx, cache["itm_prefix"], input_ids, attention_mask)
        embeds, enc_mask = core.embed_inputs(pixel_values.to(device), ids.to(device), mask.to(device))
        encoded = core.get_encoder()(inputs_embeds=embeds, attention_mask=enc_mask)
        logp = []
        for answer in ITM_ANSWERS:
            labels = torch.tensor(cache[answer] + [ctx.special_ids["eos"]], device=device).repeat(ids.shape[0], 1)
            logits = core(encoder_outputs=encoded, attention_mask=enc_mask, labels=labels).logits
            logp.append(torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[..., None]).squeeze(-1).sum(-1))
        return logp[0] - logp[1]


@register_family
class VLT5Family(VLSeq2SeqFamily):
    name = "vl-t5"
    paper = "Cho et al., Unifying Vision-and-Language Tasks via Text Generation, ICML 2021 (arXiv 2102.02779)"
    recipe_cls = VLT5Recipe
    style = "t5"
    model_cls = VLT5ForConditionalGeneration
    text_family = "text-t5"

    def backbone_sizes(self, source: nn.Module, where: str) -> dict[str, Any]:
        config = source.config
        # transformers 5 marks a T5 v1.1 by scale_decoder_outputs=False (its tie_word_embeddings is always True) and
        # loads a v1.1 checkpoint's own LM head untied; VL-T5 (v1.0, as t5-base) scales and ties: it could not
        # hold either without silently changing the model
        scaled = getattr(config, "scale_decoder_outputs", config.tie_word_embeddings)
        own_head = source.get_output_embeddings().weight.data_ptr() != source.get_input_embeddings().weight.data_ptr()
        if not scaled or own_head:
            raise UserError(f"vl-t5: text_init '{where}' is a T5 v1.1-style model (LM head untied from the "
                            "word embeddings, decoder output unscaled); vl-t5 is T5 v1.0 as t5-base (tied, scaled)")
        if config.relative_attention_max_distance != T5Config().relative_attention_max_distance:
            raise UserError(f"vl-t5: text_init '{where}' has relative_attention_max_distance "
                            f"{config.relative_attention_max_distance}, vl-t5's is {T5Config().relative_attention_max_distance}")
        return {"d_model": config.d_model, "d_kv": config.d_kv, "d_ff": config.d_ff, "num_layers": config.num_layers,
                "num_decoder_layers": config.num_decoder_layers, "num_heads": config.num_heads,
                "feed_forward_proj": config.feed_forward_proj,
                "relative_attention_num_buckets": config.relative_attention_num_buckets}

    def make_config(self, recipe: Recipe, text_vocab: int, regions: int, special_ids: dict[str, int]) -> T5Config:
        assert isinstance(recipe, VLT5Recipe)
        return t5_config(recipe, text_vocab, regions, special_ids)


@register_family
class VLBartFamily(VLSeq2SeqFamily):
    name = "vl-bart"
    paper = "Cho et al., Unifying Vision-and-Language Tasks via Text Generation, ICML 2021 (arXiv 2102.02779)"
    recipe_cls = VLBartRecipe
    style = "bart"
    model_cls = VLBartForConditionalGeneration
    text_family = "text-bart"

    def backbone_sizes(self, source: nn.Module, where: str) -> dict[str, Any]:
        config = source.config
        if config.scale_embedding:  # VL-BART adds its visual embedding to unscaled word embeddings, as bart-base
            raise UserError(f"vl-bart: text_init '{where}' scales its embeddings by sqrt(d_model) (scale_embedding); "
                            "vl-bart, as bart-base, does not")
        return {"d_model": config.d_model, "num_layers": config.encoder_layers, "num_decoder_layers": config.decoder_layers,
                "num_heads": config.encoder_attention_heads, "d_ff": config.encoder_ffn_dim,
                "activation_function": config.activation_function}

    def make_config(self, recipe: Recipe, text_vocab: int, regions: int, special_ids: dict[str, int]) -> BartConfig:
        assert isinstance(recipe, VLBartRecipe)
        return bart_config(recipe, text_vocab, regions, special_ids)
