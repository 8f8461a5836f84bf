"""VLKD (Dai et al., Findings of ACL 2022): a BART student distilled from a frozen CLIP teacher (TTDM, ITCL, ICTI),
so CLIP's image features drive text generation. See family.py, modeling.py."""
from vlforge.components.models.vlkd.family import VlkdFamily, VlkdRecipe
from vlforge.components.models.vlkd.modeling import VlkdModel

__all__ = ["VlkdFamily", "VlkdModel", "VlkdRecipe"]
