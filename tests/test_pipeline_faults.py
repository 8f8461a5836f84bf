"""Kill the whole pipeline process mid-train (SIGKILL to its process group) and run it again: finished stages are
cache hits, training resumes from its checkpoint instead of starting over, nothing is registered twice."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_harness import REPO, cli_env, cli_json
from vlforge.catalog import Catalog

pytestmark = [pytest.mark.slow, pytest.mark.serial]

CONFIG = """
source: {spec: "builtin:shapes?n=200&image_size=32"}
crawl: {image_size: 32, processes: 1}
tokenizer: {vocab_size: 128}
train: {overrides: {steps: 40, batch_size: 32, checkpoint_every: 8, log_every: 4, image_size: 32, vision_layers: 2, text_layers: 2}}
eval: {tasks: [retrieval]}
"""


def test_killed_pipeline_resumes_training(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(CONFIG)
    env = cli_env(home)
    proc = subprocess.Popen([sys.executable, "-m", "vlforge.cli", "run", "pipeline", "--config", str(config), "--json"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 400
    checkpoints: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        # a checkpoint Ray Train has registered (named in its snapshot) is one a rerun resumes from
        if list((home / "work" / "train").glob("*/ray/run-*/checkpoint_manager_snapshot.json")):
            checkpoints = list((home / "work" / "train").glob("*/ray/run-*/checkpoint_*"))
            break
        time.sleep(0.2)
    assert proc.poll() is None and checkpoints, proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "no checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    logs = sorted((json.loads(line) for c in checkpoints if (c / "train_log.jsonl").exists()
                   for line in (c / "train_log.jsonl").read_text().splitlines()), key=lambda r: r["step"])
    before_kill = {row["step"]: row for row in logs if row["step"] <= 8}
    assert 8 in before_kill
    catalog = Catalog(home / "catalog")
    assert sorted(a.kind for a in catalog.list()) == ["dataset", "tokenizer"]  # the model was never registered

    again = cli_json(["run", "pipeline", "--config", str(config)], home)
    assert again["cached"] == {"dataset": True, "tokenizer": True, "model": False, "eval": False}
    assert sorted(a.kind for a in catalog.list()) == ["dataset", "eval", "model", "tokenizer"]  # nothing twice
    log = [json.loads(line) for line in (catalog.path(again["model"]) / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(4, 41, 4))
    # resumed, not restarted: the rows up to the checkpoint are the killed run's own (their measured throughput
    # would differ had those steps been trained again)
    assert [r for r in log if r["step"] in before_kill] == [before_kill[s] for s in sorted(before_kill)]
