"""Images held in archives as sources: webdataset / img2dataset shards (``wds:``, with their parquet sidecars and
every extra column kept) and hub-style parquet with image bytes (``parquet-images:``); one real ingest of shards."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from benchmark_fixtures import emoji_rows, write_parquet_images, write_wds
from vlforge.catalog import Catalog
from vlforge.components.data.crawl import CrawlConfig
from vlforge.components.data.shard import ShardConfig
from vlforge.components.sources.config import SourceConfig
from vlforge.components.sources.parquet_images import load_parquet_images
from vlforge.components.sources.wds import find_tars, load_wds
from vlforge.components.stages import resolve_source, run_ingest

from vlforge.errors import UserError


def test_tars_by_folder_brace_range_and_glob(emoji_dir: Path, tmp_path: Path) -> None:
    shards = write_wds(emoji_dir, tmp_path / "shards", per_tar=1, names=("00000", "00001", "00002"))
    assert [t.name for t in find_tars(str(shards))] == ["00000.tar", "00001.tar", "00002.tar"]
    assert [t.name for t in find_tars(f"{shards}/{{00000..00001}}.tar")] == ["00000.tar", "00001.tar"]
    assert len(find_tars(f"{shards}/*.tar")) == 3
    src = resolve_source(SourceConfig(spec=f"wds:{shards}"))
    assert src.kind == "wds" and src.name == "shards" and src.describe["tars"] == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="wds source '.*empty' matches no .tar files"):
        resolve_source(SourceConfig(spec=f"wds:{tmp_path / 'empty'}"))


def test_shards_keep_sidecar_columns_and_named_splits(emoji_dir: Path, tmp_path: Path) -> None:
    shards = write_wds(emoji_dir, tmp_path / "shards", per_tar=2, names=("train-000000", "val-000000"))
    rows = load_wds(str(shards), tmp_path / "work")
    first = emoji_rows(emoji_dir, 4)
    assert rows.table.column("caption").to_pylist() == [r["caption"] for r in first]
    assert rows.table.column("source_key").to_pylist()[0] == f"uid-{first[0]['key']}"
    extras = [json.loads(e) for e in rows.table.column("extra").to_pylist()]
    assert [e["split"] for e in extras] == ["train", "train", "validation", "validation"]
    assert extras[1] == {"uid": f"uid-{first[1]['key']}", "clip_score": pytest.approx(0.35), "licence": "apache-2.0",
                         "original_url": f"https://example.test/{first[1]['key']}.png", "split": "train"}
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [f"{i:08d}.png" for i in range(4)]


def test_parquet_images_struct_and_binary(emoji_dir: Path, tmp_path: Path) -> None:
    first = emoji_rows(emoji_dir, 3)
    for binary in (False, True):
        path = write_parquet_images(emoji_dir, tmp_path / f"b{binary}" / "train.parquet", n=3, binary=binary)
        rows = load_parquet_images(path, tmp_path / f"work{binary}", caption_col="text", label_col="category")
        assert rows.table.column("caption").to_pylist() == [r["caption"] for r in first]
        assert rows.table.column("label").to_pylist() == [r["category"] for r in first]
        assert (tmp_path / f"work{binary}" / "00000000.png").read_bytes() == (emoji_dir / first[0]["path"]).read_bytes()
    src = resolve_source(SourceConfig(spec=f"parquet-images:{path}", caption_col="text"))
    assert src.kind == "parquet-images" and src.describe["image_column"] == "image"
    with pytest.raises(UserError, match="has no column 'caption'"):
        resolve_source(SourceConfig(spec=f"parquet-images:{path}"))
    pq.write_table(pa.table({"text": ["a"], "n": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(UserError, match="needs one image column .* found: none"):
        resolve_source(SourceConfig(spec=f"parquet-images:{tmp_path / 'plain.parquet'}", caption_col="text"))


def test_ingest_of_existing_shards(emoji_dir: Path, tmp_path: Path, home: Path) -> None:
    catalog = Catalog(home / "catalog")
    shards = write_wds(emoji_dir, tmp_path / "shards", per_tar=3, names=("train-000000", "test-000000"))
    crawl = CrawlConfig(image_size=16, processes=1, threads=2)
    result = run_ingest(SourceConfig(spec=f"wds:{shards}"), crawl, ShardConfig(), catalog)
    out = catalog.path(result.artifact.id)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == 6 and {s: v["samples"] for s, v in manifest["splits"].items()} == \
        {"train": 3, "validation": 0, "test": 3}
    index = pq.read_table(out / "samples.parquet").to_pylist()
    assert sorted(r["clip_score"] for r in index) == pytest.approx([0.25, 0.25, 0.35, 0.35, 0.45, 0.45])
    assert {r["uid"] for r in index} == {f"uid-{r['key']}" for r in emoji_rows(emoji_dir, 6)}
    assert result.artifact.metrics["test_samples"] == 3
    before = len(catalog.list())
    (tmp_path / "none").mkdir()
    with pytest.raises(UserError, match="matches no .tar files"):
        run_ingest(SourceConfig(spec=f"wds:{tmp_path / 'none'}"), crawl, ShardConfig(), catalog)
    assert len(catalog.list()) == before


def test_unreadable_shards_and_rows_without_bytes(emoji_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "00000.tar").write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(UserError, match=r"wds shard '.*00000.tar' is not a readable tar \(invalid header\)"):
        load_wds(str(tmp_path / "bad"), tmp_path / "work")
    path = write_parquet_images(emoji_dir, tmp_path / "p" / "train.parquet", n=3, binary=True)
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    pq.write_table(table.set_column(0, "image", pa.array([images[0], None, b""], pa.binary())), path)
    rows = load_parquet_images(path, tmp_path / "w", caption_col="text")
    assert rows.table.num_rows == 1 and rows.description["rows_without_image"] == 2
