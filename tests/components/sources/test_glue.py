"""A GLUE task's TSV files as a text-only dataset: the task's own train/dev splits, pairs joined into one text,
headerless CoLA, STS-B's scores kept as written, one-line errors; the ingest stage writes it without a crawl."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_fixtures import STSB_HEADER, emoji_rows, write_glue_mrpc, write_glue_stsb
from vlforge.catalog import Catalog
from vlforge.components.data.crawl import CrawlConfig
from vlforge.components.data.loader import read_split
from vlforge.components.data.shard import ShardConfig
from vlforge.components.sources.config import SourceConfig
from vlforge.components.sources.glue import PAIR_SEPARATOR, load_glue
from vlforge.components.stages import run_ingest

from vlforge.errors import UserError


def test_mrpc_pairs_and_splits(emoji_dir: Path, tmp_path: Path) -> None:
    folder = write_glue_mrpc(emoji_dir, tmp_path, n=8)
    table, description, fingerprint = load_glue(folder)
    rows = table.to_pylist()
    first = emoji_rows(emoji_dir, 3)
    assert description["glue_task"] == "mrpc" and len(fingerprint) == 64
    assert [r["split"] for r in rows] == ["train"] * 6 + ["validation"] * 2
    assert rows[0]["caption"] == first[0]["caption"] + PAIR_SEPARATOR + first[0]["keywords"] and rows[0]["label"] == "1"
    assert rows[1]["caption"] == first[1]["caption"] + PAIR_SEPARATOR + first[2]["keywords"] and rows[1]["label"] == "0"


def test_headerless_cola(tmp_path: Path) -> None:
    folder = tmp_path / "CoLA"
    folder.mkdir()
    (folder / "train.tsv").write_text("gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
                                      "gj04\t0\t*\tThe more we study verbs, the crazier they get more.\n")
    (folder / "dev.tsv").write_text('cj99\t1\t\tShe said "yes".\n')
    table, description, _ = load_glue(folder)
    assert table.column("label").to_pylist() == ["1", "0", "1"] and description["glue_task"] == "cola"
    assert table.column("caption").to_pylist()[2] == 'She said "yes".'


def test_stsb_sentence_pairs_and_scores(emoji_dir: Path, tmp_path: Path) -> None:
    folder = write_glue_stsb(emoji_dir, tmp_path, n=8)
    table, description, _ = load_glue(folder)
    rows = table.to_pylist()
    first = emoji_rows(emoji_dir, 3)
    assert description["glue_task"] == "stsb"
    assert [r["split"] for r in rows] == ["train"] * 6 + ["validation"] * 2
    assert rows[0]["caption"] == first[0]["caption"] + PAIR_SEPARATOR + first[0]["keywords"]
    assert rows[1]["caption"] == first[1]["caption"] + PAIR_SEPARATOR + first[2]["keywords"]
    # the score as written (three decimals): pairs 0, 1, 2, 4, 5, 6 train, 3 and 7 dev
    assert [r["label"] for r in rows] == ["4.000", "0.450", "4.400", "4.800", "0.250", "4.200", "0.850", "0.650"]


@pytest.mark.parametrize(("name", "files", "message"), [
    ("SQuAD", {"train.tsv": "", "dev.tsv": ""}, "'squad' is not a task the NLU probe fits"),
    ("STS-B", {"train.tsv": STSB_HEADER + "0\tg\tf\ty\t0\ts\ts\ta\tb\t2.5\n1\tg\tf\ty\t1\ts\ts\ta\tb\thigh\n",
               "dev.tsv": ""}, "line 3 has score 'high', not a number from 0 to 5"),
    ("STS-B", {"train.tsv": STSB_HEADER + "0\tg\tf\ty\t0\ts\ts\ta\tb\t5.2\n", "dev.tsv": ""},
     "line 2 has score '5.2', not a number from 0 to 5"),
    ("STS-B", {"train.tsv": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\t1\n", "dev.tsv": ""},
     "has no column 'score'"),
    ("RTE", {"train.tsv": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"}, "has no dev.tsv"),
    ("RTE", {"train.tsv": "index\tsentence1\tlabel\n0\ta\tentailment\n", "dev.tsv": "x\n"}, "has no column 'sentence2'"),
    ("QNLI", {"train.tsv": "index\tquestion\tsentence\tlabel\n0\tq\n", "dev.tsv": ""}, "line 2 has 2 fields"),
])
def test_bad_glue_folders(tmp_path: Path, name: str, files: dict, message: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    for filename, text in files.items():
        (folder / filename).write_text(text)
    with pytest.raises(UserError, match=message):
        load_glue(folder)


def test_ingest_writes_a_text_dataset(emoji_dir: Path, tmp_path: Path, home: Path) -> None:
    catalog = Catalog(home / "catalog")
    folder = write_glue_mrpc(emoji_dir, tmp_path, n=8)
    result = run_ingest(SourceConfig(spec=f"glue:{folder}"), CrawlConfig(), ShardConfig(), catalog)
    out = catalog.path(result.artifact.id)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "text" and manifest["source"]["glue_task"] == "mrpc" and manifest["shards"] == []
    assert {s: v["samples"] for s, v in manifest["splits"].items()} == {"train": 6, "validation": 2}
    assert [s.meta["label"] for s in read_split(out, "validation")] == ["0", "0"]
    assert "Text only" in (out / "README.md").read_text() and result.artifact.name == "MRPC"
    stsb = run_ingest(SourceConfig(spec=f"glue:{write_glue_stsb(emoji_dir, tmp_path, n=8)}"), CrawlConfig(), ShardConfig(),
                      catalog)
    stsb_out = catalog.path(stsb.artifact.id)
    assert json.loads((stsb_out / "manifest.json").read_text())["source"]["glue_task"] == "stsb"
    assert [s.meta["label"] for s in read_split(stsb_out, "validation")] == ["0.850", "0.650"]  # as written
    (folder / "dev.tsv").unlink()
    before = len(catalog.list())
    with pytest.raises(UserError, match="has no dev.tsv"):
        run_ingest(SourceConfig(spec=f"glue:{folder}"), CrawlConfig(), ShardConfig(), catalog)
    assert len(catalog.list()) == before
