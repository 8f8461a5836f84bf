"""Running the real `vlforge` CLI from tests: an isolated VLFORGE_HOME per call, Prefect settings of the
caller's environment left out. Importable from any test (``pythonpath = ["tests"]`` in pyproject.toml).

Every CLI call talks to one real Prefect server for the whole test run (started on first use with
``vlforge server start`` in a home of its own, stopped when the run ends) instead of starting Prefect's temporary
embedded server anew in each subprocess, which costs seconds per call on two cores. Each call keeps its own
VLFORGE_HOME, so its catalog, Prefect results and cache scope stay its own. ``embedded=True`` (or
``VLFORGE_TEST_EMBEDDED_PREFECT=1`` for the whole run) keeps the per-call embedded server, as a user without
``vlforge server start`` gets it.

Each call forks from a warm interpreter that has torch, transformers, Ray and vlforge's components imported
(tests/cli_zygote.py: Prefect, the flows and the CLI are imported after the fork, in the call's own environment),
instead of importing them anew: ``VLFORGE_TEST_FRESH_CLI=1`` runs every call as a plain ``python -m vlforge.cli``
subprocess instead.

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
    env = cli_env(home, embedded)
    zygote = None if os.environ.get("VLFORGE_TEST_FRESH_CLI") == "1" else _zygote_for(env)
    if zygote is None:
        proc = subprocess.run([sys.executable, "-m", "vlforge.cli", *args], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=REPO)
    else:
        proc = zygote.run(args, env, timeout)
    _log_call(args, time.perf_counter() - start, proc.returncode)
    return proc


class _Zygote:
    """Client of one tests/cli_zygote.py process (started with the environment it serves)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.dir = tempfile.mkdtemp(prefix="vlforge-zygote-")
        self.socket = os.path.join(self.dir, "s")
        code = f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); import cli_zygote; sys.path.pop(0); " \
               f"cli_zygote.serve({self.socket!r})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline()
        if ready.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"the CLI zygote did not start ({self.proc.wait()}): {ready!r}")
        self.calls = 0

    def run(self, args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        self.calls += 1
        call = os.path.join(self.dir, str(self.calls))
        req = {"args": args, "env": env, "cwd": str(REPO), "stdout": f"{call}.out", "stderr": f"{call}.err",
               "pid_file": f"{call}.pid", "rc_file": f"{call}.rc"}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(self.socket)
            conn.sendall(json.dumps(req).encode() + b"\n")
            if conn.makefile("rb").readline().strip() != b"ok":
                raise RuntimeError("the CLI zygote did not take the call")
        deadline = time.monotonic() + timeout
        while not os.path.exists(req["rc_file"]):
            if time.monotonic() > deadline:
                if os.path.exists(req["pid_file"]):
                    try:
                        os.killpg(int(Path(req["pid_file"]).read_text()), 9)
                    except ProcessLookupError:
                        pass
                raise subprocess.TimeoutExpired(["vlforge", *args], timeout)
            time.sleep(0.02)
        files = [Path(req[k]) for k in ("stdout", "stderr", "pid_file", "rc_file")]
        out, err, _, rc = (f.read_text() for f in files)
        for f in files:
            f.unlink()
        return subprocess.CompletedProcess(["vlforge", *args], int(rc), out, err)

    def stop(self) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(self.socket)
                conn.sendall(b'{"stop": true}\n')
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


_ZYGOTES: dict[tuple, _Zygote] = {}
MAX_ZYGOTES = 4


def _zygote_for(env: dict[str, str]) -> _Zygote | None:
    """The zygote serving ``env`` (one per environment outside the per-call VLFORGE_*/PREFECT_*/PYTEST_* variables,
    which nothing preloaded reads on import); None past MAX_ZYGOTES (a plain subprocess then)."""
    key = tuple(sorted((k, v) for k, v in env.items() if not k.startswith(("VLFORGE_", "PREFECT_", "PYTEST_"))))
    if key not in _ZYGOTES:
        if len(_ZYGOTES) >= MAX_ZYGOTES:
            return None
        if not _ZYGOTES:
            atexit.register(lambda: [z.stop() for z in _ZYGOTES.values()])
        _ZYGOTES[key] = _Zygote({k: v for k, v in env.items() if not k.startswith(("VLFORGE_", "PREFECT_"))})
    return _ZYGOTES[key]


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
