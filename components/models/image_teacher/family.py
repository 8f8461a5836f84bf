"""image-teacher — a unimodal ViT image teacher: "An Image is Worth 16x16 Words: Transformers for Image Recognition
at Scale" (Dosovitskiy et al., ICLR 2021, arXiv 2010.11929).

What it is for: the image teacher of the ``unified`` family (Li et al., 2021, arXiv 2112.07074), which distils the
ViT's class predictions (supervised teacher) or hidden states (any teacher) into its shared transformer. The train
flow trains one in the DAG when a ``unified`` recipe leaves ``image_teacher`` empty, on the same dataset.

Architecture: ``ImageTeacherModel``: ``transformers``' ``ViTModel`` (pre-LN ViT, final LayerNorm, no pooler) from a
``ViTConfig``, plus one head chosen by ``objective`` (only that head is built, so nothing is left unused):
- ``objective: mim`` (the default: it needs nothing but images, so it works on any dataset): masked image
  modelling as in SimMIM/MAE-style pixel regression: ``masking.random_patch_mask`` (40% of the patches) replaced by
  ViT's learned mask token (``ViTModel(use_mask_token=True)``), a linear head predicts every masked patch's pixels,
  ``masking.masked_patch_loss`` (per-patch normalised MSE on the masked patches only);
- ``objective: supervised``: cross-entropy of a linear classifier on the final [CLS] against the source's class label
  (``batch.meta[i]["label"]``; builtin scenes and emoji have one). Samples without a label are ignored; a batch with
  none is an error that says to use ``mim``.

The label vocabulary (fixed before any data is seen, and saved in the checkpoint's ``config.json``): with the recipe's
``class_names`` a label is its index in that list (a label not in it is ignored); without, a label is hashed into
``num_classes`` buckets: ``blake2b(label utf-8, digest 8 bytes) as little-endian int mod num_classes`` (``label_index``).
Hashing needs no pass over the dataset and is the same in every process and Python version (unlike ``hash()``);
distinct labels may collide in one bucket, which only merges those classes (rare when ``num_classes`` is well
above the number of labels: the builtin scenes' 6 shapes fall in 6 distinct buckets of 64). The config keeps
``vlforge_label_rule``, ``vlforge_num_classes`` and ``vlforge_class_names``, so a student (``unified``) reuses the
exact mapping.

Capability "image_features": ``encode_images`` gives the final [CLS] hidden state, L2-normalised (the linear probe).
Pixels are normalised to [-1, 1] (mean = std = 0.5, as ViT), like the unified student that feeds it its images.
Masks draw from ``masking.batch_generator`` (recipe seed and the batch's keys, as ViLT and VLMo here), so resumed
runs repeat their draws, while the changing batches of a shuffled stream still get fresh masks.

Run:  vlforge run train --family image-teacher --data shapes-300 --recipe tiny [--set objective=supervised]
Recipes: ``recipes/tiny.yaml`` (2 CPU cores, minutes), ``recipes/base.yaml`` (ViT-B/16, 86M)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers import ViTConfig, ViTModel
from transformers.models.vit.modeling_vit import ViTPreTrainedModel
from vlforge.components.models.common.config import PatchRecipe, TransformerRecipe, dropouts, recipe_sizes
from vlforge.components.models.common.preflight import check_heads, check_patches
from vlforge.components.models.masking import (
    IGNORE_INDEX,
    batch_generator,
    masked_patch_loss,
    patchify,
    random_patch_mask,
)
from vlforge.components.models.registry import Family, ImageTextBatch, Recipe, register_family
from vlforge.components.models.registry import unwrap as _unwrap

from vlforge.errors import UserError

LABEL_RULE = "blake2b8-mod"  # the bucket rule of ``label_index`` without class_names (saved in the config)


class ImageTeacherRecipe(PatchRecipe, TransformerRecipe):
    objective: Literal["mim", "supervised"] = Field("mim", description="mim: masked image modelling (any dataset); "
                                                    "supervised: class labels from meta['label']")
    dropout: float = Field(0.0, ge=0, lt=1, description="hidden and attention dropout (ViT-B pretraining: 0.1)")
    initializer_range: float = Field(0.02, gt=0)
    num_classes: int = Field(64, ge=2, description="label hash buckets (without class_names)")
    class_names: list[str] = Field(default_factory=list, description="an explicit label vocabulary (index = class); "
                                   "empty: hash labels into num_classes buckets")
    mim_mask_ratio: float = Field(0.4, gt=0, lt=1, description="share of patches masked (SimMIM/BEiT: 40%)")
    norm_pix_loss: bool = Field(True, description="regress per-patch normalised pixels (MAE)")


def label_index(label: str | None, num_classes: int, class_names: Sequence[str] = ()) -> int:
    """The class of ``label``: its index in ``class_names`` when given (``IGNORE_INDEX`` if absent), else its stable
    hash bucket; ``IGNORE_INDEX`` for a missing or empty label."""
    if not label:
        return IGNORE_INDEX
    if class_names:
        return list(class_names).index(label) if label in class_names else IGNORE_INDEX
    digest = hashlib.blake2b(label.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_classes


def batch_labels(meta: Sequence[dict | None], config: ViTConfig, device: torch.device) -> torch.Tensor:
    """The classes (B,) of a batch's samples under the mapping saved in ``config`` (``IGNORE_INDEX`` for none)."""
    names = config.vlforge_class_names or ()
    return torch.tensor([label_index((m or {}).get("label"), config.vlforge_num_classes, names) for m in meta],
                        dtype=torch.long, device=device)


class ImageTeacherModel(ViTPreTrainedModel):
    """``ViTModel`` (no pooler) + the objective's head: ``classifier`` (supervised) or ``mim_head`` (mim)."""

    def __init__(self, config: ViTConfig):
        super().__init__(config)
        objective = config.vlforge_objective
        self.vit = ViTModel(config, add_pooling_layer=False, use_mask_token=objective == "mim")
        if objective == "supervised":
            self.classifier = nn.Linear(config.hidden_size, config.vlforge_num_classes)
        else:
            self.mim_head = nn.Linear(config.hidden_size, config.patch_size**2 * config.num_channels)
        self.post_init()

    @property
    def num_patches(self) -> int:
        return self.vit.embeddings.patch_embeddings.num_patches

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final (LayerNorm-ed) hidden states (B, 1 + N, D); masked patches take the mask token."""
        return self.vit(pixel_values=pixel_values, bool_masked_pos=patch_mask).last_hidden_state

    def class_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(hidden[:, 0])


def vit_config(recipe: ImageTeacherRecipe) -> ViTConfig:
    config = ViTConfig(
        **recipe_sizes(recipe),
        **dropouts(recipe.dropout),
        initializer_range=recipe.initializer_range,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        encoder_stride=recipe.patch_size,
    )
    config.vlforge_objective = recipe.objective
    config.vlforge_num_classes = len(recipe.class_names) if recipe.class_names else recipe.num_classes
    config.vlforge_class_names = list(recipe.class_names) or None
    config.vlforge_label_rule = "class_names" if recipe.class_names else LABEL_RULE
    return config


@register_family
class ImageTeacherFamily(Family):
    name = "image-teacher"
    paper = "Dosovitskiy et al., An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale, ICLR 2021 (arXiv 2010.11929)"
    recipe_cls = ImageTeacherRecipe
    capabilities = frozenset({"image_features"})
    objectives = ("mim (masked patch pixel regression; default)", "supervised (class labels)")
    image_mean = (0.5, 0.5, 0.5)  # ViT normalises pixels to [-1, 1]
    image_std = (0.5, 0.5, 0.5)

    def build_model(self, recipe: Recipe, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
        assert isinstance(recipe, ImageTeacherRecipe)
        check_heads(self.name, recipe)
        check_patches(self.name, recipe)
        if len(set(recipe.class_names)) != len(recipe.class_names):
            raise UserError("image-teacher recipe: class_names has duplicates")
        return ImageTeacherModel(vit_config(recipe))

    def training_step(self, model: nn.Module, batch: ImageTextBatch, recipe: Recipe) -> dict[str, torch.Tensor]:
        assert isinstance(recipe, ImageTeacherRecipe)
        core = _unwrap(model)
        pixels = batch.pixel_values
        if core.config.vlforge_objective == "supervised":
            labels = batch_labels(batch.meta or [None] * len(batch.keys), core.config, pixels.device)
            if not (labels != IGNORE_INDEX).any():
                raise UserError("image-teacher objective 'supervised' needs class labels (meta['label']) and this "
                                "batch has none: use --set objective=mim")
            logits = core.class_logits(model(pixel_values=pixels))
            ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
            kept = labels != IGNORE_INDEX
            acc = (logits.argmax(dim=-1)[kept] == labels[kept]).float().mean()
            return {"loss": ce, "ce": ce.detach(), "accuracy": acc.detach()}
        gen = batch_generator(batch.keys, recipe.seed)
        mask = random_patch_mask(pixels.shape[0], core.num_patches, recipe.mim_mask_ratio, pixels.device, gen)
        hidden = model(pixel_values=pixels, patch_mask=mask)
        pred = core.mim_head(hidden[:, 1:])
        mim = masked_patch_loss(pred.float(), patchify(pixels, core.config.patch_size).float(), mask, recipe.norm_pix_loss)
        return {"loss": mim, "mim": mim.detach()}

    def load(self, model_dir: Path) -> nn.Module:
        config_file = Path(model_dir) / "config.json"
        if not config_file.is_file():
            raise UserError(f"'{model_dir}' holds no image-teacher checkpoint (no config.json)")
        config = json.loads(config_file.read_text())
        if config.get("model_type") != "vit" or "vlforge_objective" not in config:
            raise UserError(f"'{model_dir}' holds a '{config.get('model_type')}' model, not an image-teacher ViT")
        return ImageTeacherModel.from_pretrained(model_dir, local_files_only=True)

    # ---- capability "image_features" -----------------------------------------------------------------------
    def encode_images(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """The final [CLS] hidden state, L2-normalised."""
        return F.normalize(_unwrap(model)(pixel_values=pixel_values)[:, 0], dim=-1)
