"""The two steps every per-part initialisation takes (ViLT's ViT, UNIMO's, VL-T5's and VL-BART's text
backbone): ``load_part`` loads the model a recipe field names and checks its family (``part_family``: the check
alone, for a preflight), ``copy_part`` copies its renamed weights in, naming both shapes when one does not fit."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from vlforge.errors import UserError

if TYPE_CHECKING:
    from vlforge.components.models.registry import Family


def part_family(model_dir: str | Path, field: str, who: str, families: tuple[str, ...]) -> Family:
    """The family of the model a per-part recipe field names (``field``: a directory; the train stage resolves
    ``catalog:REF`` of an imported or trained model to one), read without loading its weights (a family's preflight
    calls it before any worker starts); one-line UserError when it is not a vlforge model of one of ``families``
    (a Hugging Face folder must be imported first)."""
    from vlforge.components.models.registry import FAMILY_FILE, read_family_file

    path = Path(model_dir)
    if not (path / FAMILY_FILE).is_file():
        raise UserError(f"{who}: {field} '{model_dir}' is not a vlforge model (no {FAMILY_FILE}); import it first "
                        f"with: vlforge import model DIR --family {families[0]}")
    family, _ = read_family_file(path)
    if family.name not in families:
        raise UserError(f"{who}: {field} '{model_dir}' holds a '{family.name}' model; {who} takes a "
                        f"{' or '.join(families)} model as its {field}")
    return family


def load_part(model_dir: str | Path, field: str, who: str, families: tuple[str, ...]) -> nn.Module:
    """The model ``field`` names, loaded through its family, after :func:`part_family`'s checks."""
    return part_family(model_dir, field, who, families).load(Path(model_dir))


def copy_part(target: nn.Module, state: Mapping[str, torch.Tensor], who: str, field: str, source: object,
              fit: str) -> None:
    """Copy ``state`` (already under ``target``'s parameter names) into ``target``; the rest of ``target`` keeps its
    initialisation. One-line UserError naming both sides when a tensor has no place or another shape in ``target``
    (``fit``: the recipe fields that decide those shapes)."""
    have = target.state_dict()
    for name, value in state.items():
        mine = tuple(have[name].shape) if name in have else None
        if mine != tuple(value.shape):
            raise UserError(f"{who}: {field} '{source}' does not fit the recipe: its {name} is {tuple(value.shape)}, "
                            f"the model's is {mine if mine is not None else 'absent'} (match {fit})")
    with torch.no_grad():
        for name, value in state.items():
            have[name].copy_(value)
