"""Shared helpers for families that learn from a frozen teacher or use dropout as a training signal.

- ``seeded_rng``: run a block (its dropout) under the global RNG seeded from a batch generator
  (``masking.batch_generator``), so a training step that uses dropout as a signal (SimCSE's two views) or just has
  dropout is a function of (seed, step, batch): resumes and re-runs repeat it exactly, and the caller's RNG stream is
  left untouched.
- ``load_frozen_teacher``: a teacher checkpoint loaded through its family once per process, in eval mode, frozen,
  and cached outside the student (never in its ``state_dict``, so never saved, optimised or DDP-synchronised)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from vlforge.errors import UserError


@contextmanager
def seeded_rng(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Seed the global (CPU, and ``device``'s CUDA) RNG from one draw of ``generator`` for the block; restore after."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


_TEACHERS: dict[tuple[str, str, float, str], nn.Module] = {}


def load_frozen_teacher(family_name: str, teacher_dir: str | Path, device: torch.device) -> nn.Module:
    """``get_family(family_name).load(teacher_dir)`` on ``device``, eval mode, every parameter frozen; cached per
    (family, directory, its weights' mtime, device). One teacher is kept at a time: a new key replaces the old."""
    from vlforge.components.models.registry import get_family

    path = Path(teacher_dir).resolve()
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    stamp = max((w.stat().st_mtime for w in weights), default=0.0)
    key = (family_name, str(path), stamp, str(device))
    if key not in _TEACHERS:
        teacher = get_family(family_name).load(path).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        _TEACHERS.clear()
        _TEACHERS[key] = teacher
    return _TEACHERS[key]


def image_teacher_vit(teacher_dir: str | Path, who: str, image_size: int) -> nn.Module:
    """The ``ViTModel`` of an image-teacher checkpoint (its ``vit``), for a family that starts its image side from
    pretrained weights (ViLT's ImageNet ViT, VL-T5's frozen detector in the papers); one-line error when it was trained
    on another image size than ``image_size``."""
    from vlforge.components.models.registry import get_family

    vit = get_family("image-teacher").load(Path(teacher_dir)).vit
    if vit.config.image_size != image_size:
        raise UserError(f"{who}: the image teacher '{teacher_dir}' was trained on {vit.config.image_size} px images, "
                        f"the recipe's image_size is {image_size}")
    return vit


_ATTACHED = "_vlforge_teachers"  # a plain instance attribute: nn.Module.__setattr__ would register a sub-module


def attach_teacher(student: nn.Module, field: str, teacher: nn.Module | None, source: object = None) -> None:
    """Keep ``teacher`` beside ``student`` under ``field``: frozen, in eval mode, and outside the student's modules,
    so it is in no ``state_dict``, optimiser, checkpoint or data-parallel sync of the student. ``source`` (e.g. the
    teacher's directory) says what it was loaded from, for :func:`attached_teacher`. The one way every family holds
    a teacher on its model."""
    if teacher is not None:
        teacher.eval()
        teacher.requires_grad_(False)
    student.__dict__.setdefault(_ATTACHED, {})[field] = (teacher, source)


def attached_teacher(student: nn.Module, field: str, source: object = None) -> tuple[bool, nn.Module | None]:
    """``(found, teacher)``: whether a teacher for ``field`` is attached (from ``source``, when given) and it."""
    held = student.__dict__.get(_ATTACHED, {}).get(field)
    if held is None or (source is not None and held[1] != source):
        return False, None
    return True, held[0]
