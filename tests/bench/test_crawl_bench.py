"""bench/crawl_bench.py --tiny end to end: the real ingest stage and a bare img2dataset on a loopback URL list.

Slow: three crawls, each paying an interpreter start and img2dataset's import in the crawl processes (about 25 s
on a quiet 2-core machine, minutes on a loaded one). No timing assertions: only the JSON's shape and consistency."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "crawl_bench.py"


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _check_summary(block: dict, urls: int, repeat: int) -> None:
    for key in ("median_images_per_s", "min_images_per_s", "max_images_per_s", "median_wall_s", "median_cpu_s_per_1000_images"):
        assert isinstance(block[key], float) and block[key] > 0, key
    assert block["min_images_per_s"] <= block["median_images_per_s"] <= block["max_images_per_s"]
    assert len(block["runs"]) == repeat and block["succeeded"] == [r["succeeded"] for r in block["runs"]]
    for run in block["runs"]:
        assert 0 < run["succeeded"] <= urls
        assert run["wall_s"] > 0 and run["images_per_s"] == pytest.approx(run["succeeded"] / run["wall_s"])
        assert run["cpu_s"] > 0


@pytest.mark.slow
@pytest.mark.bench
def test_crawl_bench_tiny(tmp_path: Path) -> None:
    proc = _run("--tiny", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "crawl.json").read_text())
    assert not list(tmp_path.glob(".crawl.json.*"))  # atomic write left no temporary file
    urls, repeat = data["settings"]["urls"], data["repeat"]
    assert data["bench"] == "crawl" and data["tiny"] is True and urls == 150 and repeat == 1
    for key in ("processes", "threads", "image_size", "samples_per_crawl_shard"):
        assert isinstance(data["settings"][key], int) and data["settings"][key] > 0
    assert data["versions"]["img2dataset"] and data["versions"]["webdataset"]
    assert len(data["load_avg_start"]) == 3 and len(data["load_avg_end"]) == 3
    _check_summary(data["ours"], urls, repeat)
    _check_summary(data["peer"], urls, repeat)
    assert data["ratio_ours_over_peer"] == pytest.approx(
        data["ours"]["median_images_per_s"] / data["peer"]["median_images_per_s"], rel=1e-2)
    assert data["cpu_ratio_ours_over_peer"] == pytest.approx(
        data["ours"]["median_cpu_s_per_1000_images"] / data["peer"]["median_cpu_s_per_1000_images"], rel=1e-2)
    assert data["settings"]["listen_backlog"] == 1024
    # every loopback URL is a valid image: both crawlers get all of them
    assert data["same_successes"] is True
    assert data["ours"]["succeeded"] == data["peer"]["succeeded"] == [urls] * repeat
    ours_run = data["ours"]["runs"][0]
    assert ours_run["samples"] == urls and ours_run["failed"] == 0
    split, split_cpu = data["ours_split_median_s"], data["ours_split_median_cpu_s"]
    assert list(split) == list(split_cpu)
    for part in ("ingest_key", "crawl", "crawl/img2dataset_child", "crawl/shard_during_crawl", "shard_final",
                 "write_dataset_card", "register"):
        assert isinstance(split[part], float) and split[part] >= 0, part
        assert isinstance(split_cpu[part], float) and split_cpu[part] >= 0, part
    assert list(split).index("crawl") < list(split).index("crawl/img2dataset_child")  # parents before what they call
    assert split["crawl/img2dataset_child"] <= split["crawl"] <= data["ours"]["median_wall_s"] * 1.01
    assert data["ours_crawl_only_images_per_s"] > 0
    scaling = data["scaling"]
    for procs in ("processes_1", "processes_2"):
        _check_summary(scaling[procs], urls, repeat)
    assert scaling["ratio_2_over_1"] == pytest.approx(
        scaling["processes_2"]["median_images_per_s"] / scaling["processes_1"]["median_images_per_s"], rel=1e-2)
    assert "| ratio ours / peer" in proc.stdout


def test_crawl_bench_bad_argument(tmp_path: Path) -> None:
    proc = _run("--urls", "0", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--urls" in proc.stderr
    assert not (tmp_path / "crawl.json").exists()
