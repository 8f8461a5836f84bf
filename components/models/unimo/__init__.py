"""UNIMO (Li et al., 2021, arXiv 2012.15409): one unified transformer trained on image-only, text-only and paired
data in the same step, with cross-modal contrastive learning over text rewrites (from scene facts, or by the
model's own MLM head) and related samples retrieved by similarity, MLM and seq2seq LM. See family.py, modeling.py,
rewrites.py (facts route), mlm_rewrites.py (model route), memory.py (retrieval)."""
from vlforge.components.models.unimo.family import UnimoFamily, UnimoRecipe
from vlforge.components.models.unimo.modeling import UnimoConfig, UnimoModel

__all__ = ["UnimoConfig", "UnimoFamily", "UnimoModel", "UnimoRecipe"]
