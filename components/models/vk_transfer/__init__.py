"""Visual-knowledge transfer (Jin et al., ACL 2022, arXiv 2203.07519): intermediate pretraining of a BERT text
encoder on image-caption data with a frozen CLIP teacher, six selectable objectives. See family.py."""
from vlforge.components.models.vk_transfer.family import (
    OBJECTIVES,
    VkTransferFamily,
    VkTransferRecipe,
)
from vlforge.components.models.vk_transfer.modeling import VkTransferModel

__all__ = ["OBJECTIVES", "VkTransferFamily", "VkTransferModel", "VkTransferRecipe"]
