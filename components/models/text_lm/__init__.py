"""text-lm (Radford et al., 2019): a GPT-2-style causal LM trained on captions, the language model Frozen and
PromptFuse freeze. See family.py; models/prefix_lm.py holds the prefix-conditioning both build on."""
from vlforge.components.models.text_lm.family import (
    TextLMFamily,
    TextLMRecipe,
    load_gpt2,
)

__all__ = ["TextLMFamily", "TextLMRecipe", "load_gpt2"]
