"""The Ray Train loop for real (2 gloo workers on CPU). Faults: the driver killed with SIGKILL resumes from its last
checkpoint, and one training worker killed mid-run is restarted by Ray Train (FailureConfig) from the last
checkpoint; both end with exactly the weights of an uninterrupted run (same seed, CPU)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from vlforge.catalog import Catalog
from vlforge.components.data.crawl import CrawlConfig
from vlforge.components.data.shard import ShardConfig
from vlforge.components.pipeline_config import SourceConfig
from vlforge.components.stages import run_ingest, run_tokenizer
from vlforge.components.tokenizer import TokenizerConfig

pytestmark = pytest.mark.slow

RECIPE = {"steps": 48, "checkpoint_every": 8, "log_every": 4, "batch_size": 32, "image_size": 32, "patch_size": 8,
          "vision_layers": 2, "text_layers": 2, "warmup_steps": 4, "shuffle_buffer": 64}

TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
from vlforge.components.models.registry import get_family
from vlforge.components.training.loop import train
a = json.loads(sys.argv[1])
recipe = get_family("clip").recipe("tiny", a["recipe"])
print(json.dumps(train(family_name="clip", recipe=recipe, dataset_dir=Path(a["data"]), tokenizer_dir=Path(a["tok"]),
                       run_dir=Path(a["run"]), out_dir=Path(a["out"]))))
"""


def launch(args: dict, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, json.dumps(args)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen, stderr: list | None = None) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    if stderr is not None:
        stderr.append(err)
    return json.loads(out.strip().splitlines()[-1])


def wait_for_checkpoint(run: Path, proc: subprocess.Popen) -> list[dict]:
    """Wait until Ray Train has registered a checkpoint (its snapshot file names it); return that checkpoint's log."""
    deadline = time.time() + 300
    snapshot = run / "checkpoint_manager_snapshot.json"
    while not snapshot.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    logs = sorted(run.glob("checkpoint_*/train_log.jsonl"))
    if proc.poll() is not None:
        pytest.fail(f"the run ended ({proc.returncode}) before it could be interrupted: {proc.stderr.read()[-3000:]}")
    assert logs, "a checkpoint was registered without its training log"
    return [json.loads(line) for line in logs[0].read_text().splitlines()]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("loop")
    old = os.environ.get("VLFORGE_HOME")
    os.environ["VLFORGE_HOME"] = str(root / "home")
    try:
        catalog = Catalog(root / "home" / "catalog")
        data = run_ingest(SourceConfig(spec="builtin:shapes?n=240&image_size=32"), CrawlConfig(image_size=32, processes=1),
                          ShardConfig(samples_per_shard=40), catalog).artifact
        tok = run_tokenizer(data.id, TokenizerConfig(vocab_size=128), catalog).artifact
    finally:
        os.environ.pop("VLFORGE_HOME") if old is None else os.environ.__setitem__("VLFORGE_HOME", old)
    common = {"recipe": RECIPE, "data": str(catalog.path(data.id)), "tok": str(catalog.path(tok.id))}
    err: list[str] = []
    straight = finish(launch({**common, "run": str(root / "runs" / "straight"), "out": str(root / "straight")},
                             env={"VLFORGE_PROGRESS": "1"}), err)
    return {"root": root, "common": common, "straight": straight, "stderr": err[0],
            "weights": (root / "straight" / "model.safetensors").read_bytes()}


def test_the_driver_shows_the_workers_progress(prepared: dict) -> None:
    # rank 0's log rows reach the driver's progress bar (stderr) through a Ray queue; the last one is step 48 of 48
    lines = [ln for ln in prepared["stderr"].splitlines() if "train clip" in ln]
    assert lines and "48/48" in lines[-1] and "loss " in lines[-1] and "samples/s" in lines[-1], prepared["stderr"][-2000:]
    assert "loss -" not in lines[-1]  # a real loss from a worker row, not the placeholder


def test_resume_after_driver_sigkill_matches_uninterrupted_run(prepared: dict, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "interrupted"
    args = {**prepared["common"], "run": str(run), "out": str(tmp_path / "m")}
    proc = launch(args)
    before_kill = wait_for_checkpoint(run, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    assert not (tmp_path / "m").exists()
    resumed = finish(launch(args))
    log = [json.loads(line) for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(4, 49, 4))  # history carried over the resume, no gaps
    # resumed, not restarted: the rows up to the checkpoint are the killed run's own (their measured throughput
    # would differ had those steps been trained again)
    assert log[: len(before_kill)] == before_kill
    assert resumed["steps"] == prepared["straight"]["steps"] == 48
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == prepared["weights"]
    assert prepared["straight"]["final_loss"] < prepared["straight"]["first_loss"]


def test_worker_sigkill_is_restarted_from_checkpoint(prepared: dict, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "worker-fault"
    proc = launch({**prepared["common"], "run": str(run), "out": str(tmp_path / "m")})
    wait_for_checkpoint(run, proc)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "RayTrainWorker" in " ".join(p.cmdline())]
    assert workers, "no Ray Train worker found under the driver"
    workers[-1].send_signal(signal.SIGKILL)
    result = finish(proc)
    assert result["steps"] == 48
    # restarted from the last checkpoint with the same data position: bit-identical to the uninterrupted run
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == prepared["weights"]
    assert abs(result["final_loss"] - prepared["straight"]["final_loss"]) < 1e-6
