"""The unimodal image teacher: a ViT (Dosovitskiy et al., 2021) trained on the images alone, supervised on the
source's class labels or by masked image modelling. Unified (Li et al., 2021) distils from it. See family.py."""
from vlforge.components.models.image_teacher.family import (
    ImageTeacherFamily,
    ImageTeacherModel,
    ImageTeacherRecipe,
    label_index,
)

__all__ = ["ImageTeacherFamily", "ImageTeacherModel", "ImageTeacherRecipe", "label_index"]
