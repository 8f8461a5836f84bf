"""PromptFuse / BlindPrompt (Liang et al., 2022, arXiv 2203.08055): a frozen CLIP image encoder and a frozen causal
LM fused by a few trainable prompt vectors (the only trained parameters), optionally blind to the inputs. See
family.py."""
from vlforge.components.models.promptfuse.family import (
    PromptFuseFamily,
    PromptFuseRecipe,
)
from vlforge.components.models.promptfuse.modeling import PromptFuseModel

__all__ = ["PromptFuseFamily", "PromptFuseModel", "PromptFuseRecipe"]
