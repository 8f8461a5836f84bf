"""UNIMO — "UNIMO: Towards Unified-Modal Understanding and Generation via Cross-Modal Contrastive Learning"
(Li et al., ACL 2021, arXiv 2012.15409).

Architecture (``modeling.UnimoModel``, model type ``vlforge_unimo``): ONE transformer (``transformers``'
``BertEmbeddings`` + ``BertEncoder``; UNIMO-base is RoBERTa-base sized) reads image-only, text-only and image+text
sequences ``[IMG, patches ; text]``. A UniLM-style 3-D attention mask switches it between a bidirectional encoder and
a seq2seq model (source bidirectional, target causal). Images enter as ViT patches instead of the paper's
Faster R-CNN region features (no detector here). Nothing is frozen.

One step trains on the three kinds of data UNIMO mixes, built from each paired batch deterministically by position:
sample ``i`` is paired, image-only or text-only by ``stream_pattern[i % len(stream_pattern)]`` (default ``PPIT``:
half paired, a quarter images whose caption is dropped, a quarter captions whose image is dropped).

Objectives (``UnimoModel.forward``), summed with weight 1 each (the recipe's ``*_weight``):
- CMCL, cross-modal contrastive learning (``losses.info_nce`` with a multi-positive ``pos_mask``, UNIMO's
  ``-log Σ_pos / Σ_all``): images (paired + image-only, each alone through the transformer, [IMG] state) against
  texts (captions of paired and text-only samples, plus rewrites, each alone, [CLS] state). A text is a positive of
  the image it is the caption of (or one whose caption is the identical string) and of the related samples
  retrieved for it (below). Text rewriting, by the recipe's ``rewrites``:
  - ``model`` (the default, as the paper: no oracle; ``mlm_rewrites.py``, any caption): hard negatives at word,
    phrase and sentence level, the caption's content words masked and refilled by the model's own MLM head (no
    grad, eval mode, the top prediction other than the original). No positive rewrites: UNIMO's are
    back-translations, and there is no translation model here.
  - ``facts`` (the scene-facts oracle; ``rewrites.py``, a sample with scene facts, i.e. the builtin shapes):
    positives are captions regenerated from the same facts (UNIMO: back-translation paraphrases); hard negatives
    change one colour, one shape or one relation (UNIMO: scene-graph rewriting), each verified to be false of the
    image; and every in-batch text true of an image is its positive, judged from the ground-truth facts
    (``rewrites.holds``). Samples without facts get no rewrites.
  ``auto`` takes the facts route where a sample has facts and the model route elsewhere; ``none`` rewrites nothing.
  Retrieval of related samples, by similarity as UNIMO (``memory.py``; ``memory_size``, ``related_k``): a FIFO
  memory of the contrastive images and captions of earlier batches (detached features, the CMCL space); each paired
  image adds its ``related_k`` most similar memory images, each paired caption its most similar memory captions,
  to the pair's positives. The memory is model buffers, so it is saved in the checkpoint and a resumed run goes on
  with it; it is filled only in training mode (validation reads it).
- MLM (``masking.mask_tokens``, whole-word, 15%): text-only captions alone and paired captions with their image.
- Seq2seq LM (``losses.lm_loss``): the caption generated from the image (source: the image and <bos>; target:
  the caption, causal); and, where the batch has facts, VQA as generation: source the image and
  ``"question: <q> answer:"``, target the answer (``scene_tasks.vqa_questions``, one question per paired sample).
- Masked patch regression on image-only samples (``masking.masked_patch_loss``, 15% of patches masked; stands in for
  UNIMO's masked region feature regression; its region classification needs detector labels and is not done).

Data without facts (e.g. emoji captions): no VQA; the facts route has nothing to rewrite or judge, so there CMCL
is in-batch InfoNCE plus the retrieved related samples.
Measured (BENCHMARKS.md, issue 21): on emoji-noto at the tiny budget (300 steps), ITM pair ranking 0.601 with
``rewrites: model``, 0.607 with ``none`` and 0.638 with ``none`` and ``related_k: 0`` (plain in-batch InfoNCE;
untrained 0.491), retrieval alike: the rewrites and the retrieval do not measurably help at this scale.

Initialisation (``text_init``): UNIMO starts its transformer from RoBERTa. ``text_init`` names a ``text-mlm`` model
(``catalog:REF`` of an imported BERT-style checkpoint, ``vlforge import model DIR --family text-mlm``, or of a
trained one; it becomes a parent in the lineage) whose word, position and token-type embeddings, embedding
LayerNorm, every encoder layer and the MLM transform and bias go into UNIMO's text embeddings, encoder and LM head
(the LM decoder stays tied to the word embeddings); the image embeddings, pixel head and temperature start fresh.
Its width, depth, heads and MLP must be the recipe's, its vocabulary the run's tokenizer's (train with the
imported model's tokenizer), and it needs at least the recipe's text positions (the first ones are copied); any
mismatch is a one-line error naming both sides. Empty (the default), everything starts at random.

Not implemented: the detector features, back-translation, UNIMO's single-modal corpora (text-only data is the
dropped-image captions; related samples come from the memory of earlier batches, not from a corpus searched
offline), and the paper's downstream fine-tuning.

Data parallelism (``gather_features``, on by default, as CLIP and VLMo): CMCL contrasts every worker's images and
texts against the global batch. The features are gathered with their gradients (``losses.gather_ragged_with_grad``:
the rewrites make the text count differ per worker), and the texts and facts with ``losses.gather_objects``, so a
text from another worker that is true of an image is judged by the same rule as a local one. Every worker pushes the
gathered images and captions into its memory (with or without ``gather_features``), so all hold the same memory:
DDP's buffer broadcast changes nothing, and rank 0's checkpoint is every rank's. Each worker makes its own samples'
model rewrites; they are gathered as texts like the facts rewrites.

Capabilities: "retrieval" (``encode_images`` / ``encode_texts``: the [IMG] / [CLS] state of each modality alone,
L2-normalised, the CMCL space) and "generate" (``generate_texts``: greedy seq2seq decoding, a caption without a
prompt, or an answer after ``question: ... answer:``). Randomness (masks, rewrites, question choice) draws from
``masking.batch_generator`` / ``random.Random`` seeded by (recipe seed, step, keys); the model rewrites' fillings
and the retrieval are functions of the weights and the memory.

Run:  vlforge run train --family unimo --data REF --recipe tiny
Recipes: ``recipes/tiny.yaml`` (2 CPU cores, minutes), ``recipes/base.yaml`` (UNIMO-base)."""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from vlforge.components.losses import gather_objects
from vlforge.components.models.common.config import MaskedLMRecipe, PatchRecipe, TransformerRecipe, VocabRecipe, dropouts, recipe_sizes
from vlforge.components.models.common.preflight import check_heads, check_patches, check_token, check_vocab_size, per_worker_batch, require_special_ids
from vlforge.components.models.masking import (
    IGNORE_INDEX,
    batch_generator,
    mask_tokens,
    random_patch_mask,
)
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe, load_pretrained, register_family
from vlforge.components.models.registry import unwrap as _unwrap
from vlforge.components.models.unimo.mlm_rewrites import LEVELS, ModelRewrite, mlm_rewrites
from vlforge.components.models.unimo.modeling import MODEL_TYPE, UnimoConfig, UnimoModel
from vlforge.components.models.unimo.rewrites import (
    holds,
    negative_rewrite,
    positive_rewrites,
)
from vlforge.components.sources.scene_tasks import vqa_questions

from vlforge.errors import UserError

STREAMS = {"P": "paired", "I": "image", "T": "text"}
TASK_MLM, TASK_CAPTION, TASK_VQA = 0, 1, 2


class UnimoRecipe(MaskedLMRecipe, VocabRecipe, PatchRecipe, TransformerRecipe):
    dropout: float = Field(0.1, ge=0, lt=1)
    initializer_range: float = Field(0.02, gt=0, description="std of the Linear/Embedding initialisation")
    max_position_embeddings: int | None = Field(
        None, ge=4, description="text positions (prompt + generated); None: 2 x max_text_length")
    stream_pattern: str = Field("PPIT", pattern="^[PIT]*P[PIT]*$", description="sample i is paired (P), image-only (I) "
                                "or text-only (T) by pattern[i % len]; needs at least one P")
    mim_mask_ratio: float = Field(0.15, gt=0, lt=1, description="share of an image-only sample's patches masked")
    rewrites: Literal["model", "facts", "auto", "none"] = Field(
        "model", description="CMCL text rewriting: model (as the paper, no oracle: hard negatives by the model's own "
        "MLM head, any caption), facts (the scene-facts oracle: positive and verified hard-negative rewrites, in-batch "
        "positives judged from the facts; samples without facts get none), auto (facts where a sample has them, else "
        "model), none")
    positive_rewrites: int = Field(1, ge=0, description="captions regenerated from the facts per paired sample "
                                   "(the facts route)")
    negative_rewrites: list[Literal["color", "shape", "relation"]] = Field(
        default_factory=lambda: ["color", "shape", "relation"], description="hard-negative rewrites per paired sample "
        "(the facts route)")
    model_rewrite_levels: list[Literal["word", "phrase", "sentence"]] = Field(
        default_factory=lambda: list(LEVELS), description="hard-negative rewrites per paired sample (the model route)")
    memory_size: int = Field(1024, ge=0, description="images and captions of earlier batches kept (each) to retrieve "
                             "related samples from by similarity; 0: no retrieval")
    related_k: int = Field(1, ge=0, description="related images and captions retrieved per paired sample from the "
                           "memory, added to its CMCL positives")
    vqa_task: bool = Field(True, description="train VQA as generation from the facts' questions")
    cmcl_weight: float = Field(1.0, ge=0)
    mlm_weight: float = Field(1.0, ge=0)
    seq2seq_weight: float = Field(1.0, ge=0)
    vqa_weight: float = Field(1.0, ge=0)
    mim_weight: float = Field(1.0, ge=0)
    gather_features: bool = Field(True, description="contrast against the global batch: features gathered across "
                                  "data-parallel workers, with their texts and facts so the positives stay exact")
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = Field(100.0, gt=0)
    text_init: str | None = Field(None, description="a text-mlm model (directory or catalog:REF, e.g. an imported "
                                  "BERT/RoBERTa-style encoder) whose embeddings, layers and MLM transform start the "
                                  "transformer, as UNIMO starts from RoBERTa; its sizes must be the recipe's")


def unimo_config(recipe: UnimoRecipe, vocab_size: int, special_ids: dict[str, int]) -> UnimoConfig:
    return UnimoConfig(
        vocab_size=recipe.vocab_size or vocab_size,
        **recipe_sizes(recipe),
        **dropouts(recipe.dropout),
        max_position_embeddings=recipe.max_position_embeddings or 2 * recipe.max_text_length,
        type_vocab_size=2,  # 0 text, 1 image
        initializer_range=recipe.initializer_range,
        pad_token_id=special_ids.get("pad", 0),
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        logit_scale_init=recipe.logit_scale_init,
        related_memory_size=recipe.memory_size if recipe.related_k else 0,
        tie_word_embeddings=True,
    )


# BertForMaskedLM (a text-mlm model) parameter names -> UnimoModel's
_BERT_TO_UNIMO = (("bert.embeddings.", "embeddings."), ("bert.encoder.", "encoder."),
                  ("cls.predictions.transform.", "lm_head."), ("cls.predictions.decoder.bias", "lm_head.decoder.bias"),
                  ("cls.predictions.bias", "lm_head.decoder.bias"))


def load_text_init(model: UnimoModel, source: str) -> None:
    """Copy the text-mlm model at ``source`` into ``model``'s text embeddings, encoder and LM head (see the module
    docstring); one-line UserErrors naming both sides when its sizes, vocabulary or positions do not fit."""
    from vlforge.components.models.common.parts import copy_part, load_part

    bert = load_part(source, "text_init", "unimo", ("text-mlm",))
    src, dst = bert.config, model.config
    for what, theirs, ours in (("hidden_size", src.hidden_size, dst.hidden_size),
                               ("num_layers", src.num_hidden_layers, dst.num_hidden_layers),
                               ("num_heads", src.num_attention_heads, dst.num_attention_heads),
                               ("MLP width", src.intermediate_size, dst.intermediate_size)):
        if theirs != ours:
            raise UserError(f"unimo: text_init '{source}' does not fit the recipe: its {what} is {theirs}, the recipe's {ours}")
    if src.vocab_size != dst.vocab_size:
        raise UserError(f"unimo: text_init '{source}' has a vocabulary of {src.vocab_size} tokens, this run's model "
                        f"{dst.vocab_size} (train with the text_init model's tokenizer)")
    if src.max_position_embeddings < dst.max_position_embeddings:
        raise UserError(f"unimo: text_init '{source}' has {src.max_position_embeddings} text positions, the recipe's "
                        f"max_position_embeddings is {dst.max_position_embeddings}")
    state: dict[str, torch.Tensor] = {}
    for name, value in bert.state_dict().items():
        if name == "cls.predictions.decoder.weight":  # tied to the word embeddings, copied with them
            continue
        for old, new in _BERT_TO_UNIMO:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        if name == "embeddings.position_embeddings.weight":
            value = value[: dst.max_position_embeddings]
        elif name == "embeddings.token_type_embeddings.weight":  # RoBERTa has one type: row 1 (images) stays fresh
            value = torch.cat([value[: dst.type_vocab_size], model.embeddings.token_type_embeddings.weight.detach()[len(value):]])
        state[name] = value
    copy_part(model, state, "unimo", "text_init", source, "hidden_size, num_layers, num_heads, mlp_ratio")


def split_streams(batch_size: int, pattern: str) -> dict[str, list[int]]:
    """Row indices of the paired, image-only and text-only streams: row i goes to ``pattern[i % len(pattern)]``."""
    out: dict[str, list[int]] = {name: [] for name in STREAMS.values()}
    for i in range(batch_size):
        out[STREAMS[pattern[i % len(pattern)]]].append(i)
    return out


def _rng(recipe: UnimoRecipe, batch: ImageTextBatch, key: str, purpose: str) -> random.Random:
    return random.Random(f"{recipe.seed}-{batch.step}-{key}-{purpose}")


def rewrite_route(recipe: UnimoRecipe, facts: dict | None) -> str | None:
    """A sample's route: "facts" (its caption rewritten and its positives judged from its facts), "model" (rewritten
    by the MLM head) or None (see ``UnimoRecipe.rewrites``)."""
    if recipe.rewrites == "auto":
        return "facts" if facts is not None else "model"
    if recipe.rewrites == "facts":
        return "facts" if facts is not None else None
    return None if recipe.rewrites == "none" else "model"


def cmcl_texts(batch: ImageTextBatch, recipe: UnimoRecipe, streams: dict[str, list[int]]) -> tuple[list[str], list[str | None], list[str]]:
    """The contrastive texts: captions of the paired and text-only samples, then each paired sample's facts-based
    rewrites (where its route is "facts"; ``model_rewrites`` makes the others). Returns the texts, the key of the
    sample each is the caption of (None for a rewrite), and each text's kind ("caption", "positive", or the changed
    fact)."""
    facts = batch.facts()
    rows = streams["paired"] + streams["text"]
    entries: list[tuple[str, str | None, str]] = [(batch.captions[i], batch.keys[i], "caption") for i in rows]
    for i in streams["paired"] if batch.tokenizer is not None else []:  # rewrites must be tokenised
        if rewrite_route(recipe, facts[i]) != "facts":
            continue
        key = batch.keys[i]
        for text in positive_rewrites(facts[i], batch.captions[i], _rng(recipe, batch, key, "positive"), recipe.positive_rewrites):
            entries.append((text, None, "positive"))
        for kind in recipe.negative_rewrites:
            rewrite = negative_rewrite(facts[i], kind, _rng(recipe, batch, key, kind))
            if rewrite is not None:
                entries.append((rewrite.text, None, kind))
    texts, owners, kinds = (list(x) for x in zip(*entries)) if entries else ([], [], [])
    return texts, owners, kinds  # type: ignore[return-value]


def model_rewrites(core: UnimoModel, batch: ImageTextBatch, recipe: UnimoRecipe, paired: list[int]) -> list[ModelRewrite]:
    """The hard negatives of the paired samples whose route is "model" (``row``: the batch row): their captions
    rewritten at each of ``recipe.model_rewrite_levels`` by the model's own MLM head (``mlm_rewrites``), in eval
    mode and without gradients; the choices are seeded by (recipe seed, step, key)."""
    facts = batch.facts()
    rows = [i for i in paired if rewrite_route(recipe, facts[i]) == "model"]
    if not rows or batch.tokenizer is None or not recipe.model_rewrite_levels:
        return []
    special: dict[str, int] = core.config.vlforge_special_ids

    def predict(ids: torch.Tensor, mask: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return core.lm_head(core.encode(input_ids=ids, text_valid=mask)[where])

    was_training = core.training
    core.eval()  # no dropout: the rewrites depend on the weights and the seeded choices only
    try:
        found = mlm_rewrites(predict, batch.tokenizer, batch.input_ids[rows], batch.attention_mask[rows],
                             None if batch.word_ids is None else batch.word_ids[rows],
                             [_rng(recipe, batch, batch.keys[i], "model-rewrite") for i in rows],
                             recipe.model_rewrite_levels, special["mask"], set(special.values()), core.config.vocab_size)
    finally:
        core.train(was_training)
    return [dataclasses.replace(r, row=rows[r.row]) for per_row in found for r in per_row]


def sample_id(key: str) -> int:
    """A sample key as a non-negative int64 (the memory stores keys in tensors; -1 marks a rewrite or no sample)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


CmclImage = tuple[Any, str, str]  # (facts or None, key, caption) of a contrastive image


def cmcl_images(batch: ImageTextBatch, recipe: UnimoRecipe, image_rows: list[int]) -> list[CmclImage]:
    """The contrastive images, with their facts only on the facts route: elsewhere no positive is judged from them."""
    facts = batch.facts()
    return [(facts[i] if rewrite_route(recipe, facts[i]) == "facts" else None, batch.keys[i], batch.captions[i])
            for i in image_rows]


def cmcl_positives(images: list[CmclImage], texts: list[str], owners: list[str | None]) -> torch.Tensor:
    """(images, texts) bool: a text is a positive of an image when it is true of the image's scene
    (``rewrites.holds``); where that cannot be judged (no facts given: off the facts route; a text outside the
    shapes grammar), when it is the image's own caption or the identical string."""
    pos = torch.zeros(len(images), len(texts), dtype=torch.bool)
    for a, (facts, key, caption) in enumerate(images):
        for b, (text, owner) in enumerate(zip(texts, owners)):
            truth = holds(text, facts) if facts is not None else None
            pos[a, b] = truth if truth is not None else (owner == key or text == caption)
    return pos


def global_cmcl_positives(images: list[CmclImage], texts: list[str], owners: list[str | None]) -> torch.Tensor:
    """``cmcl_positives`` over the global batch: every worker's contrastive images and texts, in rank order (what
    ``losses.gather_ragged_with_grad`` gives the features), so a text from another worker that is true of an image
    is its positive, not a false negative. Outside torch.distributed: the local mask."""
    parts = gather_objects((images, texts, owners))
    return cmcl_positives([i for p in parts for i in p[0]], [t for p in parts for t in p[1]], [o for p in parts for o in p[2]])


def _prompt_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])  # truncated by the caller


def vqa_rows(batch: ImageTextBatch, recipe: UnimoRecipe, rows: list[int], special: dict[str, int],
             max_positions: int) -> tuple[list[int], list[list[int]], list[int]]:
    """One facts-derived question per paired sample as a seq2seq text ``<bos> question: q answer: a <eos>``.
    Returns the sample rows, the token ids and each one's source length (<bos> + prompt)."""
    facts = batch.facts()
    out_rows, out_ids, out_src = [], [], []
    if batch.tokenizer is None or not recipe.vqa_task:
        return out_rows, out_ids, out_src
    for i in rows:
        if facts[i] is None:
            continue
        questions = vqa_questions(batch.keys[i], facts[i])
        q = questions[int(_rng(recipe, batch, batch.keys[i], "vqa").random() * len(questions))]
        prompt = _prompt_ids(batch.tokenizer, f"question: {q.question} answer:")
        answer = _prompt_ids(batch.tokenizer, q.answer) + [special["eos"]]
        prompt = prompt[max(0, len(prompt) + len(answer) + 1 - max_positions):]  # keep the end of a long prompt
        out_rows.append(i)
        out_ids.append([special["bos"], *prompt, *answer])
        out_src.append(1 + len(prompt))
    return out_rows, out_ids, out_src


def prepare_inputs(core: UnimoModel, batch: ImageTextBatch, recipe: UnimoRecipe) -> dict[str, torch.Tensor]:
    """The tensors ``UnimoModel.forward`` takes, built from one paired batch (see the module docstring)."""
    special: dict[str, int] = core.config.vlforge_special_ids
    device = batch.input_ids.device
    gen = batch_generator(batch.keys, recipe.seed + batch.step)
    streams = split_streams(len(batch.keys), recipe.stream_pattern)
    paired, image_only, text_only = streams["paired"], streams["image"], streams["text"]
    ids, mask, pixels = batch.input_ids, batch.attention_mask, batch.pixel_values
    mlm_ids, mlm_labels = mask_tokens(
        ids, mask, mask_id=special["mask"], vocab_size=core.config.vocab_size, special_ids=special.values(),
        word_ids=batch.word_ids, p=recipe.mlm_probability, whole_word=recipe.whole_word_masking, generator=gen,
    )
    # image pass: contrastive images (paired, image-only) clean, then the image-only ones with masked patches
    image_rows = paired + image_only
    n_patches = core.image_embeddings.num_patches
    patch_mask = torch.zeros(len(image_rows) + len(image_only), n_patches, dtype=torch.bool, device=device)
    if image_only:
        patch_mask[len(image_rows):] = random_patch_mask(len(image_only), n_patches, recipe.mim_mask_ratio, device, gen)
    # text pass: contrastive texts (captions, facts rewrites, model rewrites), then the text-only captions masked
    texts, owners, _ = cmcl_texts(batch, recipe, streams)
    n_captions = len(paired) + len(text_only)
    cap_rows = paired + text_only
    text_ids, text_mask = ids[cap_rows], mask[cap_rows]
    if len(texts) > n_captions:
        r_ids, r_mask = batch.tokenize(texts[n_captions:], max_length=ids.shape[1])
        text_ids, text_mask = torch.cat([text_ids, r_ids]), torch.cat([text_mask, r_mask])
    rewritten = model_rewrites(core, batch, recipe, paired)
    if rewritten:  # the caption's own tokens, refilled in place: the caption's mask
        m_ids = torch.tensor([r.ids for r in rewritten], dtype=ids.dtype, device=device)
        text_ids, text_mask = torch.cat([text_ids, m_ids]), torch.cat([text_mask, mask[[r.row for r in rewritten]]])
        texts, owners = texts + [r.text for r in rewritten], owners + [None] * len(rewritten)
    n_cmcl_texts = text_ids.shape[0]
    text_ids, text_mask = torch.cat([text_ids, mlm_ids[text_only]]), torch.cat([text_mask, mask[text_only]])
    text_mlm = torch.full_like(text_ids, IGNORE_INDEX)
    text_mlm[n_cmcl_texts:] = mlm_labels[text_only]
    # joint pass: paired MLM (bidirectional), caption generation, VQA generation (seq2seq)
    max_positions = core.config.max_position_embeddings
    v_rows, v_ids, v_src = vqa_rows(batch, recipe, paired, special, max_positions)
    width = max([ids.shape[1], *(len(v) for v in v_ids)])
    n_p = len(paired)
    joint_ids = torch.full((2 * n_p + len(v_rows), width), special.get("pad", 0), dtype=ids.dtype, device=device)
    joint_mask = torch.zeros_like(joint_ids, dtype=torch.bool)
    joint_ids[:n_p, : ids.shape[1]], joint_ids[n_p : 2 * n_p, : ids.shape[1]] = mlm_ids[paired], ids[paired]
    joint_mask[: 2 * n_p, : ids.shape[1]] = mask[paired].bool().repeat(2, 1)
    for r, v in enumerate(v_ids):
        joint_ids[2 * n_p + r, : len(v)] = torch.tensor(v, dtype=ids.dtype)
        joint_mask[2 * n_p + r, : len(v)] = True
    source_len = torch.tensor([width] * n_p + [1] * n_p + v_src, dtype=torch.long, device=device)
    positions = torch.arange(width, device=device)[None]
    lm_labels = joint_ids.masked_fill(~joint_mask | (positions < source_len[:, None]), IGNORE_INDEX)
    lm_labels[:n_p] = IGNORE_INDEX
    joint_mlm = torch.full_like(joint_ids, IGNORE_INDEX)
    joint_mlm[:n_p, : ids.shape[1]] = mlm_labels[paired]
    task = torch.tensor([TASK_MLM] * n_p + [TASK_CAPTION] * n_p + [TASK_VQA] * len(v_rows), device=device)
    return {
        "image_pixels": torch.cat([pixels[image_rows], pixels[image_only]]),
        "image_patch_mask": patch_mask,
        "image_is_cmcl": torch.arange(patch_mask.shape[0], device=device) < len(image_rows),
        "text_ids": text_ids,
        "text_mask": text_mask,
        "text_is_cmcl": torch.arange(text_ids.shape[0], device=device) < n_cmcl_texts,
        "text_mlm_labels": text_mlm,
        "cmcl_pos": (global_cmcl_positives if recipe.gather_features else cmcl_positives)(
            cmcl_images(batch, recipe, image_rows), texts, owners).to(device),
        "cmcl_gather": recipe.gather_features,
        "image_keys": torch.tensor([sample_id(batch.keys[i]) for i in image_rows], dtype=torch.long, device=device),
        "text_keys": torch.tensor([-1 if o is None else sample_id(o) for o in owners], dtype=torch.long, device=device),
        "image_query": torch.arange(len(image_rows), device=device) < len(paired),
        "text_query": torch.arange(len(texts), device=device) < len(paired),
        "related_k": recipe.related_k,
        "joint_pixels": pixels[paired + paired + v_rows],
        "joint_ids": joint_ids,
        "joint_mask": joint_mask,
        "joint_source_len": source_len,
        "joint_mlm_labels": joint_mlm,
        "joint_lm_labels": lm_labels,
        "joint_task": task,
    }


@register_family
class UnimoFamily(Family):
    name = "unimo"
    batch_coupled_loss = True  # in-batch contrastive loss: accum_freq > 1 needs GradCache (not implemented here)
    paper = ("Li et al., UNIMO: Towards Unified-Modal Understanding and Generation via Cross-Modal Contrastive "
             "Learning, ACL 2021 (arXiv 2012.15409)")
    recipe_cls = UnimoRecipe
    capabilities = frozenset({"retrieval", "generate"})
    objectives = ("cmcl (rewrites + retrieved related samples)", "mlm", "seq2seq lm (caption, vqa)", "masked patch regression")
    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.5, 0.5, 0.5)
    artifact_fields = ("text_init",)

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, UnimoRecipe)
        check_heads(self.name, recipe)
        check_patches(self.name, recipe)
        require_special_ids(self.name, special_ids, ("mask", "bos", "eos"), "MLM and generation")
        config = unimo_config(recipe, vocab_size, special_ids)
        config.vlforge_special_ids = dict(special_ids)  # saved with the checkpoint: masking and generation need them
        model = UnimoModel(config)
        if recipe.text_init:
            load_text_init(model, recipe.text_init)
        return model

    def preflight(self, recipe: Recipe, tokenizer: Any) -> None:
        assert isinstance(recipe, UnimoRecipe)
        for role in ("mask", "bos", "eos"):
            check_token(self.name, tokenizer, role, " (MLM and generation need mask, bos and eos)")
        check_vocab_size(tokenizer, recipe.vocab_size)
        if recipe.text_init:
            from vlforge.components.models.common.parts import part_family

            part_family(recipe.text_init, "text_init", self.name, ("text-mlm",))
        per_worker = per_worker_batch(recipe)
        if per_worker < len(recipe.stream_pattern):
            raise UserError(f"unimo: batch_size {recipe.batch_size} over {recipe.num_workers} workers gives {per_worker} "
                            f"samples per worker, fewer than stream_pattern '{recipe.stream_pattern}' needs for every stream")

    def frozen_patterns(self, recipe: Recipe) -> list[str]:
        """Without image-only samples nothing trains the masked-patch head and mask embedding: freeze them, so a
        data-parallel run has no parameter without a gradient."""
        assert isinstance(recipe, UnimoRecipe)
        return [] if "I" in recipe.stream_pattern else ["mim_head.*", "image_embeddings.mask_token"]

    def task_formats(self, recipe: Recipe) -> frozenset[str]:
        assert isinstance(recipe, UnimoRecipe)
        return frozenset({"vqa"}) if recipe.vqa_task and recipe.vqa_weight > 0 else frozenset()  # VQA as generation

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, UnimoRecipe)
        core = _unwrap(model)
        out = model(**prepare_inputs(core, batch, recipe))
        weights = {"cmcl": recipe.cmcl_weight, "mlm": recipe.mlm_weight, "seq2seq": recipe.seq2seq_weight,
                   "vqa": recipe.vqa_weight, "mim": recipe.mim_weight}
        loss = sum(weights[k] * v for k, v in out.items() if k in weights)
        return {"loss": loss, **{k: v.detach() for k, v in out.items()}, "logit_scale": core.logit_scale.exp().detach()}

    def after_optimizer_step(self, model: nn.Module, recipe: Recipe) -> None:
        assert isinstance(recipe, UnimoRecipe)
        with torch.no_grad():
            _unwrap(model).logit_scale.clamp_(0, math.log(recipe.max_logit_scale))

    def load(self, model_dir: Path) -> nn.Module:
        return load_pretrained(model_dir, UnimoModel, MODEL_TYPE, "UNIMO")

    # ---- capabilities: "retrieval" and "generate" ---------------------------------------------------------
    def encode_images(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return _unwrap(model).image_features(pixel_values)

    def encode_texts(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _unwrap(model).text_features(input_ids, attention_mask)

    @torch.no_grad()
    def generate_texts(self, model: nn.Module, pixel_values: torch.Tensor, tokenizer: Any,
                       prompts: list[str] | None, max_new_tokens: int) -> list[str]:
        """Greedy seq2seq decoding: the source is the image, <bos> and the prompt (bidirectional); each generated
        token joins the causal target. Without prompts the output is a caption; with ``question: ... answer:``
        an answer. Stops at <eos> or ``max_new_tokens``."""
        core = _unwrap(model)
        special: dict[str, int] = core.config.vlforge_special_ids
        bsz, device = pixel_values.shape[0], pixel_values.device
        max_positions = core.config.max_position_embeddings
        budget = max(1, min(max_new_tokens, max_positions - 1))
        sources = [[special["bos"]] + (_prompt_ids(tokenizer, p) if prompts else []) for p in (prompts or [""] * bsz)]
        sources = [s[:1] + s[1:][max(0, len(s) + budget - max_positions):] for s in sources]  # keep a long prompt's end
        width = max(len(s) for s in sources) + budget
        ids = torch.full((bsz, width), special.get("pad", 0), dtype=torch.long, device=device)
        for r, s in enumerate(sources):
            ids[r, : len(s)] = torch.tensor(s)
        length = torch.tensor([len(s) for s in sources], device=device)
        source_len = length.clone()
        banned = [special[t] for t in ("pad", "mask", "bos", "unk") if t in special]
        done = torch.zeros(bsz, dtype=torch.bool, device=device)
        rows = torch.arange(bsz, device=device)
        for _ in range(budget):
            valid = torch.arange(width, device=device)[None] < length[:, None]
            hidden = core.encode(pixel_values=pixel_values, input_ids=ids, text_valid=valid, source_len=source_len)
            last = hidden[rows, hidden.shape[1] - width + length - 1]
            logits = core.lm_head(last).float()
            logits[:, banned] = float("-inf")
            nxt = logits.argmax(dim=-1)
            ids[rows[~done], length[~done]] = nxt[~done]
            length = length + (~done).long()
            done |= nxt == special["eos"]
            if bool(done.all()):
                break
        out = []
        for r in range(bsz):
            new = ids[r, len(sources[r]) : int(length[r])].tolist()
            if special["eos"] in new:
                new = new[: new.index(special["eos"])]
            out.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        return out
