"""Schedules on a real local Prefect server: start it, serve a deployment with a short interval, see a scheduled run
complete and register its artifact, list it with `vlforge runs`, stop the server. Plus the bad-input contract."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_harness import REPO, cli_json as shared_cli_json, run_cli as shared_run_cli
from vlforge.catalog import Catalog


# these tests start, use and stop their own Prefect server: never the tests' shared one
def run_cli(args: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return shared_run_cli(args, home, timeout, embedded=True)


def cli_json(args: list[str], home: Path, timeout: float = 600) -> dict | list:
    return shared_cli_json(args, home, timeout, embedded=True)


SCHEDULE = """
deployments:
  - flow: ingest
    name: every-20s
    interval: 20
    parameters:
      source: {spec: "builtin:shapes?n=30&image_size=32"}
      crawl: {image_size: 32, processes: 1, threads: 4}
      shard: {}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_scheduled_deployment_runs_on_a_real_server(home: Path, tmp_path: Path) -> None:
    port = free_port()
    started = cli_json(["server", "start", "--port", str(port)], home, timeout=180)
    deploy = None
    try:
        assert started["running"] and started["api_url"] == f"http://127.0.0.1:{port}/api"
        proc = run_cli(["server", "start", "--port", str(port)], home)
        assert proc.returncode == 2 and "already running" in proc.stderr
        (tmp_path / "schedules.yaml").write_text(SCHEDULE)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"VLFORGE_HOME": str(home)}
        deploy = subprocess.Popen([sys.executable, "-m", "vlforge.cli", "deploy", "--schedules", str(tmp_path / "schedules.yaml")],
                                  env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        catalog = Catalog(home / "catalog")
        deadline = time.time() + 240
        while time.time() < deadline and not catalog.list(kind="dataset"):
            assert deploy.poll() is None, deploy.stderr.read()[-3000:]
            time.sleep(2)
        datasets = catalog.list(kind="dataset")
        assert datasets and datasets[0].metrics["samples"] == 30
        time.sleep(3)  # let the run's final state reach the server
        runs = cli_json(["runs"], home)
        done = [r for r in runs if r["deployment"] == "every-20s" and r["state"] == "Completed"]
        assert done and done[0]["flow"] == "ingest", runs
    finally:
        if deploy is not None and deploy.poll() is None:
            os.killpg(deploy.pid, signal.SIGINT)  # prefect serve's Ctrl-C: stop polling, cancel what runs
            try:
                deploy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(deploy.pid, signal.SIGKILL)
                deploy.wait()
        stopped = cli_json(["server", "stop"], home)
    assert stopped["stopped"] and not cli_json(["server", "status"], home)["running"]


def test_schedule_file_errors(home: Path, tmp_path: Path) -> None:
    cases = {
        "deployments:\n  - {flow: pipeline, name: x, cron: '61 * * * *'}\n": "invalid cron '61 * * * *'",
        "deployments:\n  - {flow: teleport, name: x, interval: 5}\n": "unknown flow 'teleport'",
        "deployments:\n  - {flow: pipeline, name: x, cron: '* * * * *', interval: 5}\n": "cron or interval",
        "just a string\n": "must hold a mapping",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"s{i}.yaml"
        path.write_text(text)
        proc = run_cli(["deploy", "--schedules", str(path), "--check"], home)
        assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr
    proc = run_cli(["deploy", "--schedules", str(tmp_path / "none.yaml")], home)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    ok = tmp_path / "ok.yaml"
    ok.write_text(SCHEDULE)
    assert json.loads(run_cli(["deploy", "--schedules", str(ok), "--check", "--json"], home).stdout)["deployments"][0]["name"] == "every-20s"
    example = run_cli(["deploy", "--schedules", str(REPO / "schedules.example.yaml"), "--check", "--json"], home)
    assert example.returncode == 0 and len(json.loads(example.stdout)["deployments"]) == 2
    proc = run_cli(["deploy", "--schedules", str(ok)], home)  # no server running
    assert proc.returncode == 2 and "vlforge server start" in proc.stderr


def test_server_port_in_use(home: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_cli(["server", "start", "--port", str(port)], home)
    assert proc.returncode == 2 and f"port {port}" in proc.stderr and "already in use" in proc.stderr
