"""`vlforge run filter` through the CLI: the JSON contract with the funnel, and bad input as one-line errors."""
import json
import os
import subprocess
from pathlib import Path

import pytest
from cli_harness import run_cli
from test_filter import build_dataset
from vlforge.catalog import Catalog

def vlforge(args: list[str], home: Path) -> subprocess.CompletedProcess:
    return run_cli(args, home, 600)


@pytest.fixture
def toy_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    build_dataset(tmp_path / "ds")
    Catalog(home / "catalog").register(kind="dataset", name="toy", files=tmp_path / "ds", config={})
    return home


@pytest.mark.slow
def test_filter_json_reports_the_funnel(toy_home: Path, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text("min_caption_words: 2\nnear_duplicate_distance: 4\n")
    proc = vlforge(["run", "filter", "--data", "toy", "--config", str(tmp_path / "rules.yaml"), "--json"], toy_home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["samples"] == 20 and out["input_samples"] == 29 and out["cached"] == {"dataset": False}
    assert out["funnel"] == {"undecodable": 1, "caption_empty": 2, "caption_not_text": 1, "exact_duplicate": 3,
                             "near_duplicate": 2}
    art = Catalog(toy_home / "catalog").get(out["dataset"])
    assert art.name == "toy-filtered" and art.parents == [Catalog(toy_home / "catalog").get("toy").id]


@pytest.mark.parametrize(("config", "message"), [
    ("min_side: big\n", "field 'min_side'"),
    ("clip_threshold: 0.3\n", "clip_threshold/clip_top_fraction need clip_model"),
    ("clip_model: nope\nclip_threshold: 0.3\n", "nope"),
    ("- a list\n", "must hold a mapping"),
])
def test_bad_filter_config_is_a_one_line_error(config: str, message: str, toy_home: Path, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(config)
    proc = vlforge(["run", "filter", "--data", "toy", "--config", str(tmp_path / "rules.yaml"), "--json"], toy_home)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert [a.name for a in Catalog(toy_home / "catalog").list()] == ["toy"]
