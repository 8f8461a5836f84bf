"""The unimodal text teacher: a BERT encoder pretrained with (whole-word) MLM on the captions alone (Devlin et al.,
2019). Unified (Li et al., 2021) distils from it. See family.py."""
from vlforge.components.models.text_mlm.family import TextMlmFamily, TextMlmRecipe

__all__ = ["TextMlmFamily", "TextMlmRecipe"]
