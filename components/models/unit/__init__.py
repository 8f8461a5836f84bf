"""UniT (Hu & Singh, 2021, arXiv 2102.10772): per-modality encoders, one shared transformer decoder with task-specific
queries and heads, trained multitask with one sampled task per step. See family.py."""
from vlforge.components.models.unit.family import UnitFamily, UnitRecipe
from vlforge.components.models.unit.modeling import UnitConfig, UnitModel

__all__ = ["UnitConfig", "UnitFamily", "UnitModel", "UnitRecipe"]
