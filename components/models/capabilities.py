"""What a family can be asked at evaluation time, as typed protocols: one per capability a family may list in
``Family.capabilities``. The registry checks at registration that a family implements the protocol of every
capability it lists (and its base ``Family`` methods are not left as they are), and the evaluation reaches the
methods through :func:`capability`, which hands back the family typed as that protocol: no signature probes, no
attribute guesses. Which tasks each capability opens is ``components/evaluation/tasks.py``'s business."""
from __future__ import annotations

from typing import Any, Protocol, TypeVar, cast, runtime_checkable

import torch
from torch import nn

from vlforge.errors import UserError


@runtime_checkable
class DualEncoder(Protocol):
    """``retrieval``: images and texts embedded, L2-normalised, in one space."""

    def encode_images(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def encode_texts(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ImageFeatures(Protocol):
    """``image_features``: frozen image features for a linear probe."""

    def encode_images(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class PairScorer(Protocol):
    """``itm``: the match log-odds (B,) of each (image i, text i) pair. ``tokenizer`` is the model's own, for a
    family that writes its prompt around the text (VL-T5's ``image text match: ...``); others ignore it."""

    def score_pairs(self, model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, tokenizer: Any = None) -> torch.Tensor: ...


@runtime_checkable
class TextGenerator(Protocol):
    """``generate``: text from an image, after an optional prompt per image."""

    def generate_texts(self, model: nn.Module, pixel_values: torch.Tensor, tokenizer: Any, prompts: list[str] | None,
                       max_new_tokens: int = 24) -> list[str]: ...


@runtime_checkable
class TextFeatures(Protocol):
    """``text_features``: a trainable text representation (B, D) for the NLU probe; ``pixel_values`` is a black
    image where the model needs one."""

    def text_features(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      pixel_values: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class FusedFeatures(Protocol):
    """``fused_features``: the fusion encoder's pooled vector (B, D) of each (image i, text i) pair, differentiable,
    for a head fine-tuned on it (NLVR2 as ViLT and VLMo fine-tune it: two pairs per statement, concatenated)."""

    def fused_features(self, model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class QuestionAnswerer(Protocol):
    """``vqa_answer``: a trained answer head; the answer to question i about image i."""

    def answer_questions(self, model: nn.Module, pixel_values: torch.Tensor, questions: list[str],
                         tokenizer: Any) -> list[str]: ...


@runtime_checkable
class FewShotGenerator(Protocol):
    """``few_shot``: interleaved few-shot generation; ``shots`` are (pixels (3, H, W), text) pairs."""

    def few_shot_generate(self, model: nn.Module, shots: list[tuple[torch.Tensor, str]], query_pixels: torch.Tensor,
                          query_prompt: str, tokenizer: Any, max_new_tokens: int = 24) -> str: ...


@runtime_checkable
class ObjectDetector(Protocol):
    """``detection``: per image, boxes (Q, 4; normalised x0, y0, x1, y1), scores (Q,) and class names (Q)."""

    def detect_objects(self, model: nn.Module, pixel_values: torch.Tensor) -> list[dict[str, Any]]: ...


# the capabilities a family lists -> the protocol it must implement ("zero_shot_classification" and "pair_scoring"
# come from retrieval or itm and add no method)
PROTOCOLS: dict[str, type] = {
    "retrieval": DualEncoder,
    "image_features": ImageFeatures,
    "itm": PairScorer,
    "generate": TextGenerator,
    "text_features": TextFeatures,
    "fused_features": FusedFeatures,
    "vqa_answer": QuestionAnswerer,
    "few_shot": FewShotGenerator,
    "detection": ObjectDetector,
}

P = TypeVar("P")


def check_capabilities(family: object, capabilities: frozenset[str], base: type) -> None:
    """TypeError (a bug in the family, not a user's input) when ``family`` lists a capability whose protocol it
    does not implement, or whose methods it inherits unchanged from ``base`` (the abstract family)."""
    name = getattr(family, "name", type(family).__name__)
    for cap in sorted(capabilities):
        proto = PROTOCOLS.get(cap)
        if proto is None:
            continue
        methods = [m for m in vars(proto) if not m.startswith("_") and callable(getattr(proto, m))]
        missing = [m for m in methods if getattr(type(family), m, None) in (None, getattr(base, m, None))]
        if missing or not isinstance(family, proto):
            raise TypeError(f"family '{name}' lists capability '{cap}' but does not implement {', '.join(missing)}")


def capability(family: object, proto: type[P], what: str | None = None) -> P:
    """``family`` typed as ``proto``; UserError naming the family when it does not implement it."""
    if not isinstance(family, proto):
        name = getattr(family, "name", type(family).__name__)
        raise UserError(f"family '{name}' cannot {what or proto.__doc__.split(':')[0].strip('` ')}")
    return cast(P, family)
