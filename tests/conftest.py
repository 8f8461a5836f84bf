"""Shared fixtures: an isolated VLFORGE_HOME per test and the shared emoji data. CLI helpers: cli_harness.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_harness import EMOJI_DIR

# pytest-xdist workers run with COLUMNS=80; rich would then wrap and truncate the tables the CLI tests read.
for _var in ("COLUMNS", "LINES"):
    os.environ.pop(_var, None)
# two test workers on two cores: a Prefect server's cold start (uvicorn + database migrations) was seen to take over
# 120 s while the other worker trains (CI, 2 cores; vlforge allows 300 by default)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "vlforge-home"
    monkeypatch.setenv("VLFORGE_HOME", str(h))
    return h


@pytest.fixture(scope="session")
def emoji_dir() -> Path:
    if not (EMOJI_DIR / "pairs.parquet").is_file():
        pytest.skip(f"the shared emoji data is absent ({EMOJI_DIR}); it lives beside the repository in shared/data")
    return EMOJI_DIR
