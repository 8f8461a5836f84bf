"""The whole DAG through the real CLI (Prefect's embedded server, img2dataset over loopback HTTP, Ray Train with 2
workers), then the same again (all cache hits, same ids), then a changed eval config (only eval re-runs)."""
import json
import re
from pathlib import Path

import pytest
import webdataset as wds
from cli_harness import cli_json, run_cli
from transformers import CLIPModel
from vlforge.catalog import Catalog

pytestmark = pytest.mark.slow

CONFIG = """
source: {spec: "builtin:shapes?n=500&image_size=64"}
crawl: {image_size: 64, processes: 2}
shard: {samples_per_shard: 128, validation_fraction: 0.12}
tokenizer: {vocab_size: 256}
train: {family: clip, recipe: tiny, overrides: {steps: 30, batch_size: 64, checkpoint_every: 15, warmup_steps: 3}}
eval: {tasks: [retrieval, zero_shot_classification], split: validation}
"""


# Ray's own lines (Ray Train's reports, its controller's C++ core-worker lines) that only `--verbose` shows
RAY_LINES = ("TrainingReport(", "Checkpoint successfully created", "core_worker.cc", "PreemptionWatcher")


def test_pipeline_end_to_end_then_cached(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text(CONFIG)
    # the first run as `make demo` shows it: vlforge's progress bar (forced on: stderr is a pipe here) and tables,
    # none of Ray's own lines
    monkeypatch.setenv("VLFORGE_PROGRESS", "1")
    monkeypatch.delenv("VLFORGE_VERBOSE", raising=False)
    shown = run_cli(["run", "pipeline", "--config", str(config)], home)
    assert shown.returncode == 0, shown.stderr[-4000:]
    terminal = shown.stdout + shown.stderr
    assert not [line for line in terminal.splitlines() if any(m in line for m in RAY_LINES)], terminal[-4000:]
    bar = [line for line in shown.stderr.splitlines() if "train clip" in line]
    assert bar and "30/30" in bar[-1] and "samples/s" in bar[-1], shown.stderr[-2000:]
    catalog = Catalog(home / "catalog")
    first = {a.kind: a.id for a in catalog.list()}
    assert sorted(first) == ["dataset", "eval", "model", "tokenizer"] and len(catalog.list()) == 4
    assert "vlforge pipeline" in shown.stdout and "evaluation (validation split)" in shown.stdout, shown.stdout
    for kind, art_id in first.items():  # a row per artifact (kind, artifact, name, version, cached, seconds)
        row = next((line for line in shown.stdout.splitlines() if catalog.get(art_id).short_id in line), "")
        cells = [cell.strip() for cell in re.split(r"[│|]", row) if cell.strip()]
        assert cells[:1] == [kind] and cells[4:5] == ["no"], shown.stdout

    # the dataset: shards read back with webdataset, counts match the manifest
    dataset = catalog.get(first["dataset"])
    ddir = catalog.path(dataset.id)
    manifest = json.loads((ddir / "manifest.json").read_text())
    assert manifest["samples"] == 500 and dataset.metrics["samples"] == 500
    for shard in manifest["shards"]:
        assert sum(1 for _ in wds.WebDataset(str(ddir / shard["shard"]), shardshuffle=False)) == shard["samples"]
    assert manifest["has_facts"] and len(manifest["labels"]) == 6

    # the model: a save_pretrained directory CLIPModel loads
    model = catalog.get(first["model"])
    assert model.family == "clip" and model.metrics["final_loss"] < model.metrics["first_loss"]
    assert isinstance(CLIPModel.from_pretrained(catalog.path(model.id)), CLIPModel)

    # the eval: retrieval well above chance
    report = catalog.get(first["eval"])
    m = report.metrics
    assert m["i2t_r5"] > 2.5 * 5 * m["i2t_chance_r1"], m
    assert m["t2i_r5"] > 2.5 * 5 * m["t2i_chance_r1"], m
    assert set(m) >= {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"}

    # lineage: eval <- (model, dataset); model <- (dataset, tokenizer); tokenizer <- dataset
    assert report.parents == [model.id, dataset.id]
    assert model.parents == [dataset.id, first["tokenizer"]]
    assert catalog.get(first["tokenizer"]).parents == [dataset.id]
    lineage = cli_json(["catalog", "lineage", report.id], home)
    assert [p["id"] for p in lineage["tree"]["parents"]] == [model.id, dataset.id]
    shown = cli_json(["catalog", "show", "clip-shapes"], home)
    assert shown["id"] == model.id and shown["family"] == "clip" and shown["parents"] == model.parents
    assert {"id", "kind", "name", "family", "parents", "config", "metrics", "files"} <= set(shown)

    # second run: every stage a cache hit, the same ids, nothing new in the catalog
    count = len(catalog.list())
    second = cli_json(["run", "pipeline", "--config", str(config)], home)
    assert set(second["cached"].values()) == {True}
    assert {k: second[k] for k in ("dataset", "tokenizer", "model", "eval")} == {k: first[k] for k in ("dataset", "tokenizer", "model", "eval")}
    assert len(catalog.list()) == count

    # a changed eval config re-runs eval only
    config.write_text(CONFIG.replace("split: validation", "split: all"))
    third = cli_json(["run", "pipeline", "--config", str(config)], home)
    assert third["cached"] == {"dataset": True, "tokenizer": True, "model": True, "eval": False}
    assert third["eval"] != first["eval"] and catalog.get(third["eval"]).metrics["images"] == 500

    # reproduce: the DAG re-run with caching off rebuilds data, tokenizer, model and eval bit for bit
    rows = cli_json(["reproduce", first["eval"]], home)
    assert [r["kind"] for r in rows] == ["dataset", "tokenizer", "model", "eval"]
    assert all(r["match"] for r in rows), rows
    assert len(catalog.list()) == count + 1  # reproducing registers nothing in this catalog

    listed = cli_json(["catalog", "list", "--kind", "eval"], home)
    assert {e["id"] for e in listed} == {first["eval"], third["eval"]}
    human = run_cli(["catalog", "list"], home)
    assert human.returncode == 0 and "clip-shapes" in human.stdout


def test_ingest_emoji_integration(home: Path, emoji_dir: Path) -> None:
    out = cli_json(["run", "ingest", "--source", str(emoji_dir / "pairs.parquet"), "--name", "emoji",
                    "--label-col", "category", "--key-col", "key", "--set", "crawl.image_size=64"], home)
    catalog = Catalog(home / "catalog")
    dataset = catalog.get(out["dataset"])
    assert dataset.name == "emoji" and dataset.metrics["samples"] == 1580 and dataset.metrics["failed"] == 0
    manifest = json.loads((catalog.path(dataset.id) / "manifest.json").read_text())
    assert len(manifest["labels"]) == 9 and "Animals & Nature" in manifest["labels"]
    samples = list(wds.WebDataset([str(catalog.path(dataset.id) / s["shard"]) for s in manifest["shards"]],
                                  shardshuffle=False).decode("pil"))
    assert len(samples) == 1580 and len({s["__key__"] for s in samples}) == 1580
    captions = {s["txt"] for s in samples}
    assert "rabbit" in captions and all(s["jpg"].size == (64, 64) for s in samples[:50])
    again = cli_json(["run", "ingest", "--source", str(emoji_dir / "pairs.parquet"), "--name", "emoji",
                      "--label-col", "category", "--key-col", "key", "--set", "crawl.image_size=64"], home)
    assert again["dataset"] == out["dataset"] and again["cached"]["dataset"] is True
