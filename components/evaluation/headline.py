"""A run's headline metrics: the one rule that the pipeline summary (``flows/pipeline.py`` and the table of
``vlforge run pipeline``), the leaderboard, ``vlforge catalog list`` and the web catalog's index all follow.

Each task declares its headline metric key (:attr:`TaskSpec.headline` in ``tasks.py``, with stand-ins in
``TaskSpec.other_headlines``); an eval's headline is, task by task in the order given, the first of those keys the
eval measured. Where it measured none of them, up to
``most`` of the run's own numeric metrics stand in, sorted by key, never the untrained baseline's
(``baseline_*``)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vlforge.components.evaluation.runner import BASELINE_PREFIX
from vlforge.components.evaluation.tasks import TASKS

__all__ = ["headline_metrics", "untrained_value"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def headline_metrics(metrics: Mapping[str, Any], tasks: Iterable[str], *, most: int = 8) -> list[tuple[str, float]]:
    """``[(key, value), ...]``: the headline metric of each of ``tasks`` (task names; unknown ones are skipped)
    that ``metrics`` holds, each key once; if it holds none, up to ``most`` of its own numeric metrics."""
    keys = dict.fromkeys(next((k for k in TASKS[task].headlines if _number(metrics.get(k))), None)
                         for task in tasks if task in TASKS)
    found = [(key, float(metrics[key])) for key in keys if key is not None]
    if found:
        return found
    own = [(key, float(value)) for key, value in sorted(metrics.items())
           if _number(value) and not key.startswith(BASELINE_PREFIX)]
    return own[:most]


def untrained_value(metrics: Mapping[str, Any], key: str) -> float | None:
    """The untrained baseline's value of metric ``key`` measured in the same eval, or None."""
    value = metrics.get(BASELINE_PREFIX + key)
    return float(value) if _number(value) else None
