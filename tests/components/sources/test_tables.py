import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from vlforge.components.sources.tables import (
    load_local_table,
    load_url_list,
    sniff_table_kind,
)

from vlforge.errors import UserError

ROWS = [{"url": "http://example.test/a.jpg", "caption": "a cat"}, {"url": "http://example.test/b.jpg", "caption": "a dog"},
        {"url": "", "caption": "no url"}]


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        cols = list(rows[0])
        path.write_text(sep.join(cols) + "\n" + "".join(sep.join(str(r[c]) for c in cols) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv", ".jsonl"])
def test_url_list_formats(tmp_path: Path, suffix: str) -> None:
    rows = load_url_list(write(tmp_path / f"urls{suffix}", ROWS))
    assert rows.table.column("url").to_pylist() == ["http://example.test/a.jpg", "http://example.test/b.jpg"]
    assert rows.table.column("caption").to_pylist() == ["a cat", "a dog"]
    assert rows.description["empty_urls"] == 1
    keys = rows.table.column("source_key").to_pylist()
    assert len(set(keys)) == 2 and keys == load_url_list(tmp_path / f"urls{suffix}").table.column("source_key").to_pylist()


def test_url_list_custom_columns_and_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "laion.parquet", [{"URL": "http://x.test/1.jpg", "TEXT": "t"}])
    assert load_url_list(path, url_col="URL", caption_col="TEXT").table.num_rows == 1
    with pytest.raises(UserError, match=r"has no column 'url' \(columns: URL, TEXT\)"):
        load_url_list(path)
    with pytest.raises(UserError, match="does not exist"):
        load_url_list(tmp_path / "missing.csv")
    with pytest.raises(UserError, match="unknown format"):
        load_url_list(write(tmp_path / "urls.txt", ROWS))
    empty = tmp_path / "empty.csv"
    empty.write_text("url,caption\n")
    with pytest.raises(UserError, match="no rows with a URL"):
        load_url_list(empty)


def test_local_table(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.png").write_bytes(b"x")
    table = write(tmp_path / "pairs.parquet", [{"path": "img/x.png", "caption": "an x", "cls": "letter"}])
    assert sniff_table_kind(table) == "local"
    rows = load_local_table(table, label_col="cls")
    assert rows.table.column("label").to_pylist() == ["letter"]
    assert list(rows.files.values()) == [(tmp_path / "img" / "x.png").resolve()]
    before = rows.fingerprint
    (tmp_path / "img" / "x.png").write_bytes(b"changed!")
    assert load_local_table(table, label_col="cls").fingerprint != before  # image changes change the fingerprint
    bad = write(tmp_path / "bad.parquet", [{"path": "img/none.png", "caption": "?"}])
    with pytest.raises(UserError, match="image file 'img/none.png' does not exist"):
        load_local_table(bad)
