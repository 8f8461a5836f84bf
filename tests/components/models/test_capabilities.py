"""Capabilities are typed protocols the registry checks: a family that lists one implements its methods, and the
evaluation reaches them typed, through ``capability``."""
from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from vlforge.components.models import registry
from vlforge.components.models.capabilities import PROTOCOLS, DualEncoder, PairScorer, capability
from vlforge.components.models.registry import Family, family_names, get_family

from vlforge.errors import UserError


class _Base(Family):
    paper = "test"

    def build_model(self, recipe, vocab_size, special_ids):  # pragma: no cover - never built here
        raise AssertionError

    def training_step(self, model, batch, recipe):  # pragma: no cover
        raise AssertionError

    def load(self, model_dir):  # pragma: no cover
        raise AssertionError


def test_every_registered_family_implements_what_it_lists() -> None:
    for name in family_names():
        family = get_family(name)
        for cap in family.capabilities:
            if cap in PROTOCOLS:
                assert isinstance(family, PROTOCOLS[cap]), (name, cap)


def test_a_family_listing_a_capability_it_does_not_implement_is_refused() -> None:
    class NoScorer(_Base):
        name = "test-no-scorer"
        capabilities: ClassVar[frozenset[str]] = frozenset({"itm"})

    class InheritsEncoders(_Base):  # Family's own encode_images/encode_texts only raise
        name = "test-inherits"
        capabilities: ClassVar[frozenset[str]] = frozenset({"retrieval"})

    for cls, missing in ((NoScorer, "score_pairs"), (InheritsEncoders, "encode_images, encode_texts")):
        with pytest.raises(TypeError, match=f"lists capability .* does not implement {missing}"):
            registry.register_family(cls)
        assert cls.name not in registry._FAMILIES


def test_capability_types_the_family_or_names_what_it_cannot_do() -> None:
    class Scorer(_Base):
        name = "test-scorer"
        capabilities: ClassVar[frozenset[str]] = frozenset({"itm"})

        def score_pairs(self, model: Any, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor, tokenizer: Any = None) -> torch.Tensor:
            return torch.zeros(len(input_ids))

    registry.register_family(Scorer)
    try:
        family = get_family("test-scorer")
        assert capability(family, PairScorer).score_pairs(None, torch.zeros(2, 3, 4, 4), torch.zeros(2, 3), None).shape == (2,)
        with pytest.raises(UserError, match="family 'clip' cannot"):
            capability(get_family("clip"), PairScorer)
        assert capability(get_family("clip"), DualEncoder) is get_family("clip")
    finally:
        registry._FAMILIES.pop("test-scorer", None)
