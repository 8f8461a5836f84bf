"""Shared fixtures: an isolated VLFORGE_HOME per test, a way to run the real `vlforge` CLI, the emoji data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EMOJI_DIR = REPO.parent / "shared" / "data" / "emoji-noto"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "vlforge-home"
    monkeypatch.setenv("VLFORGE_HOME", str(h))
    return h


def run_cli(args: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["VLFORGE_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "vlforge.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def cli_json(args: list[str], home: Path, timeout: float = 600) -> dict | list:
    proc = run_cli([*args, "--json"], home, timeout)
    assert proc.returncode == 0, f"vlforge {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def emoji_dir() -> Path:
    if not (EMOJI_DIR / "pairs.parquet").is_file():
        pytest.skip(f"the shared emoji data is absent ({EMOJI_DIR}); it lives beside the repository in shared/data")
    return EMOJI_DIR
