"""A benchmark layout's extra fields through the data stages: the shard stage puts a sample in the split its source
names and keeps its several captions (``captions`` column, the first as ``caption``) and other fields; training
draws one caption per read, reproducibly; the filter stage keeps the extra split and columns and filters on them."""
from __future__ import annotations

import io
import json
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from crawl_folders import write_crawl_folder
from PIL import Image
from vlforge.components.data.filter import FilterConfig, filter_dataset
from vlforge.components.data.loader import read_split, split_shards, training_stream
from vlforge.components.data.shard import ShardConfig, shard_crawl

from vlforge.errors import UserError

SPLIT_OF = ("train", "validation", "test")


def png(i: int) -> bytes:
    blocks = np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blocks).resize((32, 32), Image.Resampling.BILINEAR).save(buf, "PNG")
    return buf.getvalue()


def write_dataset(tmp: Path, n: int = 9) -> tuple[Path, dict]:
    """n samples in an img2dataset-style crawl folder, sample i with captions [name i, words of i, third of i] and
    split train / validation / test by i mod 3, sharded by ``shard_crawl``."""
    samples = []
    for i in range(n):
        captions = [f"thing number {i}", f"words about thing {i}", f"third caption of {i}"]
        extra = {"split": SPLIT_OF[i % 3], "captions": captions, "image_id": 100 + i}
        samples.append((png(i), captions[0], {"source_key": f"s{i}", "url": f"local:{i}.png", "label": "", "facts": "",
                                              "extra": json.dumps(extra)}))
    crawl = write_crawl_folder(tmp / "crawl", samples)
    return tmp / "ds", shard_crawl(crawl, tmp / "ds", ShardConfig(samples_per_shard=4), {"kind": "test"})


def test_source_splits_and_captions_are_kept(tmp_path: Path) -> None:
    ds, manifest = write_dataset(tmp_path)
    assert list(manifest["splits"]) == ["train", "validation", "test"]
    assert {s: v["samples"] for s, v in manifest["splits"].items()} == {"train": 3, "validation": 3, "test": 3}
    assert manifest["captions"] == 27
    index = {r["image_id"]: r for r in pq.read_table(ds / "samples.parquet").to_pylist()}
    assert index[104]["split"] == "validation" and index[104]["caption"] == "thing number 4"
    assert index[104]["captions"] == ["thing number 4", "words about thing 4", "third caption of 4"]
    test = read_split(ds, "test")
    assert [s.meta["image_id"] for s in test] == [102, 105, 108] and len(test[0].meta["captions"]) == 3


def test_training_draws_one_caption_per_read_reproducibly(tmp_path: Path) -> None:
    ds, _ = write_dataset(tmp_path)
    shards = split_shards(ds, "train")

    def drawn() -> list[tuple[str, str]]:
        return [(s.meta["image_id"], s.caption) for s in islice(training_stream(shards, 0, 1, 7, 2), 60)]

    first = drawn()
    assert first == drawn()
    per_image = Counter(image for image, _ in first)
    assert set(per_image) == {100, 103, 106}
    assert all(len({c for i, c in first if i == image}) == 3 for image in per_image)  # every caption gets drawn
    assert all(c.endswith(str(i - 100)) for i, c in first)


def test_filter_keeps_the_extra_split_and_columns(tmp_path: Path) -> None:
    ds, _ = write_dataset(tmp_path)
    manifest = filter_dataset(ds, tmp_path / "out", FilterConfig(samples_per_shard=4))
    assert manifest["samples"] == 9 and manifest["splits"]["test"]["samples"] == 3 and manifest["captions"] == 27
    rows = pq.read_table(tmp_path / "out" / "samples.parquet").to_pylist()
    assert {r["image_id"]: len(r["captions"]) for r in rows} == {100 + i: 3 for i in range(9)}


def test_filter_on_a_source_column(tmp_path: Path) -> None:
    ds, _ = write_dataset(tmp_path)
    manifest = filter_dataset(ds, tmp_path / "out", FilterConfig(min_columns={"image_id": 104}))
    assert manifest["removed_by_rule"]["column_below_min"] == 4 and manifest["samples"] == 5
    kept = pq.read_table(tmp_path / "out" / "samples.parquet").column("image_id").to_pylist()
    assert sorted(kept) == [104, 105, 106, 107, 108]
    with pytest.raises(UserError, match="no numeric column 'clip_score' .*captions"):
        filter_dataset(ds, tmp_path / "out2", FilterConfig(min_columns={"clip_score": 0.3}))
