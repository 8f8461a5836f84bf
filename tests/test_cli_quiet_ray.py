"""Ray's own log lines stay off the terminal unless ``vlforge --verbose`` (or ``VLFORGE_VERBOSE=1``): what
``ensure_ray`` hands ``ray.init`` and Ray Train in each mode, and that the CLI option reaches it. No Ray starts here;
the real run (no Ray lines, progress bar and result tables shown) is checked in tests/test_pipeline_e2e.py."""
import json
import logging
import os
import subprocess
import sys

import pytest
from cli_harness import REPO
from vlforge.components.training.ray_runtime import (
    RAY_LOGGERS,
    ensure_ray,
    ray_env,
    train_logging_config,
)


@pytest.fixture
def ray_init_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """``ray.init`` replaced by a recorder (Ray never starts); the environment and Ray's logger levels restored."""
    import ray

    for key, value in ray_env().items():  # ensure_ray sets these; monkeypatch puts them back afterwards
        monkeypatch.setenv(key, os.environ.get(key, value))
    for key in ("VLFORGE_RAY_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("VLFORGE_VERBOSE", "0")
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    levels = {name: logging.getLogger(name).level for name in RAY_LOGGERS}
    yield calls
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_ray_is_quiet_by_default(ray_init_calls: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLFORGE_VERBOSE")
    ensure_ray()
    (kwargs,) = ray_init_calls
    assert kwargs["address"] == "local" and kwargs["_node_ip_address"] == "127.0.0.2"
    # no worker stdout/stderr forwarded (Ray Train's report and checkpoint lines, the core workers' C++ lines)
    assert kwargs["log_to_driver"] is False
    assert kwargs["configure_logging"] is True and kwargs["logging_level"] == "ERROR"
    assert all(logging.getLogger(name).getEffectiveLevel() == logging.ERROR for name in RAY_LOGGERS)
    assert train_logging_config()["logging_config"].log_level == "ERROR"


def test_verbose_env_restores_rays_lines(ray_init_calls: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLFORGE_VERBOSE", "1")
    levels = {name: logging.getLogger(name).level for name in RAY_LOGGERS}
    ensure_ray(address="auto")  # joining a cluster takes the same logging options
    (kwargs,) = ray_init_calls
    assert kwargs["address"] == "auto" and kwargs["log_to_driver"] is True and kwargs["logging_level"] == "WARNING"
    assert {name: logging.getLogger(name).level for name in RAY_LOGGERS} == levels  # left as Ray set them
    assert train_logging_config()["logging_config"].log_level == "INFO"  # Ray Train's default


CLI_SCRIPT = """
import json, os, sys
from vlforge.cli import app
from vlforge.components.training.ray_runtime import ray_init_options
seen = {}
for argv in json.loads(sys.argv[1]):
    os.environ.pop("VLFORGE_VERBOSE", None)
    try:
        app(argv, prog_name="vlforge")
    except SystemExit as exc:
        assert exc.code == 0, (argv, exc.code)
    seen[" ".join(argv)] = ray_init_options()["log_to_driver"]
print(json.dumps(seen))
"""


def test_the_verbose_option_reaches_ray(tmp_path) -> None:
    variants = [["run", "train", "--help"], ["--verbose", "run", "train", "--help"], ["-v", "run", "train", "--help"],
                ["run", "--verbose", "train", "--help"], ["run", "-v", "pipeline", "--help"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VLFORGE_"))}
    env["VLFORGE_HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-c", CLI_SCRIPT, json.dumps(variants)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"run train --help": False, "--verbose run train --help": True, "-v run train --help": True,
                    "run --verbose train --help": True, "run -v pipeline --help": True}
