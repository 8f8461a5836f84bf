"""Bad input through the real CLI: one line on stderr naming the problem, exit code 2, catalog unchanged."""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_harness import run_cli
from vlforge.catalog import Catalog


@pytest.fixture
def seeded(home: Path, tmp_path: Path) -> Catalog:
    """A catalog holding one tokenizer (not a dataset) so REF errors have something to resolve."""
    catalog = Catalog(home / "catalog")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    catalog.register(kind="tokenizer", name="some-tokenizer", files=tmp_path / "tok", config={})
    return catalog


def snapshot(catalog: Catalog) -> list[str]:
    return sorted(a.id for a in catalog.list())


def check_error(args: list[str], home: Path, catalog: Catalog, pattern: str) -> None:
    before = snapshot(catalog)
    proc = run_cli(args, home, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and pattern in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert snapshot(catalog) == before


def test_url_list_without_named_columns(home: Path, seeded: Catalog, tmp_path: Path) -> None:
    pq.write_table(pa.table({"link": ["http://127.0.0.1:9/x.jpg"], "text": ["x"]}), tmp_path / "urls.parquet")
    check_error(["run", "ingest", "--source", str(tmp_path / "urls.parquet")], home, seeded, "has no column 'url'")


def test_empty_source(home: Path, seeded: Catalog, tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("url,caption\n")
    check_error(["run", "ingest", "--source", str(tmp_path / "empty.csv")], home, seeded, "no rows with a URL")
    check_error(["run", "ingest", "--source", "builtin:shapes?n=0"], home, seeded, "n")


def test_unknown_family_and_ref(home: Path, seeded: Catalog) -> None:
    check_error(["run", "train", "--family", "vilbert", "--data", "some-tokenizer"], home, seeded, "unknown family 'vilbert'")
    check_error(["run", "eval", "--model", "nope", "--data", "nope"], home, seeded, "unknown artifact reference 'nope'")
    check_error(["catalog", "show", "deadbeef"], home, seeded, "unknown artifact reference 'deadbeef'")


def test_data_ref_that_is_not_a_dataset(home: Path, seeded: Catalog) -> None:
    check_error(["run", "train", "--family", "clip", "--data", "some-tokenizer"], home, seeded, "is a tokenizer, not a dataset")


def test_bad_config_values(home: Path, seeded: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_error(["run", "train", "--family", "clip", "--data", "some-tokenizer", "--set", "batch_size=-4"], home, seeded,
                "field 'batch_size'")
    check_error(["run", "train", "--family", "clip", "--data", "some-tokenizer", "--set", "lr=fast"], home, seeded, "field 'lr'")
    # the training-at-scale and tracking fields are checked before any stage (no tokenizer trained, nothing registered)
    for setting, pattern in (("precision=fp16", "fp16 needs a GPU"), ("tracking=[wandb]", "field 'tracking.0'"),
                             ("parallel=fsdp", "family 'unit' cannot shard with fsdp")):
        family = "unit" if setting.startswith("parallel") else "clip"
        check_error(["run", "train", "--family", family, "--data", "some-tokenizer", "--set", setting], home, seeded,
                    pattern)
    monkeypatch.setenv("VLFORGE_MLFLOW_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    check_error(["run", "train", "--family", "clip", "--data", "some-tokenizer", "--set", "tracking=[mlflow]"], home,
                seeded, "127.0.0.1:9")
    (tmp_path / "bad.yaml").write_text("crawl:\n  image_size: big\n")
    check_error(["run", "pipeline", "--config", str(tmp_path / "bad.yaml")], home, seeded, "field 'crawl.image_size'")
    (tmp_path / "neg.yaml").write_text("train:\n  overrides: {batch_size: -1}\n")
    check_error(["run", "pipeline", "--config", str(tmp_path / "neg.yaml")], home, seeded, "field 'batch_size'")
    check_error(["run", "ingest", "--source", "builtin:shapes", "--set", "crawl.image_size=big"], home, seeded, "field 'crawl.image_size'")


def test_unreachable_ray_address(home: Path, seeded: Catalog, tmp_path: Path) -> None:
    check_error(["run", "pipeline", "--ray-address", "127.0.0.9:1"], home, seeded, "Ray address '127.0.0.9:1' is unreachable")
    check_error(["run", "train", "--family", "clip", "--data", "x", "--ray-address", "nonsense"], home, seeded, "is not HOST:PORT")


def test_teacher_of_the_wrong_kind_or_family_and_unknown_recipe(home: Path, seeded: Catalog, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    seeded.register(kind="dataset", name="some-dataset", files=tmp_path / "data", config={})
    check_error(["run", "train", "--family", "unified", "--data", "some-dataset", "--teacher", "some-tokenizer"], home,
                seeded, "--teacher 'some-tokenizer' is a tokenizer; family 'unified' takes teachers")
    check_error(["run", "train", "--family", "clip", "--data", "some-dataset", "--teacher", "some-tokenizer"], home, seeded,
                "family 'clip' takes no teacher")
    check_error(["run", "train", "--family", "vlkd", "--data", "some-dataset", "--recipe", "huge"], home, seeded,
                "family 'vlkd' has no recipe 'huge'")
    check_error(["run", "train", "--family", "unimo", "--data", "some-dataset", "--set", "bogus=1"], home, seeded,
                "field 'bogus'")


def test_pipeline_stages_that_cannot_continue_a_model(home: Path, seeded: Catalog, tmp_path: Path) -> None:
    cases = {
        "train: {family: text-lm, then: [{recipe: tiny}]}": "train.then[0]: family 'text-lm' cannot continue a model",
        "train: {family: vl-t5, then: [{recipe: tiny-caption, overrides: {init_from: x}}]}":
            "train.then[0]: overrides.init_from is the previous stage's model",
        "train: {family: vl-t5, then: [{recipe: tiny-caption}, {recipe: tiny-nope}]}":
            "train.then[1]: family 'vl-t5' has no recipe 'tiny-nope'",
        "train: {family: vl-t5, then: [{recipe: tiny-caption, overrides: {lr: fast}}]}":
            "train.then[0]: recipe 'tiny-caption' of family 'vl-t5': field 'lr'",
        "train: {family: vl-t5, then: [{overrides: {lr: 0.1}}]}": "field 'train.then.0.recipe'",
    }
    for i, (text, pattern) in enumerate(cases.items()):
        (tmp_path / f"then{i}.yaml").write_text(text + "\n")
        check_error(["run", "pipeline", "--config", str(tmp_path / f"then{i}.yaml")], home, seeded, pattern)
