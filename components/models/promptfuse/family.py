"""PromptFuse / BlindPrompt — "Modular and Parameter-Efficient Multimodal Fusion with Prompting" (Liang, Cheng et al.,
Findings of ACL 2022, arXiv 2203.08055; the survey calls it "Prompting as Multimodal Fusing").

Idea: Frozen's vision encoder both extracts image features and aligns them with the LM's space; PromptFuse splits the
two. A pretrained image encoder and a pretrained LM both stay frozen, and the alignment is left to ``n_prompts``
trainable prompt vectors in the LM's input — the only trained parameters (the paper: ~15K per modality, i.e. 20
prompts of width 768), which keeps the design modular (swap an encoder, add a modality) and parameter-efficient.

Architecture (``modeling.PromptFuseModel``): the ``image_encoder`` teacher (a catalog CLIP: its vision tower and
visual projection, ``get_family("clip").load``), the ``language_model`` teacher (a text-lm GPT-2), and the prompts.
The train flow trains both teachers first in the DAG when their fields are empty. The CLIP image embedding enters
the LM as input embeddings, L2-normalised to the LM's mean word-embedding norm and — only when CLIP's width differs
from the LM's (``base``: 512 vs 768) — through a fixed random semi-orthogonal map; no projection trains, following
the paper (its ViT-base and BERT-base share width 768 and it trains the prompts alone). Images are resized with
``F.interpolate`` when the recipe's size differs from the CLIP's.

Sequence: the paper's input is ``[prompts; image; text]`` into a bidirectional BERT. Here the LM is causal (the
teachers this project trains are GPT-2), so prompts placed first can never see the image or text anyway — they are
blind by construction. ``prompt_position: after_image`` (the default) places them after the image,
``[image; prompts; <bos> text]``, where they *can* attend to the image, and BlindPrompt is a real choice:
``blind_prompt: true`` adds a 4-D attention mask under which prompt positions attend only to prompt positions (never
to image or text tokens; ``models.prefix_lm.attention_mask_4d``; GPT-2 here takes a prepared 4-D boolean
mask as given). Text positions see everything before them either way. ``prompt_position: first`` is the paper's
order (``blind_prompt`` then changes nothing, which the tests check).

Objective: the paper's downstream CE in low-resource settings becomes, as for Frozen, conditioned text generation:
captioning (``<bos>`` → caption ``<eos>``) and, for samples with scene facts, with probability ``vqa_prob``, VQA
(``<bos> question: <q> answer:`` → `` <answer> <eos>``, the evaluation's exact prompt). LM loss on the targets only.
Draws come from ``masking.batch_generator(keys, seed + step)``.

Freezing: ``frozen_patterns`` = ``language_model.*`` and ``image_encoder.*``; the loop's ``apply_freeze`` then logs
``trainable_params`` = n_prompts × d_lm (tiny: 20 × 128 = 2,560; base: 20 × 768 = 15,360) against the total.
Both encoders stay in eval mode while training. Checkpoints are self-contained (every weight saved).

Capability "generate": ``generate_texts(model, pixels, tokenizer, prompts, max_new_tokens)`` (greedy; prompts None
captions). Not implemented: the paper's audio modality (MUStARD) and its BERT-MLM answer classification.

Run:  vlforge run train --family promptfuse --data shapes-300 --recipe tiny   (trains clip and text-lm first)
Recipes: ``recipes/tiny.yaml`` (2 CPU cores), ``recipes/base.yaml`` (CLIP ViT-B/32 image tower + GPT-2 small)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
from vlforge.components.models.frozen.family import language_model
from vlforge.components.models.masking import batch_generator
from vlforge.components.models.prefix_lm import IMAGE, PROMPT, TEXT, Segment, caption_or_vqa_texts, decode, greedy_generate, pack, prefix_lm_losses, prompt_texts, text_segment
from vlforge.components.models.promptfuse.modeling import PromptFuseModel
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe, get_family, register_family
from vlforge.components.models.registry import unwrap as _unwrap

from vlforge.errors import UserError


class PromptFuseRecipe(Recipe):
    language_model: str | None = Field(None, description="teacher: a text-lm checkpoint dir (catalog:REF); empty: "
                                       "trained first in the DAG. None at build: a random LM of lm_recipe")
    image_encoder: str | None = Field(None, description="teacher: a CLIP checkpoint dir (catalog:REF); empty: trained "
                                      "first in the DAG. None at build: a random CLIP image tower of clip_recipe")
    lm_recipe: str = Field("tiny", description="text-lm recipe of the random LM used when language_model is None")
    clip_recipe: str = Field("tiny", description="clip recipe of the random image tower used when image_encoder is None")
    n_prompts: int = Field(20, ge=1, description="trainable prompt vectors (paper: ~15K parameters per modality = 20 x 768)")
    blind_prompt: bool = Field(False, description="BlindPrompt: prompt positions attend only to prompts")
    prompt_position: Literal["after_image", "first"] = Field(
        "after_image", description="first: [prompts; image; text] (the paper's order; with a causal LM the prompts "
        "are then blind anyway); after_image: [image; prompts; text]")
    image_tokens: Literal["pooled", "patches"] = Field("pooled", description="CLIP's projected image embedding, or "
                                                       "every projected token")
    vqa_prob: float = Field(0.5, ge=0, le=1, description="chance a sample with scene facts is a VQA item")


def image_encoder(field: str | None, clip_recipe: str) -> CLIPVisionModelWithProjection:
    """The CLIP teacher's vision tower and visual projection, or (field None) a random tower of ``clip_recipe``."""
    clip = get_family("clip")
    if field:
        teacher = clip.load(Path(field))
        vision, proj = teacher.vision_model, teacher.visual_projection  # type: ignore[union-attr]
        config = CLIPVisionConfig.from_dict({**vision.config.to_dict(), "projection_dim": proj.out_features})
        encoder = CLIPVisionModelWithProjection(config)
        encoder.vision_model.load_state_dict(vision.state_dict())
        encoder.visual_projection.load_state_dict(proj.state_dict())
        return encoder
    from vlforge.components.models.clip.family import vision_config

    return CLIPVisionModelWithProjection(vision_config(clip.recipe(clip_recipe)))  # type: ignore[arg-type]


def blocked(core: PromptFuseModel) -> dict[int, tuple[int, ...]] | None:
    """BlindPrompt: prompt queries may not see image or text keys."""
    return {PROMPT: (IMAGE, TEXT)} if core.config["blind_prompt"] else None


def conditioned_rows(core: PromptFuseModel, image: torch.Tensor, prompts: torch.Tensor,
                     texts: list[tuple[list[int], list[int]]]) -> list[list[Segment]]:
    """Each sample's segments in the recipe's order: [image; prompts; text] or [prompts; image; text]."""
    wte = core.language_model.get_input_embeddings()
    rows = []
    for i, (inp, tgt) in enumerate(texts):
        cond = [Segment(image[i], IMAGE), Segment(prompts[i], PROMPT)]
        if core.config["prompt_position"] == "first":
            cond.reverse()
        text = [text_segment(wte, inp)] + ([text_segment(wte, tgt, target=True)] if tgt else [])
        rows.append(cond + text)
    return rows


@register_family
class PromptFuseFamily(Family):
    name = "promptfuse"
    paper = ("Liang et al., Modular and Parameter-Efficient Multimodal Fusion with Prompting (PromptFuse, BlindPrompt), "
             "Findings of ACL 2022 (arXiv 2203.08055)")
    recipe_cls = PromptFuseRecipe
    capabilities = frozenset({"generate"})
    objectives = ("captioning_lm", "vqa_lm")
    teachers = {"language_model": ("text-lm",), "image_encoder": ("clip",)}  # noqa: RUF012 (read by the registry)

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, PromptFuseRecipe)
        if "bos" not in special_ids or "eos" not in special_ids:
            raise UserError("promptfuse needs a tokenizer with <bos> and <eos> tokens")
        lm = language_model(recipe.language_model, recipe.lm_recipe, vocab_size, special_ids, self.name)
        encoder = image_encoder(recipe.image_encoder, recipe.clip_recipe)
        config = {"n_prompts": recipe.n_prompts, "blind_prompt": recipe.blind_prompt,
                  "prompt_position": recipe.prompt_position, "image_tokens": recipe.image_tokens,
                  "special_ids": dict(special_ids), "seed": recipe.seed, "lm_config": lm.config.to_dict(),
                  "vision_config": encoder.config.to_dict()}
        model = PromptFuseModel(config, language_model=lm, image_encoder=encoder)
        n_image = 1 if recipe.image_tokens == "pooled" else (encoder.config.image_size // encoder.config.patch_size) ** 2 + 1
        if n_image + recipe.n_prompts + recipe.max_text_length > lm.config.n_positions:
            raise UserError(f"promptfuse: {n_image} image tokens + n_prompts {recipe.n_prompts} + max_text_length "
                            f"{recipe.max_text_length} exceed the language model's {lm.config.n_positions} positions")
        return model.train()

    def frozen_patterns(self, recipe: Recipe) -> list[str]:
        return ["language_model.*", "image_encoder.*"]

    def task_formats(self, recipe: Recipe) -> frozenset[str]:
        assert isinstance(recipe, PromptFuseRecipe)
        return frozenset({"vqa"}) if recipe.vqa_prob > 0 else frozenset()  # VQA items in the evaluation's prompt form

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, PromptFuseRecipe)
        core = _unwrap(model)
        gen = batch_generator(batch.keys, recipe.seed + batch.step)
        texts, is_vqa = caption_or_vqa_texts(batch, int(core.special_ids["bos"]), int(core.special_ids["eos"]),
                                             recipe.vqa_prob, gen)
        image, prompts = model(batch.pixel_values)  # through the (data-parallel) wrapper: prompt gradients sync
        out = prefix_lm_losses(core.language_model, pack(conditioned_rows(core, image, prompts, texts)), is_vqa, blocked(core))
        return {**out, "prompt_norm": core.prompts.detach().norm(dim=-1).mean()}

    def load(self, model_dir: Path) -> nn.Module:
        return PromptFuseModel.from_pretrained(model_dir)

    # ---- capability "generate" --------------------------------------------------------------------------
    @torch.no_grad()
    def generate_texts(self, model: nn.Module, pixel_values: torch.Tensor, tokenizer: Any,
                       prompts: list[str] | None, max_new_tokens: int) -> list[str]:
        core = _unwrap(model)
        image, soft = core(pixel_values)
        texts = [(ids, []) for ids in prompt_texts(tokenizer, int(core.special_ids["bos"]), prompts, image.shape[0])]
        packed = pack(conditioned_rows(core, image, soft, texts), pad_left=True)
        wte = core.language_model.get_input_embeddings()
        out = greedy_generate(core.language_model, packed, wte, int(core.special_ids["eos"]), max_new_tokens, blocked(core))
        return decode(tokenizer, out)
