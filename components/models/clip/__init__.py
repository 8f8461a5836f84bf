"""CLIP (Radford et al., 2021, arXiv 2103.00020): a contrastive dual encoder. See family.py."""
from vlforge.components.models.clip.family import ClipFamily, ClipRecipe

__all__ = ["ClipFamily", "ClipRecipe"]
