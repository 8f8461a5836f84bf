"""The skeleton every stage runs, written once: key -> cache check -> work folder -> work -> register -> clean up.

A stage module computes its key (:mod:`.keys`) and hands :func:`run_stage` a function that does the work in a
folder and says what to register. The same key always gives the same work folder, so a stage killed part-way
resumes there (img2dataset's incremental mode, Ray Train's checkpoints); a stage whose work cannot resume asks
for a fresh folder. The folder is removed once the catalog holds the result, and after a user error (nothing
half-written stays behind)."""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vlforge.catalog import Artifact, Catalog, detect_code_version, packages_snapshot
from vlforge.errors import UserError
from vlforge.settings import work_root

from vlforge.components.stages.keys import REPO_DIR

PACKAGES = ("vlforge", "torch", "transformers", "tokenizers", "img2dataset", "webdataset", "pyarrow", "ray", "prefect",
            "numpy", "pillow")


@dataclass
class StageResult:
    artifact: Artifact
    cached: bool
    seconds: float


@dataclass
class Output:
    """What a stage's work registers: its files (a folder), and the catalog fields besides them."""

    kind: str
    name: str
    files: Path
    config: dict[str, Any]
    parents: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    family: str | None = None


def register(catalog: Catalog, stage: str, out: Output, cache_key: str | None) -> Artifact:
    """Register ``out`` with the code version and packages that made it; ``config["stage"]`` records which stage
    made it, so ``reproduce`` re-runs that stage (a filtered dataset is a dataset made by the filter stage)."""
    return catalog.register(kind=out.kind, name=out.name, files=out.files, config={**out.config, "stage": stage},
                            parents=out.parents, metrics=out.metrics, family=out.family, cache_key=cache_key,
                            code_version=detect_code_version(REPO_DIR), packages=packages_snapshot(PACKAGES))


def run_stage(stage: str, key: str, catalog: Catalog, work: Callable[[Path], Output], *, resume: bool = False) -> StageResult:
    """The catalog entry ``key`` names, or ``work(folder)`` registered under ``key``. ``resume``: keep what a
    killed run left in the folder (the stage picks it up); otherwise the folder starts empty."""
    start = time.perf_counter()
    if (hit := catalog.find_by_cache_key(key)) is not None:
        return StageResult(hit, True, time.perf_counter() - start)
    folder = work_root() / stage / key[:16]
    if not resume:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        art = register(catalog, stage, work(folder), key)
    except UserError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)  # the catalog holds the result now
    return StageResult(art, False, time.perf_counter() - start)


def require_kind(catalog: Catalog, ref: str, kind: str, option: str) -> Artifact:
    art = catalog.get(ref)
    if art.kind != kind:
        raise UserError(f"{option} '{ref}' is a {art.kind}, not a {kind}")
    return art


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


T = TypeVar("T")


def on_cluster(ray_address: str | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` here, or with a Ray address as one Ray task on that cluster (its nodes must see the paths in
    ``args``: one machine, or a shared filesystem). Errors come back as the task's exception."""
    if not ray_address:
        return fn(*args)
    import ray

    from vlforge.components.training.ray_runtime import ensure_ray

    ensure_ray(ray_address)
    try:
        return ray.get(ray.remote(num_cpus=1, max_retries=0)(fn).remote(*args))
    except ray.exceptions.RayTaskError as exc:
        raise exc.as_instanceof_cause() from None
