"""Where vlforge keeps its state. Everything lives under one folder, ``$VLFORGE_HOME`` (default ``./.vlforge``):
the catalog, stage work folders, Prefect's home and results, Ray's checkpoints."""
from __future__ import annotations

import os
from pathlib import Path


def vlforge_home() -> Path:
    return Path(os.environ.get("VLFORGE_HOME", ".vlforge")).expanduser().resolve()


def catalog_root() -> Path:
    return vlforge_home() / "catalog"


def work_root() -> Path:
    return vlforge_home() / "work"
