"""VLMo — "VLMo: Unified Vision-Language Pre-Training with Mixture-of-Modality-Experts" (Bao et al., 2021).

The model is ``modeling.VlmoModel`` (a ``save_pretrained`` checkpoint, model type ``vlforge_vlmo``). Pretraining is
stagewise, as in the paper (section 2.3), one ``vlforge run train`` per stage, each registering a model whose parents
include the previous stage's model (``init_from: catalog:REF`` is resolved by the train stage and becomes a parent):
1. ``stage: 1`` image-only masked image modelling on the batch's images (captions ignored); only the vision side
   (patch embedding, attention, V-FFN, norms) trains;
2. ``stage: 2`` text-only MLM on the batch's captions (images ignored), with the self-attention and the V-FFN
   frozen (also the image embedding and final norm, so the image path is exactly what stage 1 left);
3. ``stage: 3`` image-text ITC + ITM with hard negatives + MLM, everything trainable (but the stage-1 MIM head and
   mask embedding, which no stage-3 loss uses).
   Its ITM negatives are the paper's hard ones, drawn ∝ softmax of the ITC similarities; for the first
   ``itm_random_negative_steps`` (tiny: 200) they are drawn uniformly instead, as ViLT's, a curriculum for a stage 3
   trained from scratch (the paper's stage 3 starts from stages 1 and 2). Measured on 1,000 builtin scenes, batch 64,
   from scratch: hard negatives from the first step kept ITM at its prior (loss 0.63) for 300 steps, random ones
   took it to 0.27 by step 150 (both with layer scale 1.0); a linear ramp from uniform to hard over 150 steps left it
   at 0.60 after 300 steps (600 scenes, 2 workers). Near-identical hard negatives can be captions the image also fits
   ("a red circle" against "a small red circle").
Freezing is set in ``build_model`` from ``recipe.stage`` (``requires_grad=False``), so the loop's optimiser and the
data-parallel wrapper skip frozen parameters; unused parameters are frozen too, which a data-parallel run needs.

The commands (or one pipeline config whose ``train`` is ``{family: vlmo, recipe: tiny-stage1, then: [{recipe:
tiny-stage2}, {recipe: tiny}]}``, which chains the three as one DAG)::

    vlforge run train --family vlmo --data REF --recipe tiny-stage1 --json            # -> model A
    vlforge run train --family vlmo --data REF --recipe tiny-stage2 --set init_from=catalog:A --json   # -> B
    vlforge run train --family vlmo --data REF --recipe tiny --set init_from=catalog:B --json          # -> C

Capabilities: "retrieval" (dual encoder: ``encode_images``/``encode_texts``, the final-layer projected [CLS]) and
"itm" (fusion encoder: ``score_pairs``, the ITM log-odds). Masks and negatives draw from ``masking.batch_generator``.

Loss weights, as the released code (microsoft/unilm ``vlmo/``) sums them. Its ``config.py`` ``loss_names`` values
(itm 1, itc 1, mlm 1 for ``task_mlm_itm_itc_*``) only switch tasks on (``vlmo_utils.set_task`` keeps those >= 1);
the training step adds every ``*_loss`` unweighted (``vlmo_module.training_step``), and the weights sit in
``modules/objectives.py``:
- ``mlm_weight`` 0.25: ``compute_mlm`` returns the image-text MLM loss x 0.25 (the recipes' value; stage 3 only);
- ``itm_weight`` 1: ``compute_itm_hardneg`` returns its CE unscaled;
- ``itc_weight`` 1: ``compute_itc`` returns 0.5 x (the V-FFN/L-FFN [CLS] contrastive loss + the VL-FFN one), the
  0.5 average already inside ``modeling.VlmoModel``'s ``itc``;
- stage 2's text-only MLM is unscaled (``compute_textonly_mlm``) and stage 1's MIM is the only stage-1 loss (the
  release has no stage-1 code; BEiT's MIM is one unweighted loss), so neither weight field applies to them."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from vlforge.components.models.common.config import MaskedLMRecipe, PatchRecipe, TransformerRecipe, VocabRecipe
from vlforge.components.models.common.preflight import check_heads, check_per_worker_batch, check_token, check_vocab_size, require_mask_id
from vlforge.components.models.heads import not_negative_mask
from vlforge.components.models.masking import (
    batch_generator,
    mask_tokens,
    random_patch_mask,
)
from vlforge.components.models.registry import FAMILY_FILE, Family, ImageTextBatch, Recipe, load_pretrained, register_family
from vlforge.components.models.registry import unwrap as _unwrap
from vlforge.components.models.vlmo.modeling import MODEL_TYPE, VlmoConfig, VlmoModel

from vlforge.errors import UserError

# What trains in each stage (parameter-name prefixes / block sub-module names); everything else is frozen.
_STAGE1_BLOCK = ("norm1.", "attn.", "gamma_1", "gamma_2", "norm2_imag.", "mlp_imag.")
_STAGE2_BLOCK = ("norm2_text.", "mlp_text.")
_STAGE3_FROZEN = ("image_embeddings.mask_token", "mim_head.")
_ARCH_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio",
                "vlffn_start_layer", "image_size", "patch_size", "max_text_positions")


class VlmoRecipe(MaskedLMRecipe, VocabRecipe, PatchRecipe, TransformerRecipe):
    stage: Literal[1, 2, 3] = Field(3, description="1: image-only MIM, 2: text-only MLM (frozen attention, V-FFN), 3: image-text")
    init_from: str | None = Field(None, description="the previous stage's VLMo model: a directory or catalog:REF")
    vlffn_start_layer: int = Field(2, ge=0, description="layers with this index and above get the VL-FFN")
    layer_scale_init: float = Field(0.1, gt=0, description="BEiT's layer scale (gamma) initial value")
    initializer_range: float = Field(0.02, gt=0, description="std of the Linear/Embedding initialisation")
    mim_mask_ratio: float = Field(0.4, gt=0, lt=1, description="share of patches masked in stage 1 (BEiT: 40%)")
    itm_random_negative_steps: int = Field(0, ge=0, description="ITM negatives are drawn uniformly (ViLT's random "
                                           "ones) for this many steps, then by softmax(ITC similarity), the paper's "
                                           "hard negatives; 0: hard from the first step, as the paper (whose stage 3 "
                                           "starts from stages 1 and 2)")
    itc_weight: float = Field(1.0, ge=0, description="stage 3's ITC loss weight (released objectives.compute_itc: 1)")
    itm_weight: float = Field(1.0, ge=0, description="stage 3's ITM loss weight (released compute_itm_hardneg: 1)")
    mlm_weight: float = Field(0.25, ge=0, description="stage 3's image-text MLM loss weight (released "
                              "objectives.compute_mlm: mlm_loss * 0.25); stage 2's text-only MLM is unweighted")
    max_logit_scale: float = Field(100.0, gt=0)
    gather_features: bool = True


def vlmo_config(recipe: VlmoRecipe, vocab_size: int) -> VlmoConfig:
    return VlmoConfig(
        vocab_size=recipe.vocab_size or vocab_size,
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        mlp_ratio=recipe.mlp_ratio,
        vlffn_start_layer=recipe.vlffn_start_layer,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        max_text_positions=recipe.max_text_length,
        layer_scale_init=recipe.layer_scale_init,
        initializer_range=recipe.initializer_range,
    )


def trainable_in_stage(name: str, stage: int) -> bool:
    """Whether parameter ``name`` of a ``VlmoModel`` trains in ``stage``."""
    if stage == 3:
        return not name.startswith(_STAGE3_FROZEN)
    if name.startswith("blocks."):
        sub = name.split(".", 2)[2]
        return sub.startswith(_STAGE1_BLOCK if stage == 1 else _STAGE2_BLOCK)
    if stage == 1:
        return name.startswith(("image_embeddings.", "modality_type.", "norm.", "mim_head."))
    return name.startswith(("text_embeddings.", "mlm_head."))


def apply_stage_freezing(model: VlmoModel, stage: int) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(trainable_in_stage(name, stage))


def read_vlmo_dir(path: str) -> Path:
    """The directory of a VLMo checkpoint named by ``init_from``; UserError when it is not one."""
    model_dir = Path(path).expanduser()
    meta = model_dir / FAMILY_FILE
    if not meta.is_file():
        raise UserError(f"init_from '{path}' is not a vlforge model directory (no {FAMILY_FILE})")
    family = json.loads(meta.read_text()).get("family")
    if family != "vlmo":
        raise UserError(f"init_from '{path}' is a '{family}' model; VLMo stages continue from a 'vlmo' model")
    return model_dir


@register_family
class VlmoFamily(Family):
    name = "vlmo"
    batch_coupled_loss = True  # in-batch contrastive loss: accum_freq > 1 needs GradCache (not implemented here)
    paper = "Bao et al., VLMo: Unified Vision-Language Pre-Training with Mixture-of-Modality-Experts, NeurIPS 2022 (arXiv 2111.02358)"
    recipe_cls = VlmoRecipe
    capabilities = frozenset({"retrieval", "itm", "fused_features"})
    objectives = ("mim (stage 1)", "mlm (stage 2)", "itc + itm (hard negatives) + mlm (stage 3)")
    artifact_fields = ("init_from",)
    image_mean = (0.5, 0.5, 0.5)  # VLMo (BEiT) normalises pixels to [-1, 1]
    image_std = (0.5, 0.5, 0.5)

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, VlmoRecipe)
        check_heads(self.name, recipe)
        if recipe.vlffn_start_layer >= recipe.num_layers:
            raise UserError(f"vlmo recipe: vlffn_start_layer {recipe.vlffn_start_layer} leaves no VL-FFN layer in {recipe.num_layers} layers")
        require_mask_id(self.name, special_ids)
        config = vlmo_config(recipe, vocab_size)
        config.vlforge_special_ids = dict(special_ids)  # saved with the checkpoint: masking needs them
        model = VlmoModel(config)
        if recipe.init_from is not None:
            previous = VlmoModel.from_pretrained(read_vlmo_dir(recipe.init_from), local_files_only=True)
            mismatch = [f for f in _ARCH_FIELDS if getattr(previous.config, f) != getattr(config, f)]
            if mismatch:
                f = mismatch[0]
                raise UserError(f"init_from '{recipe.init_from}': its {f} is {getattr(previous.config, f)}, this recipe's is {getattr(config, f)}")
            model.load_state_dict(previous.state_dict())
        apply_stage_freezing(model, recipe.stage)
        return model

    def preflight(self, recipe: Recipe, tokenizer: object) -> None:
        assert isinstance(recipe, VlmoRecipe)
        check_token(self.name, tokenizer, "mask")
        check_vocab_size(tokenizer, recipe.vocab_size)
        if recipe.init_from is not None:
            read_vlmo_dir(recipe.init_from)
        if recipe.stage == 3:
            check_per_worker_batch("vlmo stage 3", recipe, "pairs", "ITM needs negatives")

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, VlmoRecipe)
        core = _unwrap(model)
        gen = batch_generator(batch.keys, recipe.seed)
        device = batch.pixel_values.device
        if recipe.stage == 1:
            n = core.image_embeddings.num_patches
            patch_mask = random_patch_mask(batch.pixel_values.shape[0], n, recipe.mim_mask_ratio, device, gen)
            out = model(stage=1, pixel_values=batch.pixel_values, patch_mask=patch_mask)
            return {"loss": out["mim"], "mim": out["mim"].detach()}
        special_ids: dict[str, int] = core.config.vlforge_special_ids
        mlm_ids, labels = mask_tokens(
            batch.input_ids, batch.attention_mask, mask_id=special_ids["mask"], vocab_size=core.config.vocab_size,
            special_ids=special_ids.values(), word_ids=batch.word_ids, p=recipe.mlm_probability,
            whole_word=recipe.whole_word_masking, generator=gen,
        )
        if recipe.stage == 2:
            out = model(stage=2, attention_mask=batch.attention_mask, mlm_input_ids=mlm_ids, mlm_labels=labels)
            return {"loss": out["mlm"], "mlm": out["mlm"].detach()}
        out = model(
            stage=3, pixel_values=batch.pixel_values, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
            mlm_input_ids=mlm_ids, mlm_labels=labels, itm_forbid=not_negative_mask(batch.keys, batch.captions, device),
            generator=gen, gather=recipe.gather_features, hard_negatives=batch.step >= recipe.itm_random_negative_steps,
        )
        loss = recipe.itc_weight * out["itc"] + recipe.itm_weight * out["itm"] + recipe.mlm_weight * out["mlm"]
        return {"loss": loss, **{k: v.detach() for k, v in out.items()}, "logit_scale": core.logit_scale.exp().detach()}

    def after_optimizer_step(self, model: nn.Module, recipe: Recipe) -> None:
        assert isinstance(recipe, VlmoRecipe)
        with torch.no_grad():
            core = _unwrap(model)
            for scale in (core.logit_scale, core.logit_vl_scale):
                scale.clamp_(0, math.log(recipe.max_logit_scale))

    def load(self, model_dir: Path) -> nn.Module:
        return load_pretrained(model_dir, VlmoModel, MODEL_TYPE, "VLMo")

    # ---- capabilities: "retrieval" (dual encoder) and "itm" (fusion encoder) ------------------------------
    def encode_images(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        core = _unwrap(model)
        hidden, _ = core.encode_image(pixel_values)
        return torch.nn.functional.normalize(core.itc_image_proj(hidden[:, 0]), dim=-1)

    def encode_texts(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        core = _unwrap(model)
        hidden, _ = core.encode_text(input_ids, attention_mask)
        return torch.nn.functional.normalize(core.itc_text_proj(hidden[:, 0]), dim=-1)

    def score_pairs(
        self, model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        tokenizer: Any = None,
    ) -> torch.Tensor:
        """Match log-odds (B,) of each (image i, text i) pair from the fusion encoder's ITM head."""
        logits = _unwrap(model).itm_logits(input_ids, attention_mask, pixel_values)
        return logits[:, 1] - logits[:, 0]

    # ---- capability "fused_features" (NLVR2 fine-tuning: the pooled fusion state the ITM head reads) -------
    def fused_features(
        self, model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        core = _unwrap(model)
        return core.pooler(core.fuse(input_ids, attention_mask, pixel_values))
