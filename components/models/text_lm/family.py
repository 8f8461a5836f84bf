"""text-lm — a GPT-2-style causal language model on captions: "Language Models are Unsupervised Multitask Learners"
(Radford et al., 2019).

What it is for: the language model that the multimodal-prompt families freeze. Frozen (Tsimpoukelli et al., 2021)
trains a vision encoder to prompt it; PromptFuse (Liang et al., 2022) trains only a few prompt vectors in front of
it. Their train flows train one in the DAG when their recipe leaves ``language_model`` empty, on the same dataset
and tokenizer. Frozen's paper LM is a 7B transformer pretrained on C4; GPT-2 is this project's stand-in.

Architecture: ``transformers``' ``GPT2LMHeadModel`` built from a ``GPT2Config`` (pre-LN decoder, learned absolute
positions, the LM head tied to the word embeddings). ``n_positions`` is larger than the caption length so the
families that prepend images, prompts or few-shot examples have room. A checkpoint is its ``save_pretrained``
directory, loadable with ``GPT2LMHeadModel.from_pretrained``.

Objective: causal language modelling on the captions only (the batch's images are ignored): the tokenizer's
``<bos> caption <eos>``, every real token after ``<bos>`` predicted from the ones before it (``losses.lm_loss``,
padding ignored). With ``context_qa_prob`` > 0 (the tiny and base recipes: 0.5), a sample with scene facts is, with
that chance, written as reading comprehension instead: ``caption <bos> question: <q> answer: <a> <eos>``, one of its
scene's questions (``scene_tasks.vqa_questions``) asked about the text in front of ``<bos>``. That is where Frozen
puts its visual prefix (``[prefix] <bos> question: <q> answer:``): the paper's LM brings in-context reading from C4;
a small LM trained on captions alone never attends to anything before ``<bos>``, so a visual prefix cannot steer it
(measured: Frozen on a captions-only tiny LM kept a flat loss and answered no question). Which samples, and which
question, come from ``masking.batch_generator(keys, seed + step)``, so a step stays a pure function of the batch.

Capabilities: none. Text-only generation would ignore the image, so "generate" is not declared (an evaluation of
it would measure the caption prior, not vision); ``models/prefix_lm.py`` holds the prefix-conditioning and
decoding the multimodal families build on.

Run:  vlforge run train --family text-lm --data shapes-300 --recipe tiny
Recipes: ``recipes/tiny.yaml`` (2 CPU cores, minutes), ``recipes/base.yaml`` (GPT-2 small, 124M)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import Field
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from vlforge.components.losses import lm_loss
from vlforge.components.models.common.config import VocabRecipe
from vlforge.components.models.common.preflight import check_heads, check_text_fits, check_vocab_size
from vlforge.components.models.heads import mean_pool
from vlforge.components.models.masking import batch_generator
from vlforge.components.models.prefix_lm import IGNORE_INDEX, token_ids, vqa_prompt
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe, register_family
from vlforge.components.models.registry import unwrap as _unwrap

from vlforge.components.sources.scene_tasks import vqa_questions
from vlforge.errors import UserError


class TextLMRecipe(VocabRecipe):
    hidden_size: int = Field(128, ge=8, description="GPT-2 n_embd")
    num_layers: int = Field(3, ge=1, description="GPT-2 n_layer")
    num_heads: int = Field(4, ge=1, description="GPT-2 n_head")
    n_positions: int = Field(128, ge=4, description="learned positions; room for image prefixes, prompts and "
                             "few-shot examples in front of the text, not only max_text_length")
    dropout: float = Field(0.1, ge=0, lt=1, description="GPT-2's resid/embd/attn dropout")
    context_qa_prob: float = Field(0.0, ge=0, le=1, description="chance a sample with scene facts becomes 'caption "
                                   "<bos> question: q answer: a <eos>' (reading the text in front of <bos>)")


def gpt2_config(recipe: TextLMRecipe, vocab_size: int, special_ids: dict[str, int]) -> GPT2Config:
    return GPT2Config(
        vocab_size=recipe.vocab_size or vocab_size,
        n_positions=recipe.n_positions,
        n_embd=recipe.hidden_size,
        n_layer=recipe.num_layers,
        n_head=recipe.num_heads,
        resid_pdrop=recipe.dropout,
        embd_pdrop=recipe.dropout,
        attn_pdrop=recipe.dropout,
        bos_token_id=special_ids.get("bos", 3),
        eos_token_id=special_ids.get("eos", 4),
        pad_token_id=special_ids.get("pad", 0),
        tie_word_embeddings=True,
    )


def load_gpt2(model_dir: Path | str) -> GPT2LMHeadModel:
    """A text-lm checkpoint (or any local GPT-2 ``save_pretrained`` directory); one-line errors otherwise."""
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        raise UserError(f"'{model_dir}' holds no GPT-2 checkpoint (no config.json)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "gpt2":
        raise UserError(f"'{model_dir}' holds a '{model_type}' model, not a GPT-2 one (a text-lm checkpoint)")
    return GPT2LMHeadModel.from_pretrained(model_dir, local_files_only=True, attn_implementation="sdpa")


def context_qa_rows(batch: ImageTextBatch, bos_id: int, eos_id: int, prob: float, generator: torch.Generator,
                    max_length: int) -> tuple[list[list[int]], int]:
    """Every sample's token ids: its ``<bos> caption <eos>`` as tokenised by the loop, or (chance ``prob``, facts
    needed) ``caption <bos> question: <q> answer: <a> <eos>``; truncated to ``max_length``. Also how many are QA."""
    coins = torch.rand(len(batch.keys), generator=generator).tolist()
    picks = torch.randint(0, 1 << 30, (len(batch.keys),), generator=generator).tolist()
    rows, n_qa = [], 0
    for i, (key, facts) in enumerate(zip(batch.keys, batch.facts())):
        ids = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
        questions = vqa_questions(key, facts) if facts else []
        if questions and coins[i] < prob:
            q = questions[picks[i] % len(questions)]
            caption = [t for t in ids if t not in (bos_id, eos_id)]
            ids = [*caption, bos_id, *token_ids(batch.tokenizer, vqa_prompt(q.question)),
                   *token_ids(batch.tokenizer, " " + q.answer), eos_id]
            n_qa += 1
        rows.append(ids[:max_length])
    return rows, n_qa


def pad_rows(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


@register_family
class TextLMFamily(Family):
    name = "text-lm"
    paper = "Radford et al., Language Models are Unsupervised Multitask Learners, OpenAI 2019 (GPT-2)"
    recipe_cls = TextLMRecipe
    capabilities = frozenset({"text_features"})
    objectives = ("causal_lm",)

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, TextLMRecipe)
        check_heads(self.name, recipe)
        check_text_fits(self.name, recipe, "n_positions")
        return GPT2LMHeadModel(gpt2_config(recipe, vocab_size, special_ids))

    def preflight(self, recipe: Recipe, tokenizer: object) -> None:
        assert isinstance(recipe, TextLMRecipe)
        check_vocab_size(tokenizer, recipe.vocab_size)

    def task_formats(self, recipe: Recipe) -> frozenset[str]:
        assert isinstance(recipe, TextLMRecipe)
        return frozenset({"vqa"}) if recipe.context_qa_prob > 0 else frozenset()  # reading comprehension in the evaluation's "question: q answer: a" form

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, TextLMRecipe)
        input_ids, attention_mask, share = batch.input_ids, batch.attention_mask, 0.0
        if recipe.context_qa_prob > 0 and batch.tokenizer is not None and any(f for f in batch.facts()):
            config = _unwrap(model).config
            rows, n_qa = context_qa_rows(batch, config.bos_token_id, config.eos_token_id, recipe.context_qa_prob,
                                         batch_generator(batch.keys, recipe.seed + batch.step), recipe.n_positions)
            input_ids, attention_mask = pad_rows(rows, config.pad_token_id, input_ids.device)
            share = n_qa / len(rows)
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        loss = lm_loss(logits, labels)
        return {"loss": loss, "lm": loss.detach(), "perplexity": loss.detach().exp(),
                "context_qa_share": torch.tensor(share, device=loss.device)}

    def load(self, model_dir: Path) -> nn.Module:
        return load_gpt2(model_dir)

    # ---- capability "text_features" (the NLU probe's text-only reference) ------------------------------------
    def text_features(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the GPT-2's last hidden states over the attention mask (B, D); a text-only model ignores the image."""
        core = _unwrap(model)
        hidden = core.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)
