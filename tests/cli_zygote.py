"""A warm interpreter the tests' CLI calls fork from, so a call does not pay for importing torch, transformers and
Ray anew (5-7 s of each ``vlforge`` call on two cores; the suite makes over a hundred).

The zygote imports the libraries a command needs that read nothing of a call's own environment at import time
(torch, transformers, Ray, pyarrow, webdataset and vlforge's components and catalog) and nothing of Prefect:
Prefect fixes its settings (``PREFECT_HOME`` under the call's ``VLFORGE_HOME``, the API URL) when it is imported,
so each call imports Prefect, the flows and the CLI itself after the fork, with its own environment, as a fresh
``python -m vlforge.cli`` does. ``cli_harness.run_cli`` keeps one zygote per distinct environment outside
``VLFORGE_*``/``PREFECT_*``/``PYTEST_*`` (a test that changes, say, ``OMP_NUM_THREADS`` gets a zygote started with
it) and falls back to a plain subprocess past a few.

Each request forks a monitor, which forks the command's process (its own session, stdin from /dev/null, stdout and
stderr to files, the call's environment and working folder, ``sys.argv`` of ``vlforge ARGS``), waits for it and
writes its exit status (or minus the signal that ended it) to a file: the caller reads the same exit code, stdout and
stderr a subprocess gives, and can kill the command's process group on a timeout. The command's process ends as an
interpreter does (its non-daemon threads joined, then its exit handlers: Ray's shutdown, Prefect's temporary
server), except that it skips tearing down the thousands of preloaded modules (seconds of freeing memory)."""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import sys
import threading

# set before Ray is imported, as ensure_ray sets them (Ray Train reads RAY_TRAIN_V2_ENABLED on import)
PRELOAD = ("numpy", "PIL.Image", "pyarrow.parquet", "webdataset", "torch", "transformers", "ray", "ray.train.torch",
           "vlforge.catalog", "vlforge.components.stages", "vlforge.components.training.loop",
           "vlforge.components.evaluation.runner")


def preload() -> None:
    import importlib

    from vlforge.components.training.ray_runtime import ray_env

    for key, value in ray_env().items():
        os.environ.setdefault(key, value)
    for name in PRELOAD:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m == "prefect" or m.startswith("prefect."))
    if leaked:  # Prefect would keep the zygote's settings in every call
        raise RuntimeError(f"the CLI zygote imported Prefect ({leaked[0]}): a preloaded module imports it")


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _exit_code(code: object) -> int:
    """What the interpreter makes of ``SystemExit(code)``."""
    if code is None or isinstance(code, int):
        return code or 0
    sys.stderr.write(f"{code}\n")
    return 1


def _command(req: dict) -> None:
    """In the command's process: the call's session, files, environment and argv, then the CLI (never returns)."""
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        new = os.open(path, flags, 0o644)
        os.dup2(new, fd)
        os.close(new)
    sys.argv = ["vlforge", *req["args"]]
    code = 0
    try:
        from vlforge.cli import main

        main()
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:  # what the interpreter prints for an uncaught exception, and its exit code
        import traceback

        traceback.print_exc()
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # as Py_FinalizeEx: non-daemon threads, then exit handlers
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _monitor(req: dict) -> None:
    """Fork the command, record its pid, wait, record its exit status; the monitor itself leaves with os._exit."""
    pid = os.fork()
    if pid == 0:
        _command(req)
    _write(req["pid_file"], str(pid))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    _write(req["rc_file"], str(code))
    os._exit(0)


def serve(path: str) -> None:
    preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    server.settimeout(5.0)
    parent = os.getppid()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the test process is gone (killed): so is the zygote's use
                return
            continue
        conn.settimeout(None)
        with conn, conn.makefile("rb") as reader:
            line = reader.readline()
            if not line:
                continue
            req = json.loads(line)
            if req.get("stop"):
                return
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                server.close()
                conn.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _monitor(req)
            conn.sendall(b"ok\n")
