"""A real local Prefect server (SQLite, 127.0.0.1) that vlforge starts, stops and finds.

Schedules only run against a real server (the embedded one refuses them), so ``vlforge server start`` launches
``prefect server start`` detached, records its pid and URL in ``$VLFORGE_HOME/server/server.json``, and waits
until ``/api/health`` answers. Every later vlforge command in the same home talks to it (``PREFECT_API_URL``)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vlforge.errors import UserError
from vlforge.settings import vlforge_home


def state_file() -> Path:
    return vlforge_home() / "server" / "server.json"


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def read_state() -> dict | None:
    try:
        return json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def status() -> dict:
    state = read_state()
    if state is None:
        return {"running": False}
    return {**state, "running": _alive(state["pid"]) and healthy(state["api_url"])}


def start(host: str = "127.0.0.1", port: int = 4200, timeout: float = 120.0) -> dict:
    current = status()
    if current.get("running"):
        raise UserError(f"a vlforge Prefect server is already running at {current['api_url']} (pid {current['pid']})")
    if port_in_use(host, port):
        raise UserError(f"port {port} on {host} is already in use; choose another with --port")
    log_path = state_file().with_name("server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the server must not call itself
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    api_url = f"http://{host}:{port}/api"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"prefect server exited with {proc.returncode}: {tail[0]} (log: {log_path})")
        if healthy(api_url):
            state = {"pid": proc.pid, "api_url": api_url, "host": host, "port": port, "log": str(log_path)}
            tmp = state_file().with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(state_file())
            return {**state, "running": True}
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise RuntimeError(f"prefect server did not become healthy within {timeout:.0f} s (log: {log_path})")


def stop(timeout: float = 30.0) -> dict:
    state = read_state()
    if state is None:
        return {"running": False, "stopped": False}
    pid = state["pid"]
    if _alive(pid):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    state_file().unlink(missing_ok=True)
    return {"running": False, "stopped": True, "pid": pid}


def use_running_server() -> None:
    """Point this process at the home's server when one is running and the user named no other."""
    if os.environ.get("PREFECT_API_URL"):
        return
    state = read_state()
    if state and healthy(state["api_url"], timeout=0.5):
        os.environ["PREFECT_API_URL"] = state["api_url"]
