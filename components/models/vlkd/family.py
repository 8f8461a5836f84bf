"""VLKD — "Enabling Multimodal Generation on CLIP via Vision-Language Knowledge Distillation" (Dai et al., Findings
of ACL 2022, arXiv 2203.06386).

VLKD gives a dual-stream CLIP a generator: a pretrained BART (the student) is aligned to CLIP's joint space by
distillation from a frozen CLIP (the teacher), after which BART writes text conditioned on CLIP image features.
Two teacher fields, both directories of catalogued models (``catalog:REF`` resolves to one; the train flow trains
them first in the DAG when left empty, so they become the VLKD model's parents):
- ``teacher``: a ``clip`` model, loaded with ``get_family("clip").load``; frozen, never in the optimiser;
- ``language_model``: a ``text-bart`` model (BART pretrained on captions by text infilling); the student starts
  from its weights.
The CLIP teacher was trained with the same run tokenizer, so its text tower reads ``batch.input_ids`` directly;
``build_model`` and ``preflight`` refuse (one line) a CLIP or BART whose vocabulary is not the tokenizer's.

Architecture (``modeling.VlkdModel``): the BART encoder-decoder; the CLIP image tower (vision transformer + visual
projection), frozen; ``image_prefix`` maps each projected CLIP image token ([CLS] + patches) into BART's input space
and these tokens precede the text in the BART encoder; ``text_proj`` maps the mean-pooled BART encoder output into
CLIP's space. Run images are resized (``F.interpolate``) to the CLIP's image size when the two differ.

Objectives (summed with ``*_weight``; the paper's three, its section 3 [M: unchecked details noted]):
- TTDM (text-text distance minimisation): the projected BART caption representation regresses onto the CLIP text
  embedding of the same caption, both L2-normalised (``ttdm_distance``: squared L2 distance = 2 - 2cos, or 1 - cos;
  ``losses.feature_distill_loss``);
- ITCL (image-text contrastive): InfoNCE between the projected BART caption representation and the frozen CLIP
  image embedding, learnable temperature (``losses.info_nce``; identical captions in a batch count as positives;
  contrast within each worker's batch, no cross-worker gather);
- ICTI (image-conditioned text infilling): BART text infilling (``models.infilling.text_infilling``:
  30% of the words in Poisson(3) spans, one ``<mask>`` per span) with the image prefix in the encoder; the decoder
  reconstructs the caption. A ``caption_mask_prob`` share of the captions is masked whole (one ``<mask>``): that is
  the form zero-shot captioning prompts with, so it is trained too [our choice; the paper prompts captioning
  differently, M].
- VQA infilling (ours, for this project's generative VQA evaluation): when the batch carries scene facts, one
  question per scene (``scene_tasks.vqa_questions``) is written ``question: <q> answer: <mask>`` after the image
  prefix and the decoder writes the answer. Skipped for batches without facts. Off (``vqa_weight: 0``) in the paper's
  recipes, ``tiny`` and ``base``: the paper's VQAv2 figure is zero-shot, so a model that trained this task is no
  zero-shot model; ``tiny-vqa-supervised`` is the supervised variant, and its saved ``task_formats`` (``vqa``) make
  evaluation name its no-shot score for what it is (``Family.seen_formats``).
Randomness (masks, captions masked whole, the question picked) draws from ``batch_generator(keys, seed + step)``.

What the checkpoint holds: the BART student, the two bridges and the frozen CLIP image tower (frozen through
``frozen_patterns``), so a saved VLKD model captions, answers and retrieves on its own. The CLIP text tower (only
TTDM needs it) is not saved; ``load`` re-attaches it from the teacher directory named in ``config.json`` when that
still exists, else the loaded model generates and retrieves but cannot compute the training loss.

Capabilities: ``generate`` (``generate_texts``: prompts None -> ``<bos> <mask> <eos>`` after the image prefix, a
caption; ``question: ... answer:`` -> the answer, greedy) and ``retrieval`` (``encode_images``: the CLIP image
embedding; ``encode_texts``: the projected BART caption representation; one space by ITCL, L2-normalised). With
``retrieval`` the evaluation answers VQA by scoring statements, not by generation.

Not implemented: the paper's BART-large and CC3M/COCO scale; its exact pooling and prompt wording [M]; gathering
ITCL features across workers.

Run:  vlforge run train --family vlkd --data shapes --recipe tiny     (trains a clip and a text-bart first)
      vlforge run train --family vlkd --data shapes --teacher catalog:CLIP --teacher catalog:BART
Recipes: ``recipes/tiny.yaml`` and ``recipes/base.yaml`` (BART-base student + a CLIP ViT-B/16 teacher)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from vlforge.components.losses import feature_distill_loss, info_nce
from vlforge.components.models.infilling import text_infilling
from vlforge.components.models.masking import batch_generator
from vlforge.components.models.registry import FAMILY_FILE, Family, ImageTextBatch, Recipe, get_family, register_family, special_token_ids
from vlforge.components.models.registry import unwrap as _unwrap
from vlforge.components.models.text_bart.family import check_specials, decoder_labels
from vlforge.components.models.vlkd.modeling import (
    CONFIG_FILE,
    MODEL_TYPE,
    VlkdModel,
    vision_tower_from,
)

from vlforge.errors import UserError


class VlkdRecipe(Recipe):
    teacher: str | None = Field(None, description="the frozen CLIP teacher: a clip model directory or catalog:REF")
    language_model: str | None = Field(None, description="the BART the student starts from: a text-bart model "
                                       "directory or catalog:REF")
    teacher_recipe: str = Field("tiny", description="without a teacher directory (parameter counts, tests only): "
                                "the clip recipe of the untrained CLIP built instead")
    teacher_overrides: dict[str, Any] = Field(default_factory=dict, description="overrides of that clip recipe")
    language_model_recipe: str = Field("tiny", description="without a language_model directory: the text-bart "
                                       "recipe of the untrained BART built instead")
    language_model_overrides: dict[str, Any] = Field(default_factory=dict)
    ttdm_weight: float = Field(1.0, ge=0)
    itc_weight: float = Field(1.0, ge=0)
    iti_weight: float = Field(1.0, ge=0)
    vqa_weight: float = Field(0.0, ge=0, description="the facts-based VQA infilling task (batches with facts only); "
                              "0 in the paper recipes (zero-shot VQA), 1 in tiny-vqa-supervised")
    ttdm_distance: Literal["l2", "cosine"] = Field("l2", description="l2: squared L2 distance of the unit vectors")
    mask_ratio: float = Field(0.3, gt=0, le=1)
    poisson_lambda: float = Field(3.0, ge=0)
    caption_mask_prob: float = Field(0.25, ge=0, le=1, description="share of captions masked whole in ICTI")
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = Field(100.0, gt=0)


# ---- teachers ---------------------------------------------------------------------------------------
def _model_dir(path: str, field: str, family: str) -> Path:
    model_dir = Path(path).expanduser()
    meta = model_dir / FAMILY_FILE
    if not meta.is_file():
        raise UserError(f"vlkd {field} '{path}' is not a vlforge model directory (no {FAMILY_FILE})")
    found = json.loads(meta.read_text()).get("family")
    if found != family:
        raise UserError(f"vlkd {field} '{path}' is a '{found}' model; vlkd takes a '{family}' model as its {field}")
    return model_dir


def check_teachers_fit(clip_cfg: dict, bart_cfg: dict, vocab_size: int, max_text_length: int) -> None:
    """One-line errors when the CLIP teacher or the BART cannot read the run's token ids, or the encoder lacks
    positions for the image prefix plus the caption (and the answer ``<mask>``)."""
    clip_vocab, bart_vocab = clip_cfg["text_config"]["vocab_size"], bart_cfg["vocab_size"]
    if clip_vocab != vocab_size:
        raise UserError(f"vlkd: the CLIP teacher's text vocabulary has {clip_vocab} tokens but the run tokenizer has "
                        f"{vocab_size}; train the teacher with this run's tokenizer")
    if bart_vocab != vocab_size:
        raise UserError(f"vlkd: the language model's vocabulary has {bart_vocab} tokens but the run tokenizer has "
                        f"{vocab_size}; train the text-bart with this run's tokenizer")
    clip_positions = clip_cfg["text_config"]["max_position_embeddings"]
    if clip_positions < max_text_length:
        raise UserError(f"vlkd: max_text_length {max_text_length} exceeds the CLIP teacher's {clip_positions} text positions")
    vision = clip_cfg["vision_config"]
    needed = (vision["image_size"] // vision["patch_size"]) ** 2 + 1 + max_text_length + 1
    if bart_cfg["max_position_embeddings"] < needed:
        raise UserError(f"vlkd: the language model has {bart_cfg['max_position_embeddings']} positions; the image prefix "
                        f"and a {max_text_length}-token text need {needed} (a text-bart with larger max_positions)")


def _config_dict(model: nn.Module) -> dict:
    return model.config.to_dict()


def with_answer_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_id: int, pad_id: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``<bos> question: q answer: <eos>`` -> ``<bos> question: q answer: <mask> <eos>`` (one column wider)."""
    bsz = input_ids.shape[0]
    ids = torch.cat([input_ids, input_ids.new_full((bsz, 1), pad_id)], dim=1)
    mask = torch.cat([attention_mask, attention_mask.new_zeros((bsz, 1))], dim=1)
    last = attention_mask.sum(1).long() - 1  # the end token of each row
    rows = torch.arange(bsz, device=ids.device)
    ids[rows, last + 1] = ids[rows, last]
    ids[rows, last] = mask_id
    mask[rows, last + 1] = 1
    return ids, mask


def vqa_inputs(batch: ImageTextBatch, specials: dict[str, int], gen: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """One question per scene with facts: (its rows in the batch, ``question: q answer: <mask>`` ids and mask, the
    answer as decoder labels); None when no sample carries facts."""
    from vlforge.components.sources.scene_tasks import vqa_questions

    rows, prompts, answers = [], [], []
    for i, facts in enumerate(batch.facts()):
        questions = vqa_questions(batch.keys[i], facts) if facts else []
        if questions:
            q = questions[int(torch.randint(len(questions), (1,), generator=gen))]
            rows.append(i)
            prompts.append(f"question: {q.question} answer:")
            answers.append(q.answer)
    if not rows:
        return None
    q_ids, q_mask = with_answer_mask(*batch.tokenize(prompts), specials["mask"], specials["pad"])
    a_ids, a_mask = batch.tokenize(answers, max_length=8)
    return torch.tensor(rows, device=q_ids.device), q_ids, q_mask, decoder_labels(a_ids, a_mask)


@register_family
class VlkdFamily(Family):
    name = "vlkd"
    batch_coupled_loss = True  # in-batch contrastive loss: accum_freq > 1 needs GradCache (not implemented here)
    paper = ("Dai et al., Enabling Multimodal Generation on CLIP via Vision-Language Knowledge Distillation, "
             "Findings of ACL 2022 (arXiv 2203.06386)")
    recipe_cls = VlkdRecipe
    capabilities = frozenset({"generate", "retrieval"})
    teachers = {"teacher": ("clip",), "language_model": ("text-bart",)}  # noqa: RUF012
    objectives = ("ttdm (BART text -> CLIP text)", "itcl (BART text vs CLIP image)",
                  "icti (image-conditioned text infilling)", "vqa infilling (with scene facts)")

    # ---- building -----------------------------------------------------------------------------------
    def _teacher(self, recipe: VlkdRecipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        clip = get_family("clip")
        if recipe.teacher:
            return clip.load(_model_dir(recipe.teacher, "teacher", "clip"))
        overrides = {"image_size": recipe.image_size, "max_text_length": recipe.max_text_length, "vocab_size": None,
                     **recipe.teacher_overrides}
        return clip.build_model(clip.recipe(recipe.teacher_recipe, overrides), vocab_size, special_ids)

    def _language_model(self, recipe: VlkdRecipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        bart = get_family("text-bart")
        if recipe.language_model:
            return bart.load(_model_dir(recipe.language_model, "language_model", "text-bart"))
        overrides = {"max_text_length": recipe.max_text_length, "vocab_size": None, **recipe.language_model_overrides}
        return bart.build_model(bart.recipe(recipe.language_model_recipe, overrides), vocab_size, special_ids)

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        """The student from the text-bart weights, the frozen CLIP image tower from the teacher. Without teacher
        directories (parameter counts, tests) both are untrained models of ``teacher_recipe`` and
        ``language_model_recipe``: the train flow always fills the directories (``preflight`` insists)."""
        assert isinstance(recipe, VlkdRecipe)
        check_specials(special_ids, "vlkd")
        teacher = self._teacher(recipe, vocab_size, special_ids)
        bart = self._language_model(recipe, vocab_size, special_ids)
        check_teachers_fit(_config_dict(teacher), _config_dict(bart), vocab_size, recipe.max_text_length)
        bart_specials = getattr(bart.config, "vlforge_special_ids", special_ids)
        if dict(bart_specials) != dict(special_ids):
            raise UserError(f"vlkd: the language model's special tokens {bart_specials} are not the run tokenizer's {special_ids}")
        config = {"special_ids": dict(special_ids), "logit_scale_init": recipe.logit_scale_init,
                  "max_text_length": recipe.max_text_length,
                  "teacher_dir": str(Path(recipe.teacher).expanduser().resolve()) if recipe.teacher else None}
        model = VlkdModel(config, bart=bart, clip_vision=vision_tower_from(teacher))
        model.attach_text_teacher(teacher)
        return model

    def frozen_patterns(self, recipe: Recipe) -> list[str]:
        """The CLIP image tower always; parameters no weighted objective uses (a data-parallel run needs every
        trainable parameter to get a gradient)."""
        assert isinstance(recipe, VlkdRecipe)
        patterns = ["clip_vision.*"]
        if recipe.itc_weight == 0:
            patterns.append("logit_scale")
        if recipe.itc_weight == 0 and recipe.ttdm_weight == 0:
            patterns.append("text_proj.*")
        if recipe.iti_weight == 0 and recipe.vqa_weight == 0:
            patterns += ["image_prefix.*", "bart.model.decoder.*"]
        return patterns

    def preflight(self, recipe: Recipe, tokenizer: Any) -> None:
        assert isinstance(recipe, VlkdRecipe)
        check_specials(special_token_ids(tokenizer), "vlkd")
        for field in ("teacher", "language_model"):
            if not getattr(recipe, field):
                raise UserError(f"vlkd needs its {field} (a {self.teachers[field][0]} model): --teacher catalog:REF, "
                                f"or leave it empty in `vlforge run train` to train one first")
        clip_dir = _model_dir(recipe.teacher, "teacher", "clip")  # type: ignore[arg-type]
        bart_dir = _model_dir(recipe.language_model, "language_model", "text-bart")  # type: ignore[arg-type]
        check_teachers_fit(json.loads((clip_dir / "config.json").read_text()),
                           json.loads((bart_dir / "config.json").read_text()), len(tokenizer), recipe.max_text_length)

    # ---- objectives ---------------------------------------------------------------------------------
    def task_formats(self, recipe: Recipe) -> frozenset[str]:
        assert isinstance(recipe, VlkdRecipe)
        return frozenset({"vqa"}) if recipe.vqa_weight > 0 else frozenset()  # supervised VQA infilling

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, VlkdRecipe)
        core = _unwrap(model)
        specials: dict[str, int] = core.config["special_ids"]
        gen = batch_generator(batch.keys, recipe.seed + batch.step)
        ids, mask = batch.input_ids, batch.attention_mask
        text_side = recipe.ttdm_weight > 0 or recipe.itc_weight > 0
        infill = vqa = None
        if recipe.iti_weight > 0:
            whole = torch.rand(ids.shape[0], generator=gen) < recipe.caption_mask_prob
            noised, noised_mask, _ = text_infilling(
                ids, mask, mask_id=specials["mask"], pad_id=specials["pad"], special_ids=specials.values(),
                ratio=recipe.mask_ratio, poisson_lambda=recipe.poisson_lambda, word_ids=batch.word_ids,
                full_mask=whole, generator=gen)
            infill = (noised, noised_mask, decoder_labels(ids, mask))
        if recipe.vqa_weight > 0 and batch.tokenizer is not None:
            vqa = vqa_inputs(batch, specials, gen)
        out = model(batch.pixel_values, ids if text_side else None, mask if text_side else None, infill=infill, vqa=vqa)
        losses: dict[str, torch.Tensor] = {}
        loss = out["image_embeds"].new_zeros(())
        if text_side:
            text = F.normalize(out["text_embeds"].float(), dim=-1)
        if recipe.ttdm_weight > 0:
            target = self._teacher_text(core, ids, mask)
            if recipe.ttdm_distance == "l2":  # ||s - t||² of unit vectors
                ttdm = feature_distill_loss(text, target, "mse") * text.shape[-1]
            else:
                ttdm = feature_distill_loss(text, target, "cosine")
            loss = loss + recipe.ttdm_weight * ttdm
            losses["ttdm"] = ttdm.detach()
        if recipe.itc_weight > 0:
            same_caption = (ids[:, None, :] == ids[None, :, :]).all(-1)
            image = F.normalize(out["image_embeds"].float(), dim=-1)
            itc = info_nce(text, image, out["logit_scale"], pos_mask=same_caption)
            loss = loss + recipe.itc_weight * itc
            losses["itc"] = itc.detach()
            losses["logit_scale"] = out["logit_scale"].detach()
        for name, weight in (("iti", recipe.iti_weight), ("vqa", recipe.vqa_weight)):
            if name in out:
                loss = loss + weight * out[name]
                losses[name] = out[name].detach()
        return {"loss": loss, **losses}

    def _teacher_text(self, core: VlkdModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        teacher = core.text_teacher
        if teacher is None:
            raise UserError(f"vlkd: TTDM needs the CLIP teacher's text tower, but its directory "
                            f"'{core.config.get('teacher_dir')}' is gone; this checkpoint can still generate and retrieve")
        if teacher.logit_scale.device != ids.device:
            teacher.to(ids.device)
        with torch.no_grad():
            return get_family("clip").encode_texts(teacher, ids, mask).float()

    def after_optimizer_step(self, model: nn.Module, recipe: Recipe) -> None:
        assert isinstance(recipe, VlkdRecipe)
        with torch.no_grad():
            _unwrap(model).logit_scale.clamp_(0, math.log(recipe.max_logit_scale))

    # ---- checkpoints --------------------------------------------------------------------------------
    def save(self, model: nn.Module, out_dir: Path, recipe: Recipe) -> None:
        out_dir = Path(out_dir)
        _unwrap(model).save(out_dir)
        self.write_family_file(out_dir, recipe)

    def load(self, model_dir: Path) -> nn.Module:
        config_file = Path(model_dir) / CONFIG_FILE
        if not config_file.is_file():
            raise UserError(f"'{model_dir}' holds no VLKD checkpoint (no {CONFIG_FILE})")
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type != MODEL_TYPE:
            raise UserError(f"'{model_dir}' holds a '{model_type}' model, not a VLKD one")
        model = VlkdModel.load(Path(model_dir))
        teacher_dir = model.config.get("teacher_dir")
        if teacher_dir and (Path(teacher_dir) / CONFIG_FILE).is_file():
            model.attach_text_teacher(get_family("clip").load(Path(teacher_dir)))
        return model

    # ---- capabilities -------------------------------------------------------------------------------
    def encode_images(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(_unwrap(model).image_features(pixel_values)[0].float(), dim=-1)

    def encode_texts(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(_unwrap(model).encode_text(input_ids, attention_mask).float(), dim=-1)

    @torch.no_grad()
    def generate_texts(self, model: nn.Module, pixel_values: torch.Tensor, tokenizer: Any, prompts: list[str] | None,
                       max_new_tokens: int) -> list[str]:
        """Greedy text from the image: a caption (``prompts`` None: the whole caption is one ``<mask>``) or, for
        ``question: ... answer:`` prompts, the answer (the prompt gets a ``<mask>`` to fill, as trained)."""
        core = _unwrap(model)
        device = core.logit_scale.device
        specials = core.config["special_ids"]
        bsz = pixel_values.shape[0]
        if prompts is None:
            ids = torch.tensor([[specials["bos"], specials["mask"], specials["eos"]]] * bsz, device=device)
            mask = torch.ones_like(ids)
        else:
            enc = tokenizer(list(prompts), padding=True, truncation=True, max_length=core.config["max_text_length"],
                            return_tensors="pt")
            ids, mask = with_answer_mask(enc["input_ids"].to(device), enc["attention_mask"].to(device),
                                         specials["mask"], specials["pad"])
        _, tokens = core.image_features(pixel_values.to(device))
        new = core.greedy(core.image_prefix(tokens), ids, mask, max_new_tokens)
        return [t.strip() for t in tokenizer.batch_decode(new.tolist(), skip_special_tokens=True)]
