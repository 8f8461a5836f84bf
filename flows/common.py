"""What every flow shares: the catalog handle, task caching keyed on the stage's own cache key, and retries that
skip user mistakes (retrying a bad input cannot help)."""
from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.context import TaskRunContext
from vlforge.catalog import Catalog

from vlforge.errors import UserError
from vlforge.settings import catalog_root, open_catalog as _open_catalog


def open_catalog() -> Catalog:
    return _open_catalog()


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


def retry_options() -> dict[str, Any]:
    """Transient failures (a worker lost, a flaky server) retry ``VLFORGE_RETRIES`` times (default 2) with
    exponential backoff from ``VLFORGE_RETRY_DELAY_S`` seconds (default 2: waits of 2 s, then 4 s) and 20% jitter;
    a ``UserError`` fails at once with its reason (``retry_unless_user_error``)."""
    from prefect.tasks import exponential_backoff

    retries = int(os.environ.get("VLFORGE_RETRIES", "2"))
    base = float(os.environ.get("VLFORGE_RETRY_DELAY_S", "2"))
    return {"retries": retries, "retry_delay_seconds": exponential_backoff(backoff_factor=base)(max(retries, 1)),
            "retry_jitter_factor": 0.2, "retry_condition_fn": retry_unless_user_error}


TASK_OPTIONS: dict[str, Any] = {
    "cache_key_fn": stage_cache_key,
    "persist_result": True,
    **retry_options(),
}


def was_cached(state: Any) -> bool:
    return getattr(state, "name", "") == "Cached"


def run_cached(task_fn: Any, cache_key: str, **params: Any) -> tuple[str, bool]:
    """Run a stage task; a cache hit whose artifact is gone from the catalog is refreshed, not trusted. The
    stage's catalog entry is then published to the Prefect UI (:func:`publish_catalog_entry`)."""
    state = task_fn(cache_key=cache_key, return_state=True, **params)
    artifact_id = state.result()
    if was_cached(state) and not open_catalog().exists(artifact_id):
        state = task_fn.with_options(refresh_cache=True)(cache_key=cache_key, return_state=True, **params)
        artifact_id = state.result()
        publish_catalog_entry(artifact_id)
        return artifact_id, False
    publish_catalog_entry(artifact_id)
    return artifact_id, was_cached(state)


def catalog_artifact_key(kind: str, name: str) -> str:
    """The stable Prefect artifact key of a catalog name (Prefect keys allow only ``[a-z0-9-]``): every version
    of one name lands under one key, so the UI shows its history."""
    return f"catalog-{kind}-" + (re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "artifact")


def publish_catalog_entry(artifact_id: str) -> str:
    """Publish a catalog entry to the Prefect UI: a table artifact (id, version, aliases, parents, metrics) and a
    link artifact to its page in ``vlforge catalog serve`` (base URL ``$VLFORGE_CATALOG_URL``, default
    http://127.0.0.1:8765), both under :func:`catalog_artifact_key`. Returns the key."""
    art = open_catalog().get(artifact_id)
    key = catalog_artifact_key(art.kind, art.name)
    rows = [{"field": "id", "value": art.id}, {"field": "kind", "value": art.kind},
            {"field": "version", "value": str(art.version)}, {"field": "family", "value": art.family or ""},
            {"field": "aliases", "value": ", ".join(art.aliases)}, {"field": "created", "value": art.created_at},
            *({"field": "parent", "value": parent} for parent in art.parents),
            *({"field": f"metric {k}", "value": str(v)} for k, v in sorted(art.metrics.items()))]
    create_table_artifact(key=key, table=rows, description=f"{art.kind} {art.name}:{art.version} ({art.short_id})")
    base = os.environ.get("VLFORGE_CATALOG_URL", "http://127.0.0.1:8765").rstrip("/")
    create_link_artifact(key=f"{key}-page", link=f"{base}/a/{art.id}", link_text=f"{art.name}:{art.version}",
                         description=f"{art.kind} {art.name}:{art.version} in the catalog browser")
    return key
