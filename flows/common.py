"""What every flow shares: the catalog handle, task caching keyed on the stage's own cache key, and retries that
skip user mistakes (retrying a bad input cannot help)."""
from __future__ import annotations

import hashlib
from typing import Any

from prefect.context import TaskRunContext
from vlforge.catalog import Catalog

from vlforge.errors import UserError
from vlforge.settings import catalog_root


def open_catalog() -> Catalog:
    return Catalog(catalog_root())


def stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The stage's key (inputs + config + code, computed by components.stages) scoped to this catalog."""
    scope = hashlib.sha256(str(catalog_root()).encode()).hexdigest()[:12]
    return f"{parameters['cache_key']}-{scope}"


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except UserError:
        return False
    except Exception:  # noqa: BLE001 - anything else is worth another try
        return True
    return True


TASK_OPTIONS: dict[str, Any] = {
    "cache_key_fn": stage_cache_key,
    "persist_result": True,
    "retries": 1,
    "retry_delay_seconds": 2,
    "retry_condition_fn": retry_unless_user_error,
}


def was_cached(state: Any) -> bool:
    return getattr(state, "name", "") == "Cached"


def run_cached(task_fn: Any, cache_key: str, **params: Any) -> tuple[str, bool]:
    """Run a stage task; a cache hit whose artifact is gone from the catalog is refreshed, not trusted."""
    state = task_fn(cache_key=cache_key, return_state=True, **params)
    artifact_id = state.result()
    if was_cached(state) and not open_catalog().exists(artifact_id):
        state = task_fn.with_options(refresh_cache=True)(cache_key=cache_key, return_state=True, **params)
        artifact_id = state.result()
        return artifact_id, False
    return artifact_id, was_cached(state)
