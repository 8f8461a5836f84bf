"""bench/pipeline_bench.py --tiny: the real CLI twice (first run, all-cached run) on a 200-scene, 10-step config and
the single-process training peer; the JSON is well formed (no timing assertions)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = {"dataset", "tokenizer", "model", "eval"}


@pytest.mark.slow
@pytest.mark.bench
def test_pipeline_bench_tiny(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pipeline_bench.py"), "--tiny", "--out", str(tmp_path)],
                          check=False, capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| ratio Ray / peer |" in proc.stdout
    result = json.loads((tmp_path / "pipeline.json").read_text())
    assert result["config"] == "tiny" and result["peer_steps"] == 5
    assert set(result["stage_seconds"]) == STAGES and all(v > 0 for v in result["stage_seconds"].values())
    for key in ("first_run_wall_s", "cached_run_wall_s", "cached_over_first", "train_samples_per_s_ray_2_workers",
                "train_samples_per_s_peer_single_process", "ray_over_peer"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["first_run_wall_s"] > sum(result["stage_seconds"].values())
    assert result["cached_over_first"] == pytest.approx(result["cached_run_wall_s"] / result["first_run_wall_s"])
    assert result["ray_over_peer"] == pytest.approx(
        result["train_samples_per_s_ray_2_workers"] / result["train_samples_per_s_peer_single_process"])
    assert {"i2t_r1", "t2i_r1"} <= set(result["metrics"])
    assert len(result["loadavg_start"]) == 3 and len(result["loadavg_end"]) == 3
    assert result["versions"]["prefect"] and result["versions"]["ray"]
    assert not list(tmp_path.glob("*.tmp"))


def test_pipeline_bench_missing_config(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pipeline_bench.py"), "--config", str(missing),
                           "--out", str(tmp_path)], check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"error: config file '{missing}' does not exist"]
    assert not (tmp_path / "pipeline.json").exists()
