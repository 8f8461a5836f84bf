"""Frozen — "Multimodal Few-Shot Learning with Frozen Language Models" (Tsimpoukelli et al., NeurIPS 2021,
arXiv 2106.13884).

Architecture (``modeling.FrozenModel``): a pretrained causal LM kept frozen, and a trainable vision encoder whose
pooled feature a linear layer maps to ``n_prefix`` (paper: 2) embeddings in the LM's input space — the *visual
prefix*, "an image-conditional prefix" the LM reads like word embeddings. The LM is the ``language_model``
teacher, a text-lm (GPT-2-style) checkpoint directory: the train flow trains one first in the DAG (captions only,
same data and tokenizer) when the field is empty. The paper's LM is a 7B transformer pretrained on C4 and its
vision encoder an NF-ResNet-50; here GPT-2 (tiny, or GPT-2 small for ``base``) and a small ViT (``tiny``) or a
``transformers`` ResNet-50 (``base``; batch-normalised, since there is no NF-ResNet in ``transformers``).

Freezing: ``frozen_patterns`` returns ``language_model.*`` (``freeze_lm``; the paper's "Frozen finetuned" ablation
sets it false), so the loop's ``apply_freeze`` gives the LM no gradient and no optimiser state; gradients still flow
*through* it to the prefix. The LM also stays in eval mode (no dropout) while the rest trains (``FrozenModel.train``).

Checkpoint: self-contained — the frozen LM's weights are saved with the vision encoder and the prefix map (one
``model.safetensors`` + ``config.json``), so the model reloads and evaluates without the teacher directory (which
the catalog's lineage still records as a parent). That costs the LM's size per checkpoint, which a 7B LM would
not afford; reloading the LM from the teacher at load time is the alternative.

Objective: captioning LM loss conditioned on the visual prefix (``[prefix] <bos> caption <eos>``, labels -100 on
the prefix and ``<bos>``; ``losses.lm_loss``). With scene facts (builtin scenes), each sample is with probability
``vqa_prob`` a VQA item instead: ``[prefix] <bos> question: <q> answer:`` with target `` <answer> <eos>`` — exactly
the prompt the evaluation's VQA-by-generation uses. Which samples become VQA, and which question, is drawn from
``masking.batch_generator(keys, seed + step)``, so a step is a pure function of the batch. The paper trains
captioning only (``vqa_prob: 0`` in ``tiny`` and ``base``); ``tiny-vqa-supervised`` trains VQA too. Evaluation calls
the no-shot VQA score zero-shot only where neither the model nor its frozen LM saw the ``question: q answer: a``
form (``Family.seen_formats``; the tiny text-lm reads it with ``context_qa_prob`` 0.5, so a Frozen on it reports
``vqa_no_shot_accuracy``).

Capabilities:
- "generate": ``generate_texts(model, pixels, tokenizer, prompts, max_new_tokens)``: prompts None captions
  (``[prefix] <bos>`` → greedy continuation); a prompt string continues ``[prefix] <bos> prompt``.
- "few_shot": ``few_shot_generate(model, shots, query_pixels, query_prompt, tokenizer, max_new_tokens)``: the
  paper's interleaved prompt — every shot as ``[prefix_i] <bos> text_i <eos>``, then ``[prefix_q] <bos> prompt``
  (``few_shot_sequence`` builds it). Decoding is greedy, as the paper's.

Not implemented: the paper's fast-concept-binding tasks (miniImageNet with nonsense words) and its data (CC3M at
224 px, ~48h on TPUs); the 7B LM. The paper's "Frozen scratch"/"Frozen finetuned" ablations are reachable through a
random ``language_model`` (``lm_recipe``) and ``freeze_lm: false``.

Run:  vlforge run train --family frozen --data shapes-300 --recipe tiny    (trains a text-lm first)
Recipes: ``recipes/tiny.yaml`` (2 CPU cores, minutes), ``recipes/base.yaml`` (ResNet-50 + GPT-2 small)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from vlforge.components.models.common.preflight import check_heads
from vlforge.components.models.frozen.modeling import FrozenModel
from vlforge.components.models.masking import batch_generator
from vlforge.components.models.prefix_lm import IMAGE, Segment, caption_or_vqa_texts, decode, greedy_generate, pack, prefix_lm_losses, prompt_texts, text_segment, token_ids
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe, get_family, register_family
from vlforge.components.models.registry import unwrap as _unwrap
from vlforge.components.models.text_lm.family import gpt2_config, load_gpt2

from vlforge.errors import UserError


class FrozenRecipe(Recipe):
    language_model: str | None = Field(None, description="teacher: a text-lm checkpoint dir (catalog:REF); empty: "
                                       "the train flow trains one first. None at build: a random LM of lm_recipe")
    lm_recipe: str = Field("tiny", description="the text-lm recipe of the random LM used when language_model is "
                           "None (parameter counting, ablations)")
    freeze_lm: bool = Field(True, description="keep the LM frozen (the paper); false: the 'Frozen finetuned' ablation")
    n_prefix: int = Field(2, ge=1, description="visual prefix length (paper: 2)")
    vision: Literal["vit", "resnet"] = "vit"
    vision_width: int = Field(128, ge=8, description="vit: hidden size")
    vision_layers: int = Field(3, ge=1, description="vit: layers")
    vision_heads: int = Field(4, ge=1, description="vit: heads")
    mlp_ratio: int = Field(4, ge=1, description="vit: MLP width / hidden size")
    patch_size: int = Field(8, ge=1, description="vit: patch size")
    resnet_embedding_size: int = Field(64, ge=8, description="resnet: stem width")
    resnet_hidden_sizes: list[int] = Field(default_factory=lambda: [256, 512, 1024, 2048], description="resnet: stage widths")
    resnet_depths: list[int] = Field(default_factory=lambda: [3, 4, 6, 3], description="resnet: blocks per stage")
    vqa_prob: float = Field(0.5, ge=0, le=1, description="chance a sample with scene facts is a VQA item")


def vision_settings(recipe: FrozenRecipe) -> dict[str, Any]:
    if recipe.vision == "vit":
        return {"hidden_size": recipe.vision_width, "num_hidden_layers": recipe.vision_layers,
                "num_attention_heads": recipe.vision_heads, "intermediate_size": recipe.vision_width * recipe.mlp_ratio,
                "image_size": recipe.image_size, "patch_size": recipe.patch_size}
    return {"embedding_size": recipe.resnet_embedding_size, "hidden_sizes": list(recipe.resnet_hidden_sizes),
            "depths": list(recipe.resnet_depths), "layer_type": "bottleneck", "hidden_act": "relu"}


def language_model(field: str | None, lm_recipe: str, vocab_size: int, special_ids: dict[str, int], family: str):
    """The teacher LM from its directory, or (field None) a random one of the text-lm recipe ``lm_recipe``."""
    if field:
        lm = load_gpt2(field)
        if lm.config.vocab_size < vocab_size:
            raise UserError(f"{family}: the language model '{field}' has {lm.config.vocab_size} tokens, fewer than the "
                            f"tokenizer's {vocab_size}; train it with the same tokenizer")
        return lm
    from transformers import GPT2LMHeadModel

    text_lm = get_family("text-lm")
    return GPT2LMHeadModel(gpt2_config(text_lm.recipe(lm_recipe), vocab_size, special_ids))  # type: ignore[arg-type]


def _ids(core: FrozenModel, name: str) -> int:
    return int(core.special_ids[name])


@register_family
class FrozenFamily(Family):
    name = "frozen"
    paper = "Tsimpoukelli et al., Multimodal Few-Shot Learning with Frozen Language Models, NeurIPS 2021 (arXiv 2106.13884)"
    recipe_cls = FrozenRecipe
    capabilities = frozenset({"generate", "few_shot"})
    objectives = ("captioning_lm", "vqa_lm")
    teachers = {"language_model": ("text-lm",)}  # noqa: RUF012 (class-level table the registry reads)

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, FrozenRecipe)
        if recipe.vision == "vit":
            check_heads(self.name, recipe, "vision_width", "vision_heads")
        if "bos" not in special_ids or "eos" not in special_ids:
            raise UserError("frozen needs a tokenizer with <bos> and <eos> tokens")
        lm = language_model(recipe.language_model, recipe.lm_recipe, vocab_size, special_ids, self.name)
        if recipe.n_prefix + recipe.max_text_length > lm.config.n_positions:
            raise UserError(f"frozen: n_prefix {recipe.n_prefix} + max_text_length {recipe.max_text_length} exceed the "
                            f"language model's {lm.config.n_positions} positions")
        config = {"vision": recipe.vision, "vision_config": vision_settings(recipe), "n_prefix": recipe.n_prefix,
                  "freeze_lm": recipe.freeze_lm, "special_ids": dict(special_ids), "lm_config": lm.config.to_dict()}
        model = FrozenModel(config, language_model=lm)
        if recipe.freeze_lm:
            model.language_model.eval()
        return model

    def frozen_patterns(self, recipe: Recipe) -> list[str]:
        assert isinstance(recipe, FrozenRecipe)
        return ["language_model.*"] if recipe.freeze_lm else []

    def task_formats(self, recipe: Recipe) -> frozenset[str]:
        assert isinstance(recipe, FrozenRecipe)
        return frozenset({"vqa"}) if recipe.vqa_prob > 0 else frozenset()  # VQA items in the evaluation's prompt form

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, FrozenRecipe)
        core = _unwrap(model)
        gen = batch_generator(batch.keys, recipe.seed + batch.step)
        texts, is_vqa = caption_or_vqa_texts(batch, _ids(core, "bos"), _ids(core, "eos"), recipe.vqa_prob, gen)
        prefix = model(batch.pixel_values)  # through the (data-parallel) wrapper: its gradients are synchronised
        wte = core.language_model.get_input_embeddings()
        rows = [[Segment(prefix[i], IMAGE), text_segment(wte, inp), text_segment(wte, tgt, target=True)]
                for i, (inp, tgt) in enumerate(texts)]
        return prefix_lm_losses(core.language_model, pack(rows), is_vqa)

    def load(self, model_dir: Path) -> nn.Module:
        return FrozenModel.from_pretrained(model_dir)

    # ---- capability "generate" --------------------------------------------------------------------------
    @torch.no_grad()
    def generate_texts(self, model: nn.Module, pixel_values: torch.Tensor, tokenizer: Any,
                       prompts: list[str] | None, max_new_tokens: int) -> list[str]:
        core = _unwrap(model)
        prefix = core(pixel_values)
        wte = core.language_model.get_input_embeddings()
        texts = prompt_texts(tokenizer, _ids(core, "bos"), prompts, prefix.shape[0])
        rows = [[Segment(prefix[i], IMAGE), text_segment(wte, text)] for i, text in enumerate(texts)]
        out = greedy_generate(core.language_model, pack(rows, pad_left=True), wte, _ids(core, "eos"), max_new_tokens)
        return decode(tokenizer, out)

    # ---- capability "few_shot" ----------------------------------------------------------------------------
    def few_shot_sequence(self, model: nn.Module, shots: list[tuple[torch.Tensor, str]], query_pixels: torch.Tensor,
                          query_prompt: str, tokenizer: Any) -> list[Segment]:
        """The paper's interleaved prompt: ``[prefix_1] <bos> text_1 <eos> ... [prefix_q] <bos> query_prompt``."""
        core = _unwrap(model)
        images = [p if p.dim() == 3 else p[0] for p in [*(s[0] for s in shots), query_pixels]]
        prefix = core(torch.stack(images).to(core.visual_prefix.weight.device))
        wte = core.language_model.get_input_embeddings()
        bos, eos = _ids(core, "bos"), _ids(core, "eos")
        segments: list[Segment] = []
        for i, (_, text) in enumerate(shots):
            segments += [Segment(prefix[i], IMAGE), text_segment(wte, [bos, *token_ids(tokenizer, text), eos])]
        segments += [Segment(prefix[-1], IMAGE), text_segment(wte, [bos, *token_ids(tokenizer, query_prompt)])]
        return segments

    @torch.no_grad()
    def few_shot_generate(self, model: nn.Module, shots: list[tuple[torch.Tensor, str]], query_pixels: torch.Tensor,
                          query_prompt: str, tokenizer: Any, max_new_tokens: int) -> str:
        core = _unwrap(model)
        segments = self.few_shot_sequence(core, shots, query_pixels, query_prompt, tokenizer)
        wte = core.language_model.get_input_embeddings()
        out = greedy_generate(core.language_model, pack([segments], pad_left=True), wte, _ids(core, "eos"), max_new_tokens)
        return decode(tokenizer, out)[0]
