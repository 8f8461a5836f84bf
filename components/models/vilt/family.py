"""ViLT — "ViLT: Vision-and-Language Transformer Without Convolution or Region Supervision" (Kim et al., ICML 2021).

Architecture (``transformers``' ``ViltModel``): BERT word embeddings and a ViT linear patch projection, each with a
modality-type embedding, concatenated into one ViT encoder; its tanh pooler on [CLS] feeds the ITM head, and a
``ViltMLMHead`` (decoder tied to the word embeddings, as ``ViltForMaskedLM``) predicts masked words. Nothing is
frozen. A checkpoint is a ``save_pretrained`` directory with a ``ViltConfig``.

Initialisation (``vit_init``): the paper initialises its transformer from ViT-B/32 weights pretrained on ImageNet
(``dandelin/ViLT`` ``vilt_module.py``). ``teacher`` copies an ``image-teacher``'s ViT
(``vit_teacher``: a catalog REF or directory; left empty, the train flow trains one first on the same data, a parent
in the lineage) into the patch projection, [CLS], patch positions, every transformer layer and the final LayerNorm;
the text embeddings, modality embeddings, pooler and heads start fresh, and everything trains. Its ViT must have the
recipe's width, depth, heads, MLP width and patch; trained on another image size, its patch position embeddings are
interpolated (bicubic) to the recipe's grid, as ViLT runs its 384 px ViT at other resolutions. An ImageNet ViT saved
with ``save_pretrained`` becomes such a teacher with ``vlforge import model DIR --family image-teacher``, then
``--set vit_teacher=catalog:REF``. The ``base`` recipe says ``teacher``, as the paper: without a ``vit_teacher``
the flow first trains an image-teacher of the recipe's transformer shape on the same data (MIM). ``scratch``
(``tiny``'s default) starts at random unless a ``vit_teacher`` is given (``--teacher REF``): ``vit_init`` only
decides whether the flow trains a default teacher when none is given.

Initialisation scale (``initializer_range``): ViT and BERT draw weights with std 0.02, which at the tiny recipe's
width 128 leaves the pooled [CLS] of every pair nearly the same (cosine 0.9999 between the pairs of a batch; swapping
the images moves it by 1%), so ITM sat at chance (loss 0.693) for 200-800 steps, with MLM, WPA, clipping or an
image-teacher start alike. The tiny recipe uses width^-0.5 = 0.088 (cosine 0.979, 18%): on 1,000 builtin scenes,
batch 64, ITM then leaves chance by step 150 with MLM beside it (loss 0.33, batch accuracy 0.88 at step 300).

Objectives (``dandelin/ViLT`` ``objectives.py``), summed with weight 1 each (WPA 0.1):
- ITM: each pair's image is replaced, with p=0.5 (``itm_negative_prob``), by another image of the batch (a
  different sample whose caption differs: ``heads.not_negative_mask``); cross-entropy on the pooled [CLS]
  (``heads.ITMHead``; ``losses.itm_loss``).
- MLM: 15% whole-word masking of the caption (``masking.mask_tokens``), paired with its true image; CE.
- WPA: word-patch alignment on the ITM pairs, weight 0.1 as the paper (``wpa_weight``): the optimal-transport
  distance between the caption's word states and the image's patch states under the cosine cost, with an IPOT
  plan (``losses.word_patch_alignment_loss``), pulled down for matched pairs and pushed up for swapped ones.
All run in one encoder pass over a 2B batch (masked captions with their images, then the ITM pairs).
Images enter at a fixed square resolution, so every patch is kept (ViLT's random patch sampling only trims
variable-resolution images to ``max_image_len``); that also makes the forward pass deterministic.

Masks and negatives draw from ``masking.batch_generator`` (seeded by the recipe's seed and the batch's keys), so a
resumed run repeats the uninterrupted run's draws and losses are reproducible.

Capability "itm": ``score_pairs(model, pixel_values, input_ids, attention_mask)`` gives each pair's match log-odds.

Run:  vlforge run train --family vilt --data shapes --recipe tiny
Recipes: ``recipes/tiny.yaml`` (2 CPU cores, minutes), ``recipes/base.yaml`` (ViLT-B/32, 384 px)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from transformers import ViltConfig
from transformers.models.vilt.modeling_vilt import (
    ViltMLMHead,
    ViltModel,
    ViltPreTrainedModel,
)
from vlforge.components.losses import itm_loss, mlm_loss, word_patch_alignment_loss
from vlforge.components.models.common.config import MaskedLMRecipe, PatchRecipe, TransformerRecipe, VocabRecipe, recipe_sizes
from vlforge.components.models.common.preflight import check_heads, check_per_worker_batch, check_token, check_vocab_size, require_mask_id
from vlforge.components.models.heads import ITMHead, not_negative_mask, same_sample_mask, sample_negatives
from vlforge.components.models.masking import batch_generator, mask_tokens
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe, load_pretrained, register_family
from vlforge.components.models.registry import unwrap as _unwrap
from vlforge.components.models.common.parts import load_part
from vlforge.errors import UserError


class ViltRecipe(MaskedLMRecipe, VocabRecipe, PatchRecipe, TransformerRecipe):
    max_position_embeddings: int | None = Field(None, ge=4, description="text positions; None: max_text_length")
    itm_negative_prob: float = Field(0.5, ge=0, le=1, description="chance a pair's image is swapped for another")
    mlm_weight: float = Field(1.0, ge=0)
    itm_weight: float = Field(1.0, ge=0)
    wpa_weight: float = Field(0.1, ge=0, description="word-patch alignment (optimal transport) on the ITM pairs; "
                              "0.1 as the paper, 0 turns it off")
    initializer_range: float = Field(0.02, gt=0, description="std of the Linear/Embedding initialisation (ViT/BERT: "
                                     "0.02); the tiny recipe uses width^-0.5, see recipes/tiny.yaml")
    vit_init: Literal["teacher", "scratch"] = Field(
        "scratch", description="teacher: start the transformer from an image-teacher's ViT (vit_teacher; the flow "
        "trains one when empty), as the paper starts from an ImageNet ViT; scratch: random unless vit_teacher is given")
    vit_teacher: str | None = Field(None, description="an image-teacher model directory (or catalog:REF); when given "
                                    "(e.g. --teacher) it initialises the transformer whatever vit_init says")


def vilt_config(recipe: ViltRecipe, vocab_size: int, special_ids: dict[str, int]) -> ViltConfig:
    return ViltConfig(
        vocab_size=recipe.vocab_size or vocab_size,
        **recipe_sizes(recipe),
        max_position_embeddings=recipe.max_position_embeddings or recipe.max_text_length,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        pad_token_id=special_ids.get("pad", 0),
        initializer_range=recipe.initializer_range,
        tie_word_embeddings=True,
    )


class ViltPretrainingModel(ViltPreTrainedModel):
    """``ViltModel`` with ViLT's pretraining heads: MLM (tied decoder) and ITM on the pooled [CLS]."""

    _tied_weights_keys = {"mlm_score.decoder.weight": "vilt.embeddings.text_embeddings.word_embeddings.weight"}  # noqa: RUF012 (transformers reads this class attribute)

    def __init__(self, config: ViltConfig):
        super().__init__(config)
        self.vilt = ViltModel(config, add_pooling_layer=True)
        self.mlm_score = ViltMLMHead(config)
        self.itm_score = ITMHead(config.hidden_size)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.mlm_score.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.mlm_score.decoder = new_embeddings

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[CLS] + every patch, with position embeddings: ViLT's ``visual_embed`` for a full square image (no
        random patch selection, which only trims padded variable-size images)."""
        emb = self.vilt.embeddings
        patches = emb.patch_embeddings(pixel_values).flatten(2).transpose(1, 2)
        cls = emb.cls_token.expand(patches.shape[0], -1, -1)
        return emb.dropout(torch.cat([cls, patches], dim=1) + emb.position_embeddings)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused sequence (B, L + 1 + N, D; text first) and the pooled [CLS] (B, D)."""
        image_embeds = self.embed_image(pixel_values)
        image_mask = torch.ones(image_embeds.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        out = self.vilt(input_ids=input_ids, attention_mask=attention_mask, image_embeds=image_embeds, pixel_mask=image_mask)
        return out.last_hidden_state, out.pooler_output


def swap_images(
    pixel_values: torch.Tensor, keys: list[str], prob: float, generator: torch.Generator | None = None,
    captions: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ViLT's ITM pairs: each caption keeps its image, or with probability ``prob`` gets the image of another
    sample of the batch (never one with the same key, nor, given ``captions``, one captioned the same: that image
    matches the caption too). Returns the images and labels (1 = matched, 0 = swapped)."""
    bsz, device = pixel_values.shape[0], pixel_values.device
    forbid = same_sample_mask(keys, device) if captions is None else not_negative_mask(keys, captions, device)
    partner = sample_negatives(torch.zeros(bsz, bsz, device=device), "random", forbid, generator)
    coin = torch.rand(bsz, generator=generator).to(device)
    swap = (coin < prob) & (partner >= 0)
    images = torch.where(swap[:, None, None, None], pixel_values[partner.clamp(min=0)], pixel_values)
    return images, (~swap).long()


# ViTModel (transformers 5) parameter names -> ViltModel's
_VIT_TO_VILT = (("layers.", "encoder.layer."), (".attention.q_proj.", ".attention.attention.query."),
                (".attention.k_proj.", ".attention.attention.key."), (".attention.v_proj.", ".attention.attention.value."),
                (".attention.o_proj.", ".attention.output.dense."), (".mlp.fc1.", ".intermediate.dense."),
                (".mlp.fc2.", ".output.dense."))


def load_vit_into_vilt(vilt: nn.Module, vit: nn.Module, source: str) -> None:
    """Copy a ViT's patch projection, [CLS], patch positions, layers and final LayerNorm into ``vilt`` (a ViltModel);
    one-line error when a shape differs (another width, depth, MLP or patch). A ViT of another image size has its
    patch position embeddings interpolated to ``vilt``'s grid (transformers' ``interpolate_pos_encoding``)."""
    for what, theirs, ours in (("layers", vit.config.num_hidden_layers, vilt.config.num_hidden_layers),
                               ("px patches", vit.config.patch_size, vilt.config.patch_size)):
        if theirs != ours:
            recipe_field = "num_layers" if what == "layers" else "patch_size"
            raise UserError(f"vilt: the image teacher '{source}' does not fit the recipe: it has {theirs} {what}, "
                            f"the recipe's {recipe_field} is {ours}")
    target = vilt.state_dict()
    copied = {}
    for name, value in vit.state_dict().items():
        if name == "embeddings.mask_token":
            continue
        if name == "embeddings.position_embeddings" and value.shape[-1] == target[name].shape[-1] and value.shape != target[name].shape:
            size = vilt.config.image_size
            with torch.no_grad():
                value = vit.embeddings.interpolate_pos_encoding(value.new_zeros(target[name].shape), size, size)
        if name.startswith("layers."):
            name = "encoder.layer." + name[len("layers."):]
        for old, new in _VIT_TO_VILT[1:]:
            name = name.replace(old, new)
        if name not in target or target[name].shape != value.shape:
            have = tuple(target[name].shape) if name in target else "nothing"
            raise UserError(f"vilt: the image teacher '{source}' does not fit the recipe: its {name} is {tuple(value.shape)}, "
                            f"the model has {have} (match hidden_size, num_layers, num_heads, mlp_ratio, patch_size, image_size)")
        copied[name] = value
    vilt.load_state_dict(copied, strict=False)


def word_and_patch_masks(attention_mask: torch.Tensor, patches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which text and image positions word-patch alignment transports between: the caption's words (not the first
    token, [CLS]/<bos>, nor the last real one, [SEP]/<eos>, nor padding) and every patch (not the image [CLS])."""
    words = attention_mask.bool().clone()
    words[:, 0] = False
    last = attention_mask.long().sum(dim=1) - 1
    words[torch.arange(words.shape[0], device=words.device), last.clamp(min=0)] = False
    return words, torch.ones(attention_mask.shape[0], patches, dtype=torch.bool, device=attention_mask.device)


@register_family
class ViltFamily(Family):
    name = "vilt"
    paper = "Kim et al., ViLT: Vision-and-Language Transformer Without Convolution or Region Supervision, ICML 2021 (arXiv 2102.03334)"
    recipe_cls = ViltRecipe
    capabilities = frozenset({"itm", "text_features", "fused_features"})
    objectives = ("itm", "mlm", "wpa")
    image_mean = (0.5, 0.5, 0.5)  # ViLT normalises pixels to [-1, 1] (its ``inception_normalize``)
    image_std = (0.5, 0.5, 0.5)
    teachers = {"vit_teacher": ("image-teacher",)}  # noqa: RUF012

    def needed_teachers(self, recipe: Recipe) -> dict[str, tuple[str, ...]]:
        assert isinstance(recipe, ViltRecipe)
        return dict(self.teachers) if recipe.vit_init == "teacher" else {}

    def teacher_overrides(self, field: str, recipe: Recipe, offers: frozenset[str]) -> dict[str, Any]:
        """The default ViT the flow trains first has this ViLT's transformer shape (width, depth, heads, MLP, patch,
        image size), so it initialises every layer, as the paper's ViT-B/32 does ViLT-B/32's."""
        assert isinstance(recipe, ViltRecipe)
        return {k: getattr(recipe, k) for k in ("image_size", "patch_size", "hidden_size", "num_layers", "num_heads",
                                                 "mlp_ratio")}

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, ViltRecipe)
        check_heads(self.name, recipe)
        require_mask_id(self.name, special_ids)
        model = ViltPretrainingModel(vilt_config(recipe, vocab_size, special_ids))
        model.config.vlforge_special_ids = dict(special_ids)  # saved with the checkpoint: masking needs them
        if recipe.vit_teacher:
            teacher = load_part(recipe.vit_teacher, "vit_teacher", self.name, self.teachers["vit_teacher"])
            load_vit_into_vilt(model.vilt, teacher.vit, recipe.vit_teacher)
        return model

    def preflight(self, recipe: Recipe, tokenizer: object) -> None:
        assert isinstance(recipe, ViltRecipe)
        check_token(self.name, tokenizer, "mask")
        check_vocab_size(tokenizer, recipe.vocab_size)
        check_per_worker_batch(self.name, recipe, "pairs", "ITM needs another image to swap in")

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, ViltRecipe)
        core = _unwrap(model)
        special_ids: dict[str, int] = core.config.vlforge_special_ids
        gen = batch_generator(batch.keys, recipe.seed)
        bsz, length = batch.input_ids.shape
        masked_ids, labels = mask_tokens(
            batch.input_ids, batch.attention_mask, mask_id=special_ids["mask"], vocab_size=core.config.vocab_size,
            special_ids=special_ids.values(), word_ids=batch.word_ids, p=recipe.mlm_probability,
            whole_word=recipe.whole_word_masking, generator=gen,
        )
        itm_pixels, itm_labels = swap_images(batch.pixel_values, batch.keys, recipe.itm_negative_prob, gen, batch.captions)
        seq, pooled = model(
            pixel_values=torch.cat([batch.pixel_values, itm_pixels]),
            input_ids=torch.cat([masked_ids, batch.input_ids]),
            attention_mask=torch.cat([batch.attention_mask, batch.attention_mask]),
        )
        mlm = mlm_loss(core.mlm_score(seq[:bsz, :length]), labels)
        itm_logits = core.itm_score(pooled[bsz:])
        itm = itm_loss(itm_logits, itm_labels)
        loss = recipe.mlm_weight * mlm + recipe.itm_weight * itm
        acc = (itm_logits.argmax(dim=-1) == itm_labels).float().mean()
        out = {"mlm": mlm.detach(), "itm": itm.detach(), "itm_accuracy": acc.detach()}
        if recipe.wpa_weight > 0:
            words, patches = word_and_patch_masks(batch.attention_mask, seq.shape[1] - length - 1)
            wpa = word_patch_alignment_loss(seq[bsz:, :length], seq[bsz:, length + 1 :], words, patches, itm_labels)
            loss = loss + recipe.wpa_weight * wpa
            out["wpa"] = wpa.detach()
        return {"loss": loss, **out}

    def load(self, model_dir: Path) -> nn.Module:
        return load_pretrained(model_dir, ViltPretrainingModel, "vilt", "ViLT")

    # ---- capability "itm" -------------------------------------------------------------------------------
    def score_pairs(
        self, model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        tokenizer: Any = None,
    ) -> torch.Tensor:
        """Match log-odds (B,) of each (image i, text i) pair: ITM logit "matched" minus "not matched"."""
        core = _unwrap(model)
        _, pooled = core(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        logits = core.itm_score(pooled)
        return logits[:, 1] - logits[:, 0]

    # ---- capability "text_features" (the NLU probe: text through the fusion encoder with a black image) ------
    def text_features(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """The pooled [CLS] of the caption fused with ``pixel_values`` (the probe passes black images)."""
        _, pooled = _unwrap(model)(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        return pooled

    # ---- capability "fused_features" (NLVR2 fine-tuning, the paper's "pair" setting: one pooled [CLS] per image) --
    def fused_features(
        self, model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        _, pooled = _unwrap(model)(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        return pooled
