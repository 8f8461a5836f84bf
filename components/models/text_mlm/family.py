"""text-mlm — a unimodal BERT text teacher: "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding" (Devlin et al., NAACL 2019, arXiv 1810.04805).

What it is for: the text teacher of the ``unified`` family (Li et al., 2021, arXiv 2112.07074), which distils BERT's
MLM predictions (and optionally its hidden states) into its shared transformer. The train flow trains one in the DAG
when a ``unified`` recipe leaves ``text_teacher`` empty, on the same dataset and tokenizer.

Architecture: ``transformers``' ``BertForMaskedLM`` built from a ``BertConfig`` (post-LN BERT encoder, no pooler,
the MLM decoder tied to the word embeddings). A checkpoint is its ``save_pretrained`` directory.

Objective: masked language modelling on the captions only (the images of a batch are ignored): 15% of the words
(whole-word masking over ``batch.word_ids``; ``masking.mask_tokens``: 80% ``<mask>``, 10% random, 10% kept),
cross-entropy on the chosen positions (``losses.mlm_loss``). BERT's next-sentence prediction is not implemented
(a caption is one sentence; RoBERTa showed NSP unnecessary). Masks draw from ``masking.batch_generator`` seeded by
the recipe's seed and the batch's keys (as ViLT and VLMo here): a resumed run repeats the uninterrupted run's draws,
and the batches of a shuffled stream differ every step, so the masks are fresh in practice.

Capability "text_features" (the NLU probe, ``components/evaluation/nlu_probe.py``, which fine-tunes a text side
and compares vision-and-language models with this text-only one): ``text_features`` is the attention-masked mean of
the last hidden states (the image argument is ignored). ``encode_texts`` (the same, L2-normalised) is there for
reuse; "retrieval" is not declared (there is no image side).

Run:  vlforge run train --family text-mlm --data shapes-300 --recipe tiny
Recipes: ``recipes/tiny.yaml`` (2 CPU cores, minutes), ``recipes/base.yaml`` (BERT-base, 110M)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers import BertConfig, BertForMaskedLM
from vlforge.components.losses import mlm_loss
from vlforge.components.models.common.config import MaskedLMRecipe, TransformerRecipe, VocabRecipe, dropouts, recipe_sizes
from vlforge.components.models.common.preflight import check_heads, check_text_fits, check_token, check_vocab_size, require_mask_id
from vlforge.components.models.heads import mean_pool
from vlforge.components.models.masking import batch_generator, mask_tokens
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe, load_pretrained, register_family
from vlforge.components.models.registry import unwrap as _unwrap


class TextMlmRecipe(MaskedLMRecipe, VocabRecipe, TransformerRecipe):
    num_layers: int = Field(2, ge=1)
    mlp_ratio: int = Field(4, ge=1, description="intermediate size = mlp_ratio x hidden_size")
    max_position_embeddings: int = Field(512, ge=4, description="BERT's 512, so students with longer texts fit")
    dropout: float = Field(0.1, ge=0, lt=1, description="hidden and attention dropout (BERT: 0.1)")
    initializer_range: float = Field(0.02, gt=0)


def bert_config(recipe: TextMlmRecipe, vocab_size: int, special_ids: dict[str, int]) -> BertConfig:
    return BertConfig(
        vocab_size=recipe.vocab_size or vocab_size,
        **recipe_sizes(recipe),
        max_position_embeddings=recipe.max_position_embeddings,
        **dropouts(recipe.dropout),
        initializer_range=recipe.initializer_range,
        pad_token_id=special_ids.get("pad", 0),
        tie_word_embeddings=True,
    )


@register_family
class TextMlmFamily(Family):
    name = "text-mlm"
    paper = "Devlin et al., BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding, NAACL 2019 (arXiv 1810.04805)"
    recipe_cls = TextMlmRecipe
    capabilities = frozenset({"text_features"})
    objectives = ("mlm (captions only, whole-word)",)
    image_mean = (0.5, 0.5, 0.5)  # images are ignored; the same normalisation as the unified student it teaches
    image_std = (0.5, 0.5, 0.5)

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, TextMlmRecipe)
        check_heads(self.name, recipe)
        require_mask_id(self.name, special_ids)
        check_text_fits(self.name, recipe)
        config = bert_config(recipe, vocab_size, special_ids)
        config.vlforge_special_ids = dict(special_ids)  # saved with the checkpoint: masking needs them
        return BertForMaskedLM(config)

    def preflight(self, recipe: Recipe, tokenizer: object) -> None:
        assert isinstance(recipe, TextMlmRecipe)
        check_token(self.name, tokenizer, "mask")
        check_vocab_size(tokenizer, recipe.vocab_size)

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, TextMlmRecipe)
        core = _unwrap(model)
        special_ids: dict[str, int] = core.config.vlforge_special_ids
        masked_ids, labels = mask_tokens(
            batch.input_ids, batch.attention_mask, mask_id=special_ids["mask"], vocab_size=core.config.vocab_size,
            special_ids=special_ids.values(), word_ids=batch.word_ids, p=recipe.mlm_probability,
            whole_word=recipe.whole_word_masking, generator=batch_generator(batch.keys, recipe.seed),
        )
        logits = model(input_ids=masked_ids, attention_mask=batch.attention_mask).logits
        mlm = mlm_loss(logits, labels)
        chosen = labels != -100
        acc = (logits.argmax(dim=-1)[chosen] == labels[chosen]).float().mean()
        return {"loss": mlm, "mlm": mlm.detach(), "mlm_accuracy": acc.detach()}

    def load(self, model_dir: Path) -> nn.Module:
        return load_pretrained(model_dir, BertForMaskedLM, "bert", "BERT")

    # ---- capability "text_features"; encode_texts for reuse ------------------------------------------------------
    def text_features(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Mean-pooled last hidden states (over the attention mask), (B, D); a text-only model ignores the image."""
        hidden = _unwrap(model).bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def encode_texts(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled last hidden states (over the attention mask), L2-normalised."""
        return F.normalize(self.text_features(model, input_ids, attention_mask), dim=-1)
