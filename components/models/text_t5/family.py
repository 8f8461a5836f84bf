"""text-t5 — a text-only T5 pretrained on the dataset's captions with T5's span corruption: "Exploring the Limits of
Transfer Learning with a Unified Text-to-Text Transformer" (Raffel et al., JMLR 2020).

The model is ``transformers``' ``T5ForConditionalGeneration`` built from a ``T5Config`` (T5 v1.0 layout by default:
ReLU FFN, relative position bias, LM head tied to the word embeddings); a checkpoint is a ``save_pretrained``
directory, so a Hugging Face T5 imports as one (``vlforge import model DIR --family text-t5``). Its job is to be the
pretrained text backbone VL-T5 starts from (``components/models/vlt5``: ``text_init``), as the paper starts from
t5-base, standing in for the released weights where none are on disk.

Objective: span corruption (section 3.1.4, the baseline objective): 15% of each caption's words in spans of mean
length 3 (T5's ``random_spans_noise_mask``), each span replaced by one sentinel; the decoder writes the masked spans,
each after its sentinel (cross-entropy, teacher-forced from the pad token as T5 does). The noise is the one VL-T5's
``lm`` task uses (``vlt5.tasks.corrupt``), drawn from ``masking.batch_generator(keys, seed + step)``; as there, span k
reads T5's ``<extra_id_k>`` where the tokenizer has them (a released T5's), else vlforge's one ``<mask>`` token is
every span's sentinel (``vlt5.tasks.span_sentinels``). Images are ignored.

Run:  vlforge run train --family text-t5 --data shapes --recipe tiny
Recipes: ``recipes/tiny.yaml`` (width 128, 2+2 layers; 2 CPU cores, minutes) and ``recipes/base.yaml`` (t5-base)."""
from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from vlforge.components.models.common.config import VocabRecipe
from vlforge.components.models.common.preflight import check_multiple, check_vocab_size, require_special_ids
from vlforge.components.models.heads import mean_pool
from vlforge.components.models.masking import IGNORE_INDEX, batch_generator
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe, load_pretrained, register_family
from vlforge.components.models.registry import unwrap as _unwrap
from vlforge.components.models.vlt5.tasks import check_sentinels, corrupt, span_sentinels


class TextT5Recipe(VocabRecipe):
    d_model: int = Field(128, ge=8)
    d_kv: int | None = Field(None, ge=4, description="attention head width; None: d_model / num_heads")
    d_ff: int = Field(512, ge=8)
    num_layers: int = Field(2, ge=1, description="encoder layers")
    num_decoder_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    relative_attention_num_buckets: int = Field(32, ge=2)
    feed_forward_proj: str = Field("relu", pattern="^(relu|gated-gelu|gated-silu)$", description="relu: T5 v1.0")
    tie_word_embeddings: bool = Field(True, description="True: T5 v1.0 (decoder output scaled by d_model^-0.5 before "
                                      "the tied LM head); False: v1.1's unscaled output (transformers 5 keeps the "
                                      "head tied when it builds one; an imported v1.1 checkpoint keeps its own head)")
    dropout: float = Field(0.1, ge=0, lt=1)
    initializer_factor: float = Field(1.0, gt=0)
    noise_density: float = Field(0.15, gt=0, lt=1, description="share of each caption's words masked")
    mean_span_length: float = Field(3.0, ge=1)


def t5_config(recipe: TextT5Recipe, vocab_size: int, special_ids: dict[str, int]) -> T5Config:
    config = T5Config(
        vocab_size=recipe.vocab_size or vocab_size, d_model=recipe.d_model,
        d_kv=recipe.d_kv or recipe.d_model // recipe.num_heads, d_ff=recipe.d_ff, num_layers=recipe.num_layers,
        num_decoder_layers=recipe.num_decoder_layers, num_heads=recipe.num_heads,
        relative_attention_num_buckets=recipe.relative_attention_num_buckets, feed_forward_proj=recipe.feed_forward_proj,
        tie_word_embeddings=recipe.tie_word_embeddings, dropout_rate=recipe.dropout,
        initializer_factor=recipe.initializer_factor, pad_token_id=special_ids["pad"], eos_token_id=special_ids["eos"],
        decoder_start_token_id=special_ids["pad"],  # T5's convention
    )
    config.vlforge_special_ids = dict(special_ids)
    return config


@register_family
class TextT5Family(Family):
    name = "text-t5"
    paper = ("Raffel et al., Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer, "
             "JMLR 2020 (arXiv 1910.10683)")
    recipe_cls = TextT5Recipe
    capabilities = frozenset({"text_features"})
    objectives = ("span corruption (15%, mean span 3, one sentinel per span)",)

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, TextT5Recipe)
        require_special_ids(self.name, special_ids, ("pad", "eos"), "span corruption and decoding")
        if recipe.d_kv is None:
            check_multiple(self.name, "d_model", recipe.d_model, "num_heads", recipe.num_heads)
        return T5ForConditionalGeneration(t5_config(recipe, vocab_size, special_ids))

    def preflight(self, recipe: Recipe, tokenizer: object) -> None:
        assert isinstance(recipe, TextT5Recipe)
        check_sentinels(self.name, tokenizer)
        check_vocab_size(tokenizer, recipe.vocab_size)

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, TextT5Recipe)
        tok = batch.tokenizer
        if tok is None:
            raise RuntimeError("text-t5 corrupts the captions' words and needs the batch's tokenizer")
        gen = batch_generator(batch.keys, recipe.seed + batch.step)
        pairs = [corrupt(c, span_sentinels(tok), recipe.noise_density, recipe.mean_span_length, gen, "t5") for c in batch.captions]
        length = batch.input_ids.shape[1]
        src = tok([s for s, _ in pairs], padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        tgt = tok([t for _, t in pairs], padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        device = batch.input_ids.device
        labels = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, IGNORE_INDEX).to(device)
        loss = model(input_ids=src["input_ids"].to(device), attention_mask=src["attention_mask"].to(device),
                     labels=labels, use_cache=False).loss
        return {"loss": loss, "span_corruption": loss.detach()}

    def load(self, model_dir: Path) -> nn.Module:
        return load_pretrained(model_dir, T5ForConditionalGeneration, "t5", "T5")

    # ---- capability "text_features" (the NLU probe's text-only reference) ------------------------------------
    def text_features(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the T5 encoder's last hidden states over the attention mask (B, D); the image is ignored."""
        hidden = _unwrap(model).get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)
