"""The dataset card: figures, grid, funnel and counts, written deterministically into the dataset folder."""
import hashlib
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from vlforge.components.data.card import CARD_FILES, funnel_rows, write_dataset_card
from vlforge.components.data.shard import _SplitWriter


def make_dataset(out: Path, n: int = 10) -> dict:
    out.mkdir(parents=True)
    writer = _SplitWriter(out, "train", per_shard=4)
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (i * 20, 100, 50)).save(buf, "JPEG")
        caption = " ".join(["word"] * (i + 1))
        shard = writer.write(f"k{i:03d}", {"jpg": buf.getvalue(), "txt": caption.encode()})
        rows.append({"key": f"k{i:03d}", "split": "train", "shard": shard, "caption": caption, "width": 32, "height": 32,
                     "original_width": 100 + 50 * i, "original_height": 80})
    shards = writer.close()
    pq.write_table(pa.Table.from_pylist(rows), out / "samples.parquet")
    return {"samples": n, "attempted": n + 7, "failures_by_reason": {"not_found": 5, "blocked_by_policy": 2},
            "splits": {"train": {"samples": n, "shards": [s["shard"] for s in shards]}, "validation": {"samples": 0, "shards": []}},
            "labels": [], "has_facts": False}


def test_card_files_and_content(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "ds")
    md = write_dataset_card(tmp_path / "ds", "toy", "urls.parquet (url-list)", manifest)
    for name in CARD_FILES:
        assert (tmp_path / "ds" / name).is_file(), name
    assert "| not_found | 5 |" in md and "| blocked_by_policy | 2 |" in md
    assert "| rows in the source | 0 | 17 |" in md and "| blocked_by_policy | 2 | 10 |" in md  # funnel ends at samples
    assert "Caption length (words): min 1, median 6, max 10." in md
    assert "longer side (px): min 100, median 350, max 550." in md
    grid = Image.open(tmp_path / "ds" / "card_grid.png")
    assert grid.size == (4 * 128, 3 * (128 + 42))  # 10 samples in rows of 4
    assert grid.getpixel((64, 64)) != (255, 255, 255)  # the first tile holds an image
    again = make_dataset(tmp_path / "ds2")
    write_dataset_card(tmp_path / "ds2", "toy", "urls.parquet (url-list)", again)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    assert [digest(tmp_path / "ds" / f) for f in CARD_FILES] == [digest(tmp_path / "ds2" / f) for f in CARD_FILES]


def test_funnel_of_a_filtered_dataset_comes_from_its_manifest() -> None:
    manifest = {"funnel": [{"rule": "input", "removed": 0, "remaining": 9}, {"rule": "exact_duplicate", "removed": 2, "remaining": 7}]}
    assert funnel_rows(manifest) == [("input", 0, 9), ("exact_duplicate", 2, 7)]
