"""Experiment tracking and in-training validation (``components/training/tracking.py``, ``validation.py``).

The Tracker writes to a real SQLite MLflow store and a real TensorBoard folder, read back with MlflowClient and
TensorBoard's EventAccumulator; check_tracking's errors are one line; the Validator scores a tiny CLIP on a shapes
dataset's validation split without touching the training RNG; and one train stage through the real Ray Train loop
(one worker, in a subprocess) logs val_* rows to train_log.jsonl and the MLflow run, and the catalog ids as tags."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_harness import REPO, load_module
from vlforge.catalog import Catalog
from vlforge.components.data.crawl import CrawlConfig
from vlforge.components.data.shard import ShardConfig
from vlforge.components.models.registry import get_family
from vlforge.components.pipeline_config import SourceConfig
from vlforge.components.stages import run_ingest, run_tokenizer, train_key
from vlforge.components.tokenizer import TokenizerConfig, load_tokenizer
from vlforge.components.training.tracking import RUN_TAG, Tracker, check_tracking
from vlforge.components.training.validation import Validator, check_validation
from vlforge.errors import UserError

eval_fixtures = load_module("eval_fixtures", REPO / "tests/components/evaluation/eval_fixtures.py")
shapes_dataset, tiny_clip_dir, one_torch_thread = (eval_fixtures.shapes_dataset, eval_fixtures.tiny_clip_dir,
                                                  eval_fixtures.one_torch_thread)


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_tracker_logs_params_metrics_and_ids_to_mlflow_and_tensorboard(home: Path, monkeypatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("VLFORGE_MLFLOW_URI", raising=False)  # the default: a SQLite store under VLFORGE_HOME
    tracker = Tracker(["mlflow", "tensorboard"], "run-abc")
    tracker.log_params({"family": "clip", "lr": 0.001, "freeze": ["text.*"]})
    tracker.log_metrics(2, {"step": 2, "loss": 2.5, "lr": 1e-3, "worker_nodes": ["127.0.0.2"]})
    tracker.log_metrics(4, {"step": 4, "loss": 2.0, "val_loss": 2.25})
    tracker.log_catalog_ids({"model": "model-1", "dataset": "dataset-2"})
    tracker.close()
    assert (home / "mlflow.db").is_file()

    client = mlflow_client(f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(tracker.mlflow_run_id)
    assert run.data.params == {"family": "clip", "lr": "0.001", "freeze": '["text.*"]'}
    assert history(client, run.info.run_id, "loss") == [(2, 2.5), (4, 2.0)]
    assert history(client, run.info.run_id, "val_loss") == [(4, 2.25)]
    assert "step" not in run.data.metrics and "worker_nodes" not in run.data.metrics
    assert run.data.tags[RUN_TAG] == "run-abc" and run.data.tags["catalog.model"] == "model-1"
    assert run.info.status == "FINISHED"
    # the same run name reopens the same MLflow run (a resumed training keeps logging into it)
    again = Tracker(["mlflow"], "run-abc")
    assert again.mlflow_run_id == tracker.mlflow_run_id
    again.close("FAILED")
    assert client.get_run(tracker.mlflow_run_id).info.status == "FAILED"
    assert Tracker(["mlflow"], "run-other").mlflow_run_id != tracker.mlflow_run_id

    events = EventAccumulator(str(home / "tensorboard" / "run-abc"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("loss")] == [(2, 2.5), (4, 2.0)]
    assert [(s.step, s.value) for s in events.Scalars("val_loss")] == [(4, 2.25)]
    assert {"params/text_summary", "catalog/text_summary"} <= set(events.Tags()["tensors"])
    catalog_text = events.Tensors("catalog/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "model-1" in catalog_text and "dataset-2" in catalog_text


def test_tracker_takes_the_uri_and_folder_it_is_given(home: Path, tmp_path: Path, monkeypatch) -> None:
    # a Ray worker gets the driver's resolved store and folder, whatever its own environment says
    monkeypatch.setenv("VLFORGE_MLFLOW_URI", f"sqlite:///{tmp_path / 'elsewhere' / 'wrong.db'}")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    tracker = Tracker(["mlflow", "tensorboard"], "run-x", uri=uri, log_dir=tmp_path / "tb")
    tracker.log_metrics(1, {"loss": 1.0})
    tracker.close()
    assert history(mlflow_client(uri), tracker.mlflow_run_id, "loss") == [(1, 1.0)]
    assert not (tmp_path / "elsewhere").exists() and not (home / "tensorboard").exists()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_check_tracking_errors_are_one_line(home: Path, monkeypatch) -> None:
    with pytest.raises(UserError, match=r"recipe field 'tracking': unknown backend 'wandb' \(backends: mlflow, "
                                        r"tensorboard\)") as err:
        check_tracking(["tensorboard", "wandb"])
    assert "\n" not in str(err.value)
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VLFORGE_MLFLOW_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError, match=rf"MLflow tracking URI 'http://127.0.0.1:{port}' \(VLFORGE_MLFLOW_URI\) is "
                                        "unreachable: ") as err:
        check_tracking(["mlflow"])
    assert "\n" not in str(err.value)
    check_tracking(["tensorboard"])  # the MLflow URI matters only with mlflow
    check_tracking([])


def test_validator_scores_the_training_model_and_leaves_the_rng_alone(shapes_dataset: Path, tiny_clip_dir: Path) -> None:
    family = get_family("clip")
    recipe = family.recipe("tiny", {**eval_fixtures.CLIP_OVERRIDES, "eval_every": 2})
    model = family.load(tiny_clip_dir)
    validator = Validator(family, recipe, load_tokenizer(tiny_clip_dir), shapes_dataset, torch.device("cpu"), 8)
    assert validator.task == "zero_shot_classification"  # shapes carry labels: CLIP's headline is zero-shot top-1

    model.train()
    torch.manual_seed(123)
    rng = torch.random.get_rng_state()
    first = validator(model, 2)
    assert torch.equal(torch.random.get_rng_state(), rng)  # a run with eval_every trains the same weights
    assert model.training
    assert {"val_loss", "val_zs_top1"} <= set(first) and all(k.startswith("val_") for k in first)
    assert first["val_loss"] > 0 and 0.0 <= first["val_zs_top1"] <= 1.0
    assert validator(model, 2) == first  # the same batches every time

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    assert validator(model, 3)["val_loss"] != first["val_loss"]  # it scores the model it is given, not a copy


def test_check_validation_needs_a_validation_split(shapes_dataset: Path, tmp_path: Path) -> None:
    family = get_family("clip")
    no_val = eval_fixtures.write_shapes_dataset(tmp_path / "noval", 12, image_size=32, validation_fraction=0.0)
    with pytest.raises(UserError, match="recipe field 'eval_every': dataset 'noval' has no 'validation' split"):
        check_validation(family.recipe("tiny", {"eval_every": 5}), no_val, "noval")
    check_validation(family.recipe("tiny", {"eval_every": 0}), no_val, "noval")  # off: nothing to check
    check_validation(family.recipe("tiny", {"eval_every": 5}), shapes_dataset, "shapes")


RECIPE = {"steps": 6, "eval_every": 3, "log_every": 2, "checkpoint_every": 6, "batch_size": 16, "num_workers": 1,
          "image_size": 32, "patch_size": 8, "vision_layers": 1, "text_layers": 1, "warmup_steps": 1,
          "shuffle_buffer": 16, "tracking": ["mlflow", "tensorboard"]}

TRAIN_SCRIPT = """
import json, sys
from vlforge.catalog import Catalog
from vlforge.components.stages import run_train
a = json.loads(sys.argv[1])
result = run_train("clip", "tiny", a["recipe"], a["data"], a["tok"], Catalog(a["catalog"]))
print(json.dumps({"model": result.artifact.id, "cached": result.cached}))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_stage_validates_and_tracks_through_the_ray_loop(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("VLFORGE_HOME", str(home))
    monkeypatch.delenv("VLFORGE_MLFLOW_URI", raising=False)
    catalog = Catalog(home / "catalog")
    data = run_ingest(SourceConfig(spec="builtin:shapes?n=96&image_size=32"), CrawlConfig(image_size=32, processes=1),
                      ShardConfig(samples_per_shard=48, validation_fraction=0.25), catalog).artifact
    tok = run_tokenizer(data.id, TokenizerConfig(vocab_size=128), catalog).artifact
    # plan time, before any work: a dataset without a validation split, an unreachable MLflow store
    no_val = run_ingest(SourceConfig(spec="builtin:shapes?n=16&image_size=32", name="noval"),
                        CrawlConfig(image_size=32, processes=1), ShardConfig(validation_fraction=0.0), catalog).artifact
    with pytest.raises(UserError, match="recipe field 'eval_every': dataset 'noval' has no 'validation' split"):
        train_key("clip", "tiny", RECIPE, no_val.id, tok.id, catalog)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with monkeypatch.context() as m:
        m.setenv("VLFORGE_MLFLOW_URI", f"http://127.0.0.1:{port}")
        with pytest.raises(UserError, match="MLflow tracking URI .* is unreachable"):
            train_key("clip", "tiny", RECIPE, data.id, tok.id, catalog)
    args = {"recipe": RECIPE, "data": data.id, "tok": tok.id, "catalog": str(home / "catalog")}
    proc = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, json.dumps(args)], capture_output=True, text=True,
                          timeout=280, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    model_id = json.loads(proc.stdout.strip().splitlines()[-1])["model"]

    log = [json.loads(line) for line in (catalog.path(model_id) / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 3, 4, 6]  # log_every 2, plus the eval step 3
    val = {row["step"]: row for row in log if "val_loss" in row}
    assert sorted(val) == [3, 6] and all("val_zs_top1" in row for row in val.values())

    client = mlflow_client(f"sqlite:///{home / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("vlforge").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["family"] == "clip" and json.loads(run.data.params["eval_every"]) == 3
    assert history(client, run.info.run_id, "loss") == [(r["step"], pytest.approx(r["loss"])) for r in log]
    assert history(client, run.info.run_id, "val_loss") == [(s, pytest.approx(val[s]["val_loss"])) for s in (3, 6)]
    tags = run.data.tags
    assert (tags["catalog.model"], tags["catalog.dataset"], tags["catalog.tokenizer"]) == (model_id, data.id, tok.id)
    assert list((home / "tensorboard" / tags[RUN_TAG]).glob("events.out.tfevents.*"))


def test_the_cli_and_the_loop_import_neither_mlflow_nor_tensorboard() -> None:
    # both are imported only when a recipe's tracking names them
    code = ("import sys, vlforge.cli, vlforge.components.stages, vlforge.components.training.loop; "
            "print([m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard') "
            "or m.startswith('torch.utils.tensorboard')])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
