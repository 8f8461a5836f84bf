"""The checks a family makes before a run is launched (``Family.preflight``, given the tokenizer) and when it builds
its model (``Family.build_model``, given the tokenizer's special ids): one-line ``UserError``s naming the input and
what is wrong. ``who`` is the family's name as the message opens with it (``"vilt"``, ``"vlmo stage 3"``)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vlforge.errors import UserError


def check_vocab_size(tokenizer: Any, vocab_size: int | None) -> None:
    """A recipe's fixed ``vocab_size`` (None: the tokenizer's own size) must hold every token of the tokenizer."""
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens, more than the recipe's vocab_size {vocab_size}")


def check_token(who: str, tokenizer: Any, role: str, why: str = ", which MLM needs") -> None:
    """The tokenizer has a ``role`` token (``mask``, ``bos``, ``eos``...); ``why`` ends the message."""
    if getattr(tokenizer, f"{role}_token_id", None) is None:
        raise UserError(f"{who}: the tokenizer has no {role} token{why}")


def require_mask_id(who: str, special_ids: dict[str, int]) -> None:
    """``build_model``'s check that masked language modelling has a mask id."""
    if "mask" not in special_ids:
        raise UserError(f"{who} needs a tokenizer with a mask token (MLM)")


def require_special_ids(who: str, special_ids: dict[str, int], roles: Iterable[str], purpose: str) -> None:
    """``build_model``'s check that every special token of ``roles`` has an id; the message lists the missing ones."""
    missing = [role for role in roles if role not in special_ids]
    if missing:
        raise UserError(f"{who} needs a tokenizer with {', '.join(missing)} token(s) ({purpose})")


def check_multiple(who: str, name: str, value: int, of_name: str, of: int) -> None:
    """A recipe field that must be a multiple of another (a width of its heads, an image size of its patch)."""
    if value % of:
        raise UserError(f"{who} recipe: {name} {value} is not a multiple of {of_name} {of}")


def check_heads(who: str, recipe: Any, width: str = "hidden_size", heads: str = "num_heads") -> None:
    """``recipe.<width>`` is a multiple of ``recipe.<heads>`` (attention splits the width over the heads)."""
    check_multiple(who, width, getattr(recipe, width), heads, getattr(recipe, heads))


def check_patches(who: str, recipe: Any) -> None:
    """``recipe.image_size`` is a multiple of ``recipe.patch_size`` (a ViT's patch grid covers the whole image)."""
    check_multiple(who, "image_size", recipe.image_size, "patch_size", recipe.patch_size)


def check_text_fits(who: str, recipe: Any, positions: str = "max_position_embeddings") -> None:
    """The captions (``recipe.max_text_length``) fit the text positions ``recipe.<positions>``."""
    if recipe.max_text_length > getattr(recipe, positions):
        raise UserError(f"{who} recipe: max_text_length {recipe.max_text_length} exceeds {positions} {getattr(recipe, positions)}")


def per_worker_batch(recipe: Any) -> int:
    """The samples each Ray worker gets of the global ``batch_size``."""
    return recipe.batch_size // recipe.num_workers


def check_per_worker_batch(who: str, recipe: Any, what: str, why: str, least: int = 2) -> None:
    """Each worker's share of the batch has at least ``least`` ``what`` (pairs, samples) for in-batch negatives
    or splits; ``why`` says what needs them."""
    if per_worker_batch(recipe) < least:
        raise UserError(f"{who}: batch_size {recipe.batch_size} over {recipe.num_workers} workers leaves fewer than "
                        f"{least} {what} per worker; {why}")


def check_shardable(family: Any, recipe: Any, build: bool = True) -> None:
    """``parallel: fsdp`` needs what ``require_shardable`` checks and, under fp16, a GradScaler that agrees across
    shards, which the loop does not have. The model is built on the meta device (no weights, no memory); a family
    that cannot build there (one reading a checkpoint) has its layers checked on the workers. ``build=False``: the
    recipe's artifact fields are not resolved yet (``catalog:REF``), so no model is built."""
    import torch

    if recipe.precision == "fp16":
        raise UserError("recipe field 'parallel': fsdp trains in fp32 or bf16, not fp16 (use precision: bf16)")
    if not build:
        require_shardable(family, None)
        return
    try:
        with torch.device("meta"):
            model = family.build_model(recipe, getattr(recipe, "vocab_size", None) or 1024,
                                       {"pad": 0, "unk": 1, "mask": 2, "bos": 3, "eos": 4})
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - the workers check the real model (loop.py)
        model = None
    require_shardable(family, model)


def require_shardable(family: Any, model: Any) -> None:
    """``parallel: fsdp`` needs a family whose step reads parameters only inside their layers' forward (its
    ``shard_blocker`` is empty) and a model with transformer layers to shard (``checkpointing.transformer_layers``;
    not checked when ``model`` is None)."""
    from vlforge.components.models.common.checkpointing import transformer_layers

    if family.shard_blocker:
        raise UserError(f"recipe field 'parallel': family '{family.name}' cannot shard with fsdp: "
                        f"{family.shard_blocker} (use parallel: ddp)")
    if model is not None and not transformer_layers(model):
        raise UserError(f"recipe field 'parallel': family '{family.name}' has no transformer layers to shard with "
                        "fsdp (use parallel: ddp)")
