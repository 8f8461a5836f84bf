"""Multitask sampling, shared by every family that trains several tasks in one run (UniT, VL-T5/VL-BART, UNIMO).

UniT samples one task per iteration in proportion to per-task weights; so does this sampler. The draw is a pure
function of (seed, step), so every data-parallel rank picks the same task for a step (their gradients are then
averaged over one task, as UniT does) and a resumed run repeats the uninterrupted run's task sequence."""
from __future__ import annotations

import random
from collections.abc import Mapping


def sample_task(weights: Mapping[str, float], seed: int, step: int) -> str:
    """The task for optimiser step ``step``: drawn with probability proportional to its weight (tasks of weight
    0 never). Deterministic in (seed, step, the weights)."""
    tasks = sorted((name, float(w)) for name, w in weights.items() if float(w) > 0)
    if not tasks:
        raise ValueError("multitask sampling needs at least one task with a positive weight")
    rng = random.Random(f"{seed}:{step}")
    return rng.choices([t for t, _ in tasks], weights=[w for _, w in tasks], k=1)[0]


def task_counts(weights: Mapping[str, float], seed: int, steps: int) -> dict[str, int]:
    """How often each task is drawn in steps 0..steps-1 (what a recipe's weights amount to)."""
    counts = {name: 0 for name in weights}
    for step in range(steps):
        counts[sample_task(weights, seed, step)] += 1
    return counts
