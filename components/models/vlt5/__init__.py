"""VL-T5 / VL-BART (Cho et al., 2021, arXiv 2102.02779): T5 / BART encoder-decoders over text + a visual embedding,
every task written as text generation with a task prefix. Two registered families (``vl-t5``, ``vl-bart``) sharing
one code path. See family.py."""
from vlforge.components.models.vlt5.family import (
    VLBartFamily,
    VLBartRecipe,
    VLSeq2SeqFamily,
    VLT5Family,
    VLT5Recipe,
)
from vlforge.components.models.vlt5.modeling import (
    VLBartForConditionalGeneration,
    VLT5ForConditionalGeneration,
)

__all__ = ["VLBartFamily", "VLBartForConditionalGeneration", "VLBartRecipe", "VLSeq2SeqFamily", "VLT5Family",
           "VLT5ForConditionalGeneration", "VLT5Recipe"]
