"""text-bart — a text-only BART pretrained on the dataset's captions with BART's denoising objective: "BART:
Denoising Sequence-to-Sequence Pre-training for Natural Language Generation, Translation, and Comprehension"
(Lewis et al., ACL 2020).

The model is ``transformers``' ``BartForConditionalGeneration`` built from a ``BartConfig`` (a bidirectional encoder,
an autoregressive decoder with cross-attention, tied input/output embeddings); a checkpoint is a ``save_pretrained``
directory. Its job here is to be the pretrained language model VLKD distils CLIP into (``components/models/vlkd``:
the ``language_model`` teacher field), standing in for the released BART weights this offline project cannot load.

Objective: text infilling (section 2.2 and the final BART recipe, section 5.1): ``ceil(30%)`` of each caption's
words are covered by spans whose lengths are drawn from Poisson(λ=3), each span is replaced by a single ``<mask>``
(a zero-length span inserts one), and the decoder reconstructs the whole original caption (cross-entropy over its
tokens, ``<bos> ... <eos>``, teacher-forced from ``decoder_start = <eos>`` as BART does). Spans cover whole words
(the loop's ``word_ids``). Sentence permutation, BART's other noise, is moot: a caption is one sentence.
The noise is ``models.infilling.text_infilling``, drawn from ``masking.batch_generator(keys, seed + step)``.

Not implemented: token deletion / rotation / permutation noise (the paper's ablations; infilling alone is its best
single noise), and any image input: images in the batch are ignored. No evaluation capability: the model reads no
images (its use is as VLKD's student initialisation).

Run:  vlforge run train --family text-bart --data shapes --recipe tiny
Recipes: ``recipes/tiny.yaml`` (width 128, 2+2 layers; 2 CPU cores, minutes) and ``recipes/base.yaml`` (BART-base,
139.4M parameters with the 50,265-token vocabulary)."""
from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration
from vlforge.components.losses import lm_loss
from vlforge.components.models.common.config import VocabRecipe
from vlforge.components.models.common.preflight import check_multiple, check_vocab_size, require_special_ids
from vlforge.components.models.heads import mean_pool
from vlforge.components.models.infilling import text_infilling
from vlforge.components.models.masking import IGNORE_INDEX, batch_generator
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe, load_pretrained, register_family, special_token_ids
from vlforge.components.models.registry import unwrap as _unwrap

from vlforge.errors import UserError

REQUIRED_SPECIALS = ("pad", "mask", "bos", "eos")


class TextBartRecipe(VocabRecipe):
    d_model: int = Field(128, ge=8)
    encoder_layers: int = Field(2, ge=1)
    decoder_layers: int = Field(2, ge=1)
    attention_heads: int = Field(4, ge=1)
    ffn_dim: int = Field(512, ge=8)
    max_positions: int = Field(128, ge=4, description="learned positions; VLKD puts its image prefix before the "
                               "caption in this encoder, so leave room for (image tokens + max_text_length)")
    dropout: float = Field(0.1, ge=0, lt=1)
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    init_std: float = Field(0.02, gt=0)
    mask_ratio: float = Field(0.3, gt=0, le=1, description="share of each caption's words covered by masked spans")
    poisson_lambda: float = Field(3.0, ge=0, description="mean span length (Poisson)")


def bart_config(recipe: TextBartRecipe, vocab_size: int, special_ids: dict[str, int]) -> BartConfig:
    config = BartConfig(
        vocab_size=recipe.vocab_size or vocab_size,
        d_model=recipe.d_model,
        encoder_layers=recipe.encoder_layers,
        decoder_layers=recipe.decoder_layers,
        encoder_attention_heads=recipe.attention_heads,
        decoder_attention_heads=recipe.attention_heads,
        encoder_ffn_dim=recipe.ffn_dim,
        decoder_ffn_dim=recipe.ffn_dim,
        max_position_embeddings=recipe.max_positions,
        dropout=recipe.dropout,
        attention_dropout=recipe.attention_dropout,
        init_std=recipe.init_std,
        pad_token_id=special_ids["pad"],
        bos_token_id=special_ids["bos"],
        eos_token_id=special_ids["eos"],
        decoder_start_token_id=special_ids["eos"],  # BART starts decoding from </s>
        forced_eos_token_id=special_ids["eos"],
    )
    config.vlforge_special_ids = dict(special_ids)  # saved with the checkpoint: the noise needs the mask id
    return config


def check_specials(special_ids: dict[str, int], who: str) -> None:
    require_special_ids(who, special_ids, REQUIRED_SPECIALS, "text infilling and decoding")


def decoder_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The caption as the decoder's target: every real token (``<bos> ... <eos>``), padding ignored."""
    return input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)


def seq2seq_loss(bart: BartForConditionalGeneration, labels: torch.Tensor, *, input_ids: torch.Tensor | None = None,
                 inputs_embeds: torch.Tensor | None = None, attention_mask: torch.Tensor) -> torch.Tensor:
    """Teacher-forced decoder cross-entropy (``labels`` shifted right from ``decoder_start_token_id``)."""
    out = bart(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
               use_cache=False)
    return lm_loss(out.logits, labels, shift=False)


@register_family
class TextBartFamily(Family):
    name = "text-bart"
    paper = ("Lewis et al., BART: Denoising Sequence-to-Sequence Pre-training for Natural Language Generation, "
             "Translation, and Comprehension, ACL 2020 (arXiv 1910.13461)")
    recipe_cls = TextBartRecipe
    capabilities = frozenset({"text_features"})
    objectives = ("text infilling (Poisson(3) spans, 30%, one <mask> per span)",)

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, TextBartRecipe)
        check_specials(special_ids, "text-bart")
        check_multiple(self.name, "d_model", recipe.d_model, "attention_heads", recipe.attention_heads)
        if recipe.max_positions < recipe.max_text_length:
            raise UserError(f"text-bart recipe: max_positions {recipe.max_positions} is below max_text_length {recipe.max_text_length}")
        return BartForConditionalGeneration(bart_config(recipe, vocab_size, special_ids))

    def preflight(self, recipe: Recipe, tokenizer: object) -> None:
        assert isinstance(recipe, TextBartRecipe)
        check_specials(special_token_ids(tokenizer), "text-bart")
        check_vocab_size(tokenizer, recipe.vocab_size)

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, TextBartRecipe)
        specials: dict[str, int] = _unwrap(model).config.vlforge_special_ids
        noised, noised_mask, _ = text_infilling(
            batch.input_ids, batch.attention_mask, mask_id=specials["mask"], pad_id=specials["pad"],
            special_ids=specials.values(), ratio=recipe.mask_ratio, poisson_lambda=recipe.poisson_lambda,
            word_ids=batch.word_ids, generator=batch_generator(batch.keys, recipe.seed + batch.step),
        )
        loss = seq2seq_loss(model, decoder_labels(batch.input_ids, batch.attention_mask), input_ids=noised,
                            attention_mask=noised_mask)
        return {"loss": loss, "infilling": loss.detach()}

    def load(self, model_dir: Path) -> nn.Module:
        return load_pretrained(model_dir, BartForConditionalGeneration, "bart", "BART")

    # ---- capability "text_features" (the NLU probe's text-only reference) ------------------------------------
    def text_features(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the BART encoder's last hidden states over the attention mask (B, D); a text-only model ignores the image."""
        core = _unwrap(model)
        hidden = core.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)
