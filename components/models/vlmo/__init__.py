"""VLMo (Bao et al., 2021, arXiv 2111.02358): a multiway transformer (shared attention, modality FFN experts)
pretrained stagewise; one checkpoint is both a dual encoder and a fusion encoder. See family.py, modeling.py."""
from vlforge.components.models.vlmo.family import VlmoFamily, VlmoRecipe
from vlforge.components.models.vlmo.modeling import VlmoConfig, VlmoModel

__all__ = ["VlmoConfig", "VlmoFamily", "VlmoModel", "VlmoRecipe"]
