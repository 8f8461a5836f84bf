"""ImageNet-style class folders as a labelled source: class names from the folders or a classnames file, splits
from split folders, prompt templates carried into the description (the manifest's source)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_fixtures import write_class_folders
from vlforge.components.sources.config import SourceConfig
from vlforge.components.sources.imagefolder import load_class_folders
from vlforge.components.stages import resolve_source

from vlforge.errors import UserError


def test_class_folders_by_emoji_category(emoji_dir: Path, tmp_path: Path) -> None:
    root = write_class_folders(emoji_dir, tmp_path / "cats", per_class=2)
    rows = load_class_folders(root)
    labels = rows.table.column("label").to_pylist()
    assert len(labels) == 18 and labels[:2] == ["Activities", "Activities"]
    assert rows.description["classnames"][:3] == ["Activities", "Animals and Nature", "Flags"]
    assert rows.table.column("caption").to_pylist() == labels
    assert rows.table.column("source_key").to_pylist()[0].startswith("Activities/")
    extras = [json.loads(e) for e in rows.table.column("extra").to_pylist()]
    assert "split" not in extras[0] and extras[2]["class_folder"] == "Animals_and_Nature"
    src = resolve_source(SourceConfig(spec=f"imagefolder:{root}"))
    assert (src.kind, src.name, src.fingerprint) == ("imagefolder", "cats", rows.fingerprint)


def test_split_folders_keep_their_split(emoji_dir: Path, tmp_path: Path) -> None:
    root = write_class_folders(emoji_dir, tmp_path / "cats", per_class=2, classes=3, splits=("train", "val"))
    rows = load_class_folders(root)
    splits = [json.loads(e)["split"] for e in rows.table.column("extra").to_pylist()]
    assert splits == ["train"] * 3 + ["validation"] * 3
    assert rows.table.column("source_key").to_pylist()[0].startswith("train/Activities/")


def test_classnames_and_templates_files(emoji_dir: Path, tmp_path: Path) -> None:
    root = write_class_folders(emoji_dir, tmp_path / "cats", per_class=1, classes=3)
    (tmp_path / "names.txt").write_text("sport\nanimal\nflag\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\nan emoji of a {}\n")
    rows = load_class_folders(root, tmp_path / "names.txt", tmp_path / "templates.txt")
    assert rows.table.column("label").to_pylist() == ["sport", "animal", "flag"]
    assert rows.description["templates"] == ["a photo of a {}.", "an emoji of a {}"]
    other = load_class_folders(root, tmp_path / "names.txt")
    assert other.fingerprint != rows.fingerprint  # the templates are part of the dataset
    (tmp_path / "two.txt").write_text("sport\nanimal\n")
    with pytest.raises(UserError, match="names 2 classes but .* has 3 class folders"):
        load_class_folders(root, tmp_path / "two.txt")


def test_bad_layouts_are_one_line_errors(emoji_dir: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes((emoji_dir / "images" / "google_1f004.png").read_bytes())
    with pytest.raises(UserError, match="has no class subfolders"):
        resolve_source(SourceConfig(spec=f"imagefolder:{flat}"))
    (flat / "empty_class").mkdir()
    with pytest.raises(UserError, match="empty_class' holds no images"):
        load_class_folders(flat)
    (tmp_path / "bad.txt").write_text("a photo of a cat\n")
    root = write_class_folders(emoji_dir, tmp_path / "cats", per_class=1, classes=2)
    with pytest.raises(UserError, match=r"line 1: template 'a photo of a cat' has no \{\}"):
        resolve_source(SourceConfig(spec=f"imagefolder:{root}", templates=str(tmp_path / "bad.txt")))
    with pytest.raises(UserError, match="--templates go with an imagefolder: source"):
        resolve_source(SourceConfig(spec=str(flat), templates=str(tmp_path / "bad.txt")))
    with pytest.raises(UserError, match="--images goes with a karpathy:"):
        resolve_source(SourceConfig(spec=f"imagefolder:{root}", images=str(root)))
