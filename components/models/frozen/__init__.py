"""Frozen (Tsimpoukelli et al., 2021, arXiv 2106.13884): a trainable vision encoder prompts a frozen causal LM
with a 2-embedding visual prefix; captioning/VQA by generation and interleaved few-shot prompts. See family.py."""
from vlforge.components.models.frozen.family import FrozenFamily, FrozenRecipe
from vlforge.components.models.frozen.modeling import FrozenModel

__all__ = ["FrozenFamily", "FrozenModel", "FrozenRecipe"]
