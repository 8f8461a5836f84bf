"""Unified foundation model (Li et al., 2021, arXiv 2112.07074): one transformer jointly pretrained on unpaired images
and text, with BERT and ViT teachers distilled into it and gradient masking between the two losses. See family.py."""
from vlforge.components.models.unified.family import (
    UnifiedFamily,
    UnifiedRecipe,
    unpaired_split,
)
from vlforge.components.models.unified.modeling import UnifiedConfig, UnifiedModel
from vlforge.components.training.gradient_masking import gradient_masked_loss

__all__ = ["UnifiedConfig", "UnifiedFamily", "UnifiedModel", "UnifiedRecipe", "gradient_masked_loss", "unpaired_split"]
