"""The reference implementations' virtual environments under ``.bench-venvs/`` (pycocoevalcap, CLIP_benchmark):
created on first use with ``python -m venv`` and ``pip install`` of a benchmark's pins from the package indexes
pip is configured with, and never the project's own venv (they pull torchvision or Java-backed packages)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def peer_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, pins: list[str], probe: str) -> Path:
    """``venv``'s python; the venv is created and ``pins`` installed unless ``probe`` (Python code) already runs
    there. RuntimeError with pip's last line when the set-up fails."""
    py = peer_python(venv)
    if py.exists() and subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0:
        return py
    print(f"creating {venv} with {' '.join(pins)} ...", file=sys.stderr)
    for argv in ([sys.executable, "-m", "venv", str(venv)],
                 [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins]):
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"could not set up {venv}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return py
