"""NLVR2 JSON lines as a source: one sample per image, each pair's statements on its left image, the split from
the identifier, missing images counted and named."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_fixtures import write_nlvr2
from vlforge.components.sources.config import SourceConfig
from vlforge.components.sources.nlvr2 import load_nlvr2
from vlforge.components.stages import resolve_source

from vlforge.errors import UserError


def test_pairs_and_statements(emoji_dir: Path, tmp_path: Path) -> None:
    path, images = write_nlvr2(emoji_dir, tmp_path, pairs=3)
    rows = load_nlvr2(path, images)
    assert rows.table.column("source_key").to_pylist()[:2] == ["dev-7-0-img0.png", "dev-7-0-img1.png"]
    extras = [json.loads(e) for e in rows.table.column("extra").to_pylist()]
    assert [e["nlvr2_side"] for e in extras] == ["left", "right"] * 3 and {e["split"] for e in extras} == {"validation"}
    left = extras[0]["nlvr2"]
    assert [s["identifier"] for s in left] == ["dev-7-0-0", "dev-7-0-1"] and left[1]["label"] is True
    assert left[0]["right"] == "dev-7-0-img1.png" and "nlvr2" not in extras[1]
    src = resolve_source(SourceConfig(spec=f"nlvr2:{path}", images=str(images)))
    assert src.kind == "nlvr2" and src.fingerprint == rows.fingerprint and src.describe["statements"] == 6


def test_train_and_dev_statements_in_one_file_keep_their_splits(emoji_dir: Path, tmp_path: Path) -> None:
    """NLVR2 fine-tuning (``nlvr2_finetune``) needs the train statements beside the evaluated ones: the two files
    concatenated, the images found under one folder."""
    train, _ = write_nlvr2(emoji_dir, tmp_path, pairs=2, split="train")
    dev, _ = write_nlvr2(emoji_dir, tmp_path, pairs=1, split="dev", first=4)
    both = tmp_path / "train_and_dev.json"
    both.write_text(train.read_text() + dev.read_text())
    rows = load_nlvr2(both, tmp_path)
    extras = [json.loads(e) for e in rows.table.column("extra").to_pylist()]
    assert [e["split"] for e in extras] == ["train"] * 4 + ["validation"] * 2
    assert [s["right"] for e in extras for s in e.get("nlvr2", [])] == ["train/train-7-0-img1.png"] * 2 + \
        ["train/train-7-1-img1.png"] * 2 + ["dev/dev-7-0-img1.png"] * 2


def test_missing_images_and_bad_lines(emoji_dir: Path, tmp_path: Path) -> None:
    path, images = write_nlvr2(emoji_dir, tmp_path, pairs=2)
    (images / "dev-7-1-img1.png").unlink()
    with pytest.raises(UserError, match=r"1 of 4 images are missing under .*\(dev-7-1-img1\)"):
        load_nlvr2(path, images)
    (tmp_path / "bad.json").write_text('{"identifier": "dev-1-0-0", "sentence": "x", "label": "maybe"}\n')
    with pytest.raises(UserError, match="has label 'maybe'"):
        load_nlvr2(tmp_path / "bad.json", images)
    (tmp_path / "bad.json").write_text('{"identifier": "dev-1", "sentence": "x", "label": "True"}\n{"a": 1}\n')
    with pytest.raises(UserError, match="line 1 has no identifier"):
        load_nlvr2(tmp_path / "bad.json", images)
