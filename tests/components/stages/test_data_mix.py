"""The train stage over a weighted data mix (``--data A=3 --data B=1``): parsing, one-line errors before any work,
a cache key holding every dataset and its weight (a lone REF keyed as before), teachers planned on the mix, and
one real training run through the CLI whose model has both datasets as parents."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_harness import cli_json
from vlforge.catalog import Catalog
from vlforge.components.stages import parse_data_options, plan_training, train_key, training_data
from vlforge.components.tokenizer import TokenizerConfig, train_tokenizer
from vlforge.errors import UserError


def register_dataset(catalog: Catalog, tmp_path: Path, name: str, fmt: str = "webdataset", shards: int = 1,
                     labels: bool = True) -> str:
    d = tmp_path / name
    d.mkdir()
    manifest = {"format": fmt, "splits": {"train": {"samples": 8, "shards": [f"train-{i}.tar" for i in range(shards)]},
                                          "validation": {"samples": 0, "shards": []}}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    pq.write_table(pa.table({"key": [str(i) for i in range(8)], "caption": ["a red circle"] * 8,
                             "label": ["circle", "square"] * 4 if labels else [""] * 8, "split": ["train"] * 8}),
                   d / "samples.parquet")
    return catalog.register(kind="dataset", name=name, files=d, config={}).id


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    catalog = Catalog(tmp_path / "catalog")
    register_dataset(catalog, tmp_path, "a")
    register_dataset(catalog, tmp_path, "b", labels=False)
    register_dataset(catalog, tmp_path, "glue", fmt="text", shards=0)
    register_dataset(catalog, tmp_path, "empty", shards=0)
    train_tokenizer(["a red circle", "a blue square"] * 5, tmp_path / "tok", TokenizerConfig(vocab_size=40))
    catalog.register(kind="tokenizer", name="t", files=tmp_path / "tok", config={})
    return catalog


def test_data_options_parse_into_one_ref_or_a_weighted_mix() -> None:
    assert parse_data_options(["a"]) == "a"  # the single-dataset path, unchanged
    assert parse_data_options(["a=3", "b=1"]) == {"a": 3.0, "b": 1.0}
    assert parse_data_options(["a", "b=0.5"]) == {"a": 1.0, "b": 0.5}
    assert parse_data_options(["a=2"]) == {"a": 2.0}
    for values, message in [(["a=x", "b=1"], "--data 'a=x': weight 'x' is not a number"),
                            (["=3"], "--data '=3': no dataset REF before '='"),
                            (["a=1", "a=2"], "--data 'a' is given twice")]:
        with pytest.raises(UserError, match=message) as err:
            parse_data_options(values)
        assert "\n" not in str(err.value)


def test_bad_mixes_are_one_line_errors(catalog: Catalog) -> None:
    a = catalog.get("a").id
    for data, message in [({"a": 3.0, "b": -1.0}, "--data 'b=-1': the weight is negative"),
                          ({"a": 0.0, "b": 0.0}, "--data: the weights sum to 0"),
                          ({"a": float("nan"), "b": 1.0}, "the weight is not a finite number"),
                          ({"a": 1.0, "nope": 1.0}, "unknown artifact reference 'nope'"),
                          ({"a": 1.0, "t": 1.0}, "--data 't' is a tokenizer, not a dataset"),
                          ({"a": 1.0, a: 2.0}, f"--data 'a' and '{a}' are the same dataset"),
                          ({"a": 1.0, "glue": 1.0}, "cannot mix datasets of different formats ('a' is webdataset, "
                                                    "'glue' is text)"),
                          ({"a": 1.0, "empty": 1.0}, "--data 'empty': the dataset has no training shards")]:
        with pytest.raises(UserError, match=re.escape(message)) as err:
            training_data(data, catalog)
        assert "\n" not in str(err.value)
        with pytest.raises(UserError):  # the stage's key checks the same before any work
            train_key("clip", "tiny", {}, data, "t", catalog)
    # weight 0 leaves a dataset out; a one-dataset mix is that dataset
    assert [(art.name, w) for art, w in training_data({"a": 2.0, "b": 0.0}, catalog)] == [("a", 2.0)]
    assert [(art.name, w) for art, w in training_data({"b": 1.0, "a": 3.0}, catalog)] == [("b", 1.0), ("a", 3.0)]


def test_the_key_holds_every_dataset_and_its_weight(catalog: Catalog) -> None:
    key = lambda data: train_key("clip", "tiny", {"steps": 3}, data, "t", catalog)[0]  # noqa: E731
    single = key("a")
    assert key({"a": 2.0}) == single and key({"a": 1.0, "b": 0.0}) == single  # one dataset: keyed as a lone REF
    mix = key({"a": 3.0, "b": 1.0})
    assert mix != single and mix == key({"a": 3, "b": 1})
    assert len({mix, key({"a": 1.0, "b": 3.0}), key({"b": 1.0, "a": 3.0}), key({"a": 3.0, "b": 2.0})}) == 4
    _, dataset, _, _ = train_key("clip", "tiny", {}, {"b": 1.0, "a": 3.0}, "t", catalog)
    assert dataset.name == "b"  # validation reads the first dataset of the mix


def test_teachers_are_planned_on_what_every_dataset_of_the_mix_offers(catalog: Catalog) -> None:
    dirs = [catalog.path(catalog.get(n).id) for n in ("a", "b")]
    def image_teacher(data) -> dict:
        plan = plan_training("unified", "tiny", {}, data)
        return plan.steps[plan.steps[-1].teachers["image_teacher"]].overrides

    assert image_teacher(dirs[0])["objective"] == "supervised"  # a has labels
    assert image_teacher([dirs[0]])["objective"] == "supervised"
    assert image_teacher(dirs)["objective"] == "mim"  # b has none: the mix's samples are not all labelled


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_on_a_weighted_mix_through_the_cli(home: Path) -> None:
    from vlforge.components.data.crawl import CrawlConfig
    from vlforge.components.data.shard import ShardConfig
    from vlforge.components.pipeline_config import SourceConfig
    from vlforge.components.stages import run_ingest, run_tokenizer

    catalog = Catalog(home / "catalog")
    data = {name: run_ingest(SourceConfig(spec=f"builtin:shapes?n=40&image_size=32&seed={seed}", name=name),
                             CrawlConfig(image_size=32, processes=1), ShardConfig(samples_per_shard=20),
                             catalog).artifact
            for name, seed in (("shapes-a", 1), ("shapes-b", 2))}
    tok = run_tokenizer(data["shapes-a"].id, TokenizerConfig(vocab_size=128), catalog).artifact
    sets = {"batch_size": 8, "num_workers": 1, "image_size": 32, "patch_size": 8, "vision_layers": 1,
            "text_layers": 1, "warmup_steps": 1, "checkpoint_every": 4, "log_every": 2, "shuffle_buffer": 8,
            "resampled": "true", "train_num_samples": 24}
    args = ["run", "train", "--family", "clip", "--data", "shapes-a=3", "--data", "shapes-b=1", "--tokenizer", tok.id,
            "--steps", "4", *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]]
    result = cli_json(args, home, timeout=280)
    model = catalog.get(result["model"])
    assert model.parents[:3] == [data["shapes-a"].id, data["shapes-b"].id, tok.id]
    assert model.config["mix"] == [{"dataset": data["shapes-a"].id, "weight": 3.0},
                                   {"dataset": data["shapes-b"].id, "weight": 1.0}]
    assert model.name == "clip-shapes-a_shapes-b" and model.config["values"]["resampled"] is True
    overrides = {**{k: v for k, v in sets.items() if k != "resampled"}, "resampled": True, "steps": 4}
    mix_key = train_key("clip", "tiny", overrides, {data["shapes-a"].id: 3.0, data["shapes-b"].id: 1.0}, tok.id,
                        catalog)[0]
    assert catalog.find_by_cache_key(mix_key).id == model.id
    assert mix_key != train_key("clip", "tiny", overrides, data["shapes-a"].id, tok.id, catalog)[0]
    log = [json.loads(line) for line in (catalog.path(model.id) / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 4]


def test_bad_mixes_through_the_cli_exit_2_and_register_nothing(home: Path, tmp_path: Path) -> None:
    from cli_harness import run_cli

    catalog = Catalog(home / "catalog")
    register_dataset(catalog, tmp_path, "a")
    register_dataset(catalog, tmp_path, "glue", fmt="text", shards=0)
    before = sorted(art.id for art in catalog.list())
    for data, message in [(["a=3", "a2=-1"], "--data 'a2=-1': the weight is negative"),
                          (["a=0", "glue=0"], "--data: the weights sum to 0"),
                          (["a=1", "nope=1"], "unknown artifact reference 'nope'"),
                          (["a=3", "glue=1"], "cannot mix datasets of different formats")]:
        # the errors come before any flow: no Prefect server is needed (embedded, and never started)
        proc = run_cli(["run", "train", "--family", "clip", *[x for d in data for x in ("--data", d)]], home,
                       timeout=120, embedded=True)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert sorted(art.id for art in catalog.list()) == before
