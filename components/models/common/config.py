"""Recipe fields most families declare alike, and the recipe -> ``transformers`` config arguments built from them.

The recipe bases are pydantic mixins over ``registry.Recipe``: a family's recipe inherits the groups it has
(``class ViltRecipe(MaskedLMRecipe, VocabRecipe, PatchRecipe, TransformerRecipe)``: pydantic orders the fields
from the last base to the first, so the shape comes first) and overrides a default where
its own differs (text-mlm's two layers). The field names, defaults, bounds and descriptions are those the families
declared one by one, so the same YAML gives the same recipe.

``transformer_sizes`` / ``dropouts`` are the keyword arguments BERT-, ViT- and ViLT-style configs share
(``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, the two dropouts)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import Field
from vlforge.components.models.registry import Recipe


class TransformerRecipe(Recipe):
    """One transformer's shape: width, depth, heads and MLP width as a multiple of the width."""

    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(3, ge=1)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: int = Field(4, ge=1)


class PatchRecipe(Recipe):
    """ViT's square patches (``image_size`` is the shared recipe's)."""

    patch_size: int = Field(8, ge=1)


class VocabRecipe(Recipe):
    """A text vocabulary: the tokenizer's size unless the recipe fixes one."""

    vocab_size: int | None = Field(None, ge=8, description="None: the tokenizer's size")


class MaskedLMRecipe(Recipe):
    """BERT's masked language modelling: 15% of the tokens, whole words by default."""

    mlm_probability: float = Field(0.15, gt=0, lt=1)
    whole_word_masking: bool = True


def transformer_sizes(width: int, layers: int, heads: int, mlp_ratio: int) -> dict[str, int]:
    """The size arguments of a BERT/ViT/CLIP-tower config."""
    return {"hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": width * mlp_ratio}


def recipe_sizes(recipe: TransformerRecipe) -> dict[str, int]:
    """``transformer_sizes`` of a ``TransformerRecipe``."""
    return transformer_sizes(recipe.hidden_size, recipe.num_layers, recipe.num_heads, recipe.mlp_ratio)


def dropouts(p: float) -> dict[str, float]:
    """BERT/ViT's hidden and attention dropout, both ``p``."""
    return {"hidden_dropout_prob": p, "attention_probs_dropout_prob": p}


def checked_task_weights(weights: dict[str, float], tasks: Sequence[str], nonpositive: str,
                         quote: Callable[[str], str] = repr) -> dict[str, float]:
    """A multitask recipe's ``task_weights`` (a pydantic validator's body): known task names only, no negative
    weight, at least one positive (``nonpositive`` is the message otherwise). ``quote`` writes an unknown name."""
    unknown = sorted(set(weights) - set(tasks))
    if unknown:
        raise ValueError(f"unknown task {quote(unknown[0])} (tasks: {', '.join(tasks)})")
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(nonpositive)
    return weights
