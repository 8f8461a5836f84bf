"""ViLT (Kim et al., 2021, arXiv 2102.03334): a single-stream transformer over word embeddings and linearly
projected patches, pretrained with ITM + whole-word MLM. See family.py."""
from vlforge.components.models.vilt.family import (
    ViltFamily,
    ViltPretrainingModel,
    ViltRecipe,
)

__all__ = ["ViltFamily", "ViltPretrainingModel", "ViltRecipe"]
