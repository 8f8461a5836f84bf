"""The Ray Train loop for real (2 gloo workers on CPU): a run killed with SIGKILL resumes from its last checkpoint
and ends with exactly the weights of an uninterrupted run; the same seed gives the same weights."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vlforge.catalog import Catalog
from vlforge.components.data.crawl import CrawlConfig
from vlforge.components.data.shard import ShardConfig
from vlforge.components.pipeline_config import SourceConfig
from vlforge.components.stages import run_ingest, run_tokenizer
from vlforge.components.tokenizer import TokenizerConfig

from vlforge.settings import catalog_root

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


def launch(args: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, json.dumps(args)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_resume_after_sigkill_matches_uninterrupted_run(home: Path, tmp_path: Path) -> None:
    catalog = Catalog(catalog_root())
    data = run_ingest(SourceConfig(spec="builtin:shapes?n=240&image_size=32"), CrawlConfig(image_size=32, processes=1),
                      ShardConfig(samples_per_shard=40), catalog).artifact
    tok = run_tokenizer(data.id, TokenizerConfig(vocab_size=128), catalog).artifact
    common = {"recipe": RECIPE, "data": str(catalog.path(data.id)), "tok": str(catalog.path(tok.id))}

    killed_run = tmp_path / "runs" / "interrupted"
    proc = launch({**common, "run": str(killed_run), "out": str(tmp_path / "m1")})
    deadline = time.time() + 300
    while not list(killed_run.glob("checkpoint_*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    assert not (tmp_path / "m1").exists()
    resumed = finish(launch({**common, "run": str(killed_run), "out": str(tmp_path / "m1")}))
    straight = finish(launch({**common, "run": str(tmp_path / "runs" / "straight"), "out": str(tmp_path / "m2")}))

    log = [json.loads(line) for line in (tmp_path / "m1" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(4, 49, 4))  # history carried over the resume, no gaps
    assert resumed["steps"] == straight["steps"] == 48
    assert (tmp_path / "m1" / "model.safetensors").read_bytes() == (tmp_path / "m2" / "model.safetensors").read_bytes()
    assert straight["final_loss"] < straight["first_loss"]
