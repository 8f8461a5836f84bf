"""Running the real `vlforge` CLI from tests: an isolated VLFORGE_HOME per call, Prefect settings of the
caller's environment left out. Importable from any test (``pythonpath = ["tests"]`` in pyproject.toml)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMOJI_DIR = REPO.parent / "shared" / "data" / "emoji-noto"


def run_cli(args: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["VLFORGE_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "vlforge.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def cli_json(args: list[str], home: Path, timeout: float = 600) -> dict | list:
    proc = run_cli([*args, "--json"], home, timeout)
    assert proc.returncode == 0, f"vlforge {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)
