"""URL lists on fsspec filesystems and local image folders as sources."""
import io
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from vlforge.components.pipeline_config import SourceConfig
from vlforge.components.sources.tables import (
    is_remote,
    load_image_folder,
    load_url_list,
)
from vlforge.components.stages import resolve_source

from vlforge.errors import UserError


def test_url_list_on_an_fsspec_filesystem() -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"url": ["http://example.test/a.jpg", ""], "caption": ["a cat", "none"]}), buf)
    with fsspec.open("memory://vlforge-test/urls.parquet", "wb") as f:
        f.write(buf.getvalue())
    rows = load_url_list("memory://vlforge-test/urls.parquet")
    assert rows.table.column("url").to_pylist() == ["http://example.test/a.jpg"]
    assert rows.description["empty_urls"] == 1 and len(rows.fingerprint) == 64
    src = resolve_source(SourceConfig(spec="memory://vlforge-test/urls.parquet"))
    assert src.kind == "url-list" and src.name == "urls" and src.fingerprint == rows.fingerprint


def test_file_url_reads_like_a_path(tmp_path: Path) -> None:
    (tmp_path / "u.csv").write_text("url,caption\nhttp://example.test/x.png,x\n")
    assert is_remote(f"file://{tmp_path}/u.csv") and not is_remote(str(tmp_path / "u.csv"))
    assert load_url_list(f"file://{tmp_path}/u.csv").table.num_rows == 1


@pytest.mark.parametrize(("spec", "message"), [
    ("memory://vlforge-test/absent.csv", "does not exist"),
    ("nosuchproto://bucket/urls.csv", "cannot be opened"),
])
def test_bad_remote_sources_are_user_errors(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_url_list(spec)


def test_image_folder_with_caption_sidecars(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "imgs" / "red_square.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "imgs" / "sub" / "b.jpg")
    (tmp_path / "imgs" / "sub" / "b.txt").write_text("a blue square\n")
    (tmp_path / "imgs" / "notes.md").write_text("ignored")
    rows = load_image_folder(tmp_path / "imgs")
    assert rows.table.column("caption").to_pylist() == ["red square", "a blue square"]
    assert rows.table.column("source_key").to_pylist() == ["red_square.png", "sub/b.jpg"]
    assert sorted(rows.files) == rows.table.column("url").to_pylist()
    src = resolve_source(SourceConfig(spec=str(tmp_path / "imgs")))
    assert src.kind == "folder" and src.fingerprint == rows.fingerprint
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        load_image_folder(tmp_path / "empty")


def url_list(path: Path, prefix: str, n: int) -> Path:
    pq.write_table(pa.table({"url": [f"http://example.test/{prefix}/{i}.jpg" for i in range(n)],
                             "caption": [f"{prefix} {i}" for i in range(n)]}), path)
    return path


@pytest.mark.parametrize(("weights", "taken"), [((3, 1), (60, 20)), ((1, 1), (20, 20)), ((1, 3), (6, 20))])
def test_mix_takes_shares_by_weight_without_repeats(tmp_path: Path, weights: tuple, taken: tuple) -> None:
    a, b = url_list(tmp_path / "a.parquet", "a", 60), url_list(tmp_path / "b.parquet", "b", 20)
    cfg = SourceConfig(spec="mix", mix=[{"spec": str(a), "weight": weights[0]}, {"spec": str(b), "weight": weights[1]}])
    src = resolve_source(cfg)
    parts = src.describe["parts"]
    assert src.kind == "mix" and [p["rows_taken"] for p in parts] == list(taken)
    from vlforge.components.stages import load_source_rows

    rows = load_source_rows(cfg, "mix", "mix")
    urls = rows.table.column("url").to_pylist()
    assert len(urls) == len(set(urls)) == sum(taken)
    assert sum(u.split("/")[3] == "a" for u in urls) == taken[0]
    assert load_source_rows(cfg, "mix", "mix").table.equals(rows.table)  # seeded: the same mix every time
    other = SourceConfig(spec="mix", mix_seed=1, mix=cfg.mix)
    assert resolve_source(other).fingerprint != src.fingerprint


def test_mix_rejects_builtin_parts_and_an_empty_mix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="only URL lists"):
        resolve_source(SourceConfig(spec="mix", mix=[{"spec": "builtin:shapes"}]))
    with pytest.raises(UserError, match="needs a list of parts"):
        resolve_source(SourceConfig(spec="mix"))
