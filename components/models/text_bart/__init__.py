"""text-bart (Lewis et al., ACL 2020): a text-only BART pretrained on captions by text infilling; VLKD's student
initialisation. See family.py."""
from vlforge.components.models.text_bart.family import TextBartFamily, TextBartRecipe

__all__ = ["TextBartFamily", "TextBartRecipe"]
