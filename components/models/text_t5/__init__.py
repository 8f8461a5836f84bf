"""text-t5 (Raffel et al., JMLR 2020): a text-only T5 pretrained on captions by span corruption; the backbone
VL-T5 starts from (its ``text_init``). See family.py."""
from vlforge.components.models.text_t5.family import TextT5Family, TextT5Recipe

__all__ = ["TextT5Family", "TextT5Recipe"]
