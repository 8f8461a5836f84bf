"""The benchmark layouts through the real CLI, end to end: `vlforge run ingest --source karpathy:FILE --images DIR
--json` prints the images (``samples``) and their ``captions``; bad layouts are one line, exit 2, nothing
registered."""
from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_fixtures import write_karpathy
from cli_harness import cli_json, run_cli
from vlforge.catalog import Catalog

SMALL = ["--set", "crawl.image_size=16", "--set", "crawl.processes=1", "--set", "crawl.threads=2"]


def check_refused(args: list[str], home: Path, pattern: str) -> None:
    before = sorted(a.id for a in Catalog(home / "catalog").list())
    proc = run_cli(args, home, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and pattern in lines[0], proc.stderr[-2000:]
    assert sorted(a.id for a in Catalog(home / "catalog").list()) == before


@pytest.mark.slow
def test_karpathy_ingest_json_and_bad_layouts(emoji_dir: Path, tmp_path: Path, home: Path) -> None:
    path = write_karpathy(emoji_dir, tmp_path / "k", n=8)
    images = tmp_path / "k" / "moved"
    images.mkdir()
    (tmp_path / "k" / "images").rename(images / "images")
    check_refused(["run", "ingest", "--source", f"karpathy:{path}"], home, "8 of 8 images are missing")
    out = cli_json(["run", "ingest", "--source", f"karpathy:{path}", "--images", str(images), *SMALL], home)
    assert out["samples"] == 8 and out["captions"] == 16 and out["failures"] == {}
    art = Catalog(home / "catalog").get(out["dataset"])
    assert art.name == "dataset_emoji" and art.metrics["test_samples"] == 2
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(next((images / "images").iterdir()).read_bytes())
    check_refused(["run", "ingest", "--source", f"imagefolder:{tmp_path / 'flat'}"], home, "has no class subfolders")
    check_refused(["run", "ingest", "--source", f"wds:{tmp_path / 'flat'}"], home, "matches no .tar files")
