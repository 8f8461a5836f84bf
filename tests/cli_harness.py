"""Running the real `vlforge` CLI from tests: an isolated VLFORGE_HOME per call, Prefect settings of the
caller's environment left out. Importable from any test (``pythonpath = ["tests"]`` in pyproject.toml).

Every CLI call talks to one real Prefect server for the whole test run (started on first use with
``vlforge server start`` in a home of its own, stopped when the run ends) instead of starting Prefect's temporary
embedded server anew in each subprocess, which costs seconds per call on two cores. Each call keeps its own
VLFORGE_HOME, so its catalog, Prefect results and cache scope stay its own. ``embedded=True`` (or
``VLFORGE_TEST_EMBEDDED_PREFECT=1`` for the whole run) keeps the per-call embedded server, as a user without
``vlforge server start`` gets it.

``load_module`` imports a file that is not on the path (a benchmark script, a helper in another test folder)."""
from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMOJI_DIR = REPO.parent / "shared" / "data" / "emoji-noto"

_SHARED: dict[str, str] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_shared_server() -> None:
    home = _SHARED.pop("home", None)
    if home is None:
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"VLFORGE_HOME": home}
    subprocess.run([sys.executable, "-m", "vlforge.cli", "server", "stop"], capture_output=True, env=env,
                   timeout=60, cwd=REPO, check=False)
    shutil.rmtree(home, ignore_errors=True)


def shared_prefect_api_url() -> str | None:
    """The URL of the test run's one Prefect server (started on the first call), or None where the run asks for
    the embedded server per call."""
    if os.environ.get("VLFORGE_TEST_EMBEDDED_PREFECT") == "1":
        return None
    if "url" not in _SHARED:
        home = tempfile.mkdtemp(prefix="vlforge-test-prefect-")
        _SHARED["home"] = home
        atexit.register(_stop_shared_server)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"VLFORGE_HOME": home}
        proc = subprocess.run([sys.executable, "-m", "vlforge.cli", "server", "start", "--port", str(_free_port()),
                               "--json"], capture_output=True, text=True, env=env, timeout=300, cwd=REPO, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"the tests' shared Prefect server did not start:\n{proc.stderr[-3000:]}")
        _SHARED["url"] = json.loads(proc.stdout)["api_url"]
    return _SHARED["url"]


def cli_env(home: Path, embedded: bool = False) -> dict[str, str]:
    """The environment of one CLI call in ``home``: the caller's, without its Prefect settings, pointed at the
    shared Prefect server unless ``embedded``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["VLFORGE_HOME"] = str(home)
    url = None if embedded else shared_prefect_api_url()
    if url:
        env["PREFECT_API_URL"] = url
    return env


def run_cli(args: list[str], home: Path, timeout: float = 600, embedded: bool = False) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vlforge.cli", *args], capture_output=True, text=True,
                          env=cli_env(home, embedded), timeout=timeout, cwd=REPO)
    _log_call(args, time.perf_counter() - start, proc.returncode)
    return proc


def _log_call(args: list[str], seconds: float, returncode: int) -> None:
    """With ``VLFORGE_TEST_CLI_LOG=FILE``, one JSON line per CLI call (test, command, seconds, exit code): where the
    suite's time goes (``make test`` time is mostly these subprocesses)."""
    log = os.environ.get("VLFORGE_TEST_CLI_LOG")
    if log:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
        with open(log, "a") as fh:
            fh.write(json.dumps({"test": test, "args": args[:2], "seconds": round(seconds, 2), "rc": returncode}) + "\n")


def cli_json(args: list[str], home: Path, timeout: float = 600, embedded: bool = False) -> dict | list:
    proc = run_cli([*args, "--json"], home, timeout, embedded)
    assert proc.returncode == 0, f"vlforge {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def load_module(name: str, path: Path):
    """Import the Python file ``path`` as module ``name`` (registered in ``sys.modules``, so dataclasses and
    pickling inside it work)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
