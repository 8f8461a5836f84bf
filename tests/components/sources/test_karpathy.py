"""The Karpathy layout (COCO / Flickr30k ``dataset_*.json``) as a source: several captions per image, the file's
own splits, missing images counted and named; one real crawl + shard of it."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from benchmark_fixtures import emoji_rows, write_karpathy
from vlforge.components.data.crawl import CrawlConfig, crawl
from vlforge.components.data.shard import ShardConfig, shard_crawl
from vlforge.components.sources.config import SourceConfig
from vlforge.components.sources.karpathy import load_karpathy
from vlforge.components.stages import resolve_source

from vlforge.errors import UserError


def test_rows_carry_every_caption_and_the_file_split(emoji_dir: Path, tmp_path: Path) -> None:
    path = write_karpathy(emoji_dir, tmp_path, n=8)
    rows = load_karpathy(path)
    first = emoji_rows(emoji_dir, 8)
    assert rows.table.column("caption").to_pylist() == [r["caption"] for r in first]
    extras = [json.loads(e) for e in rows.table.column("extra").to_pylist()]
    assert extras[0]["captions"] == [first[0]["caption"], first[0]["keywords"]]
    assert [e["split"] for e in extras[:4]] == ["train", "train", "validation", "test"]
    assert [e["benchmark_split"] for e in extras[:4]] == ["train", "restval", "val", "test"]
    assert rows.description["captions"] == 16 and len(rows.files) == 8
    src = resolve_source(SourceConfig(spec=f"karpathy:{path}"))
    assert (src.kind, src.name, src.fingerprint) == ("karpathy", "dataset_emoji", rows.fingerprint)


def test_images_root_is_the_files_folder_unless_given(emoji_dir: Path, tmp_path: Path) -> None:
    path = write_karpathy(emoji_dir, tmp_path / "data", n=4)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "data" / "images").rename(moved / "images")
    with pytest.raises(UserError, match=r"4 of 4 images are missing under .*data.* \(images/"):
        load_karpathy(path)
    assert load_karpathy(path, moved).table.num_rows == 4
    src = resolve_source(SourceConfig(spec=f"karpathy:{path}", images=str(moved)))
    assert src.describe["images"] == str(moved)


def test_missing_images_are_counted_and_named(emoji_dir: Path, tmp_path: Path) -> None:
    path = write_karpathy(emoji_dir, tmp_path, n=6)
    gone = sorted((tmp_path / "images").iterdir())[:4]
    for image in gone:
        image.unlink()
    with pytest.raises(UserError) as err:
        load_karpathy(path)
    message = str(err.value)
    assert "4 of 6 images are missing" in message and "\n" not in message
    assert all(f"images/{p.name}" in message for p in gone[:3]) and message.endswith(", ...)")


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not valid JSON"),
    ('{"images": []}', "has no 'images' list"),
    ('{"images": [{"filename": "a.png", "split": "dev"}]}', "has split 'dev'"),
])
def test_bad_karpathy_files(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "k.json").write_text(content)
    with pytest.raises(UserError, match=message):
        resolve_source(SourceConfig(spec=f"karpathy:{tmp_path / 'k.json'}"))


def test_crawled_karpathy_keeps_splits_and_captions(emoji_dir: Path, tmp_path: Path) -> None:
    path = write_karpathy(emoji_dir, tmp_path / "k", n=8)
    result = crawl(load_karpathy(path), tmp_path / "crawl", CrawlConfig(image_size=16, processes=1, threads=2))
    manifest = shard_crawl(result, tmp_path / "ds", ShardConfig(), {"kind": "karpathy"})
    assert {s: v["samples"] for s, v in manifest["splits"].items()} == {"train": 4, "validation": 2, "test": 2}
    assert manifest["samples"] == 8 and manifest["captions"] == 16
    index = pq.read_table(tmp_path / "ds" / "samples.parquet").to_pylist()
    first = emoji_rows(emoji_dir, 8)
    by_caption = {r["caption"]: r for r in index}
    for row in first:
        assert by_caption[row["caption"]]["captions"] == [row["caption"], row["keywords"]]
    assert sorted({r["benchmark_split"] for r in index}) == ["restval", "test", "train", "val"]
