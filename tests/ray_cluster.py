"""A two-node Ray cluster on loopback for tests (head 127.0.0.2, worker 127.0.0.3, one CPU each), started and
stopped with ``infra/ray/local-cluster.sh`` so the script users run is the one tested. Stopping ends only this
cluster's processes (never ``ray stop``, which would end every Ray on the machine)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SH = REPO / "infra" / "ray" / "local-cluster.sh"
VENV_BIN = Path(sys.executable).parent


def free_port(preferred: int | None = None) -> int:
    def free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("", port))
                return True
            except OSError:
                return False

    if preferred and free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def cluster_env(tmp_dir: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLFORGE_RAY_")}
    env.update({"VLFORGE_RAY_TMP": tmp_dir, "VENV": str(VENV_BIN.parent)}, **extra)
    return env


def processes_naming(tmp_dir: str) -> list[str]:
    out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"={tmp_dir}" in line and "<defunct>" not in line]


@dataclass
class Cluster:
    port: int
    env: dict[str, str]
    tmp_dir: str
    stop_result: subprocess.CompletedProcess | None = None
    left: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.2:{self.port}"

    def script(self, *args: str, timeout: int = 150) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env)


@contextmanager
def two_node_cluster() -> Iterator[Cluster]:
    tmp_dir = tempfile.mkdtemp(prefix="vlft", dir="/tmp")
    port = free_port(6391)
    env = cluster_env(tmp_dir, VLFORGE_RAY_PORT=str(port), VLFORGE_RAY_DASHBOARD_PORT=str(free_port()),
                      VLFORGE_RAY_HEAD_CPUS="1", VLFORGE_RAY_WORKER_CPUS="1")
    cluster = Cluster(port, env, tmp_dir)
    try:
        start = cluster.script("start")
        assert start.returncode == 0, f"start failed:\n{start.stdout[-3000:]}\n{start.stderr[-3000:]}"
        yield cluster
    finally:
        cluster.stop_result = cluster.script("stop", timeout=90)
        deadline = time.monotonic() + 10
        while processes_naming(tmp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        cluster.left = processes_naming(tmp_dir)
        import shutil

        shutil.rmtree(tmp_dir, ignore_errors=True)
