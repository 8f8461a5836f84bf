"""Ray Train checkpoints on an S3-compatible store (moto's server on loopback): a tiny CLIP writes its checkpoints to
``s3://bucket/prefix/<run name>`` (nothing under the local run folder), a second ``train()`` with the same run name
and the storage taken from ``VLFORGE_RAY_STORAGE`` resumes from the checkpoint in the bucket, and the final model,
copied back without its optimiser state, loads. Bad storage settings fail in one line before Ray starts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from moto_s3 import MotoS3, free_port, moto_s3_server
from vlforge.catalog import Catalog
from vlforge.components.data.crawl import CrawlConfig
from vlforge.components.data.shard import ShardConfig
from vlforge.components.pipeline_config import SourceConfig
from vlforge.components.stages import run_ingest, run_tokenizer
from vlforge.components.tokenizer import TokenizerConfig
from vlforge.components.training.checkpoint_storage import resolve_run_storage

from vlforge.errors import UserError

RECIPE = {"checkpoint_every": 4, "log_every": 4, "batch_size": 16, "image_size": 32, "patch_size": 8,
          "vision_layers": 2, "text_layers": 2, "warmup_steps": 2, "shuffle_buffer": 32, "num_workers": 1}

# Both runs in one process, so Ray starts once; the second takes its storage from the environment.
TRAIN_SCRIPT = """
import json, os, sys
from pathlib import Path
from vlforge.components.models.registry import get_family
from vlforge.components.training.loop import train
a = json.loads(sys.argv[1])
summaries = []
for steps, out, storage in ((4, a["out_first"], a["storage"]), (8, a["out"], None)):
    if storage is None:
        os.environ["VLFORGE_RAY_STORAGE"] = a["storage"]
    recipe = get_family("clip").recipe("tiny", {**a["recipe"], "steps": steps})
    summaries.append(train(family_name="clip", recipe=recipe, dataset_dir=Path(a["data"]), tokenizer_dir=Path(a["tok"]),
                           run_dir=Path(a["run"]), out_dir=Path(out), storage=storage))
print(json.dumps(summaries))
"""


@pytest.fixture(scope="module")
def s3() -> MotoS3:
    with moto_s3_server() as server:
        yield server


def _prepare(root: Path) -> dict:
    old = os.environ.get("VLFORGE_HOME")
    os.environ["VLFORGE_HOME"] = str(root / "home")
    try:
        catalog = Catalog(root / "home" / "catalog")
        data = run_ingest(SourceConfig(spec="builtin:shapes?n=160&image_size=32"),
                          CrawlConfig(image_size=32, processes=1), ShardConfig(samples_per_shard=40), catalog).artifact
        tok = run_tokenizer(data.id, TokenizerConfig(vocab_size=128), catalog).artifact
    finally:
        os.environ.pop("VLFORGE_HOME") if old is None else os.environ.__setitem__("VLFORGE_HOME", old)
    return {"data": str(catalog.path(data.id)), "tok": str(catalog.path(tok.id))}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_checkpoints_go_to_s3_and_resume_from_there(s3: MotoS3, tmp_path: Path) -> None:
    bucket = s3.create_bucket("vlf-ray")
    run = tmp_path / "runs" / "run-s3-tiny"
    args = {**_prepare(tmp_path), "recipe": RECIPE, "run": str(run), "storage": f"s3://{bucket}/ray/",
            "out_first": str(tmp_path / "first"), "out": str(tmp_path / "model")}
    env = {**os.environ, **s3.env()}
    env.pop("VLFORGE_RAY_STORAGE", None)
    proc = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-4000:]
    first, second = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (first["steps"], second["steps"]) == (4, 8)

    keys = s3.keys(bucket, "ray/run-s3-tiny/")
    checkpoints = sorted({k.split("/")[2] for k in keys if k.count("/") == 3 and k.split("/")[2].startswith("checkpoint_")})
    assert "ray/run-s3-tiny/checkpoint_manager_snapshot.json" in keys, keys  # what a resumed run reads
    assert len(checkpoints) == 2, keys  # steps 4 and 8 (num_to_keep=2)
    for name in checkpoints:
        assert {f"ray/run-s3-tiny/{name}/{f}" for f in ("model.safetensors", "train_state.pt", "train_log.jsonl")} \
            <= set(keys), keys
    assert not run.exists() or not any(run.rglob("checkpoint_*")), "checkpoints went to local disk"

    # the second run resumed from the step-4 checkpoint in the bucket: its log starts with the first run's rows,
    # wall-clock throughput included, which a fresh run would not reproduce
    log_first = [json.loads(line) for line in (tmp_path / "first" / "train_log.jsonl").read_text().splitlines()]
    log = [json.loads(line) for line in (tmp_path / "model" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [4, 8] and log[0] == log_first[-1]

    out = tmp_path / "model"
    assert (out / "model.safetensors").is_file() and not (out / "train_state.pt").exists()
    from vlforge.components.models.registry import get_family

    model = get_family("clip").load(out)
    assert sum(p.numel() for p in model.parameters()) == second["total_params"]


def test_bad_storage_settings_are_one_line(s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    s3.create_bucket("vlf-here")
    found = resolve_run_storage("s3://vlf-here/p/", tmp_path / "runs" / "r1")
    assert (found.storage_path, found.run_url) == ("vlf-here/p", "s3://vlf-here/p/r1")
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("VLFORGE_RAY_STORAGE", str(tmp_path / "shared"))
    assert resolve_run_storage(None, tmp_path / "r2").run_url == str(tmp_path / "shared" / "r2")
    monkeypatch.delenv("VLFORGE_RAY_STORAGE")
    assert resolve_run_storage(None, tmp_path / "r3").storage_path == str(tmp_path)

    cases = [("s3://", "names no bucket"), ("s3://vlf-missing/p", "bucket 'vlf-missing' does not exist"),
             ("nosuchscheme://x/y", "is not usable")]
    for url, fragment in cases:
        with pytest.raises(UserError) as excinfo:
            resolve_run_storage(url, tmp_path / "r")
        assert "\n" not in str(excinfo.value) and fragment in str(excinfo.value), str(excinfo.value)
    monkeypatch.setenv("VLFORGE_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UserError) as excinfo:
        resolve_run_storage("s3://vlf-here/p", tmp_path / "r")
    assert "\n" not in str(excinfo.value) and "is unreachable" in str(excinfo.value), str(excinfo.value)
    monkeypatch.setenv("VLFORGE_S3_ENDPOINT", "127.0.0.1:9000")
    with pytest.raises(UserError, match="VLFORGE_S3_ENDPOINT"):
        resolve_run_storage("s3://vlf-here/p", tmp_path / "r")


def test_copy_checkpoint_from_local_storage_leaves_out_optimiser_state(tmp_path: Path) -> None:
    from ray.train import Checkpoint
    from vlforge.components.training.checkpoint_storage import copy_checkpoint

    source = tmp_path / "checkpoint_000"
    for relpath, data in {"model.safetensors": b"w", "train_state.pt": b"opt", "tok/vocab.json": b"{}",
                          "tok/train_state.pt": b"kept: only the top-level state is left out"}.items():
        (source / relpath).parent.mkdir(parents=True, exist_ok=True)
        (source / relpath).write_bytes(data)
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("replaced")
    copy_checkpoint(Checkpoint.from_directory(str(source)), out, exclude=["train_state.pt"])
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["model.safetensors", "tok/train_state.pt", "tok/vocab.json"]
    assert not (tmp_path / "model.tmp").exists()
