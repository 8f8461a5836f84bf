"""bench/loader_bench.py --tiny: the training loader against the decode limit on a few hundred samples; the JSON is
well formed (no timing assertions)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_loader_bench_tiny(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "loader_bench.py"), "--tiny", "--out", str(tmp_path)],
                          check=False, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| ratio training_loader / decode limit |" in proc.stdout and "(framework overhead) |" in proc.stdout
    result = json.loads((tmp_path / "loader.json").read_text())
    assert result["tiny"] is True and result["samples"] == 400 and result["repeat"] == 2
    for key in ("decode_limit_samples_per_s", "pipeline_samples_per_s", "ratio", "ratio_of_medians",
                "draft_limit_samples_per_s", "ratio_vs_draft_limit", "ratio_of_medians_vs_draft_limit"):
        assert isinstance(result[key], float) and result[key] > 0, key
    for key in ("decode_limit_runs", "pipeline_runs", "draft_limit_runs"):
        assert len(result[key]) == 2 and all(v > 0 for v in result[key])
    for key in ("decode_limit_spread", "pipeline_spread", "draft_limit_spread"):
        s = result[key]
        assert s["min"] <= s["median"] <= s["max"]
    # the headline is best over best; the other ratio is of the medians (values rounded to 0.1 and 0.001)
    assert abs(result["ratio"] - result["pipeline_samples_per_s"] / result["decode_limit_samples_per_s"]) < 2e-3
    assert result["decode_limit_samples_per_s"] == max(result["decode_limit_runs"])
    assert abs(result["ratio_of_medians"] - result["pipeline_spread"]["median"] / result["decode_limit_spread"]["median"]) < 2e-3
    assert abs(result["ratio_vs_draft_limit"] - result["pipeline_samples_per_s"] / result["draft_limit_samples_per_s"]) < 2e-3
    assert len(result["loadavg_start"]) == 3 and len(result["loadavg_end"]) == 3
    assert result["versions"]["torch"] and result["versions"]["python"]
    assert not list(tmp_path.glob("*.tmp"))


def test_loader_bench_bad_argument(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "loader_bench.py"), "--samples", "0", "--out", str(tmp_path)],
                          check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["error: --samples must be at least 1, got 0"]
    assert not (tmp_path / "loader.json").exists()
