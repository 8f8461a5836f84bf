"""UNIMO (Li et al., 2021, arXiv 2012.15409): one unified transformer trained on image-only, text-only and paired
data in the same step, with cross-modal contrastive learning over facts-based text rewrites, MLM and seq2seq LM.
See family.py, modeling.py, rewrites.py."""
from vlforge.components.models.unimo.family import UnimoFamily, UnimoRecipe
from vlforge.components.models.unimo.modeling import UnimoConfig, UnimoModel

__all__ = ["UnimoConfig", "UnimoFamily", "UnimoModel", "UnimoRecipe"]
