"""bench/orchestration_bench.py --tiny: the pipeline through Prefect (the real CLI) and through the stage functions
directly (no Prefect), each then re-run all cached; the JSON is well formed, both ways made the same artifacts, and
the direct way never imported Prefect and ran the code snapshot (no timing assertions)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "orchestration_bench.py"
STAGES = {"dataset", "tokenizer", "model", "eval"}
WAYS = ("prefect", "direct", "prefect_cached", "direct_cached")


def check_spread(s: dict) -> None:
    assert set(s) == {"median", "min", "max"}
    assert all(isinstance(v, float) for v in s.values())
    assert s["min"] <= s["median"] <= s["max"]


@pytest.mark.slow
@pytest.mark.bench
def test_orchestration_bench_tiny(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path)], check=False, capture_output=True,
                          text=True, cwd=REPO, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| first run, wall |" in proc.stdout and "| cached re-run / first run |" in proc.stdout
    result = json.loads((tmp_path / "orchestration.json").read_text())
    assert result["benchmark"] == "orchestration" and result["tiny"] is True and result["config"] == "tiny"
    assert result["repeat"] == 1 and result["order"] == [["prefect", "direct"]]
    assert result["effective_config"]["train"]["overrides"]["steps"] == 10

    for way in WAYS:
        runs = result["runs"][way]
        assert len(runs) == 1
        run = runs[0]
        assert run["wall_s"] > 0 and set(run["stage_s"]) == STAGES and all(v > 0 for v in run["stage_s"].values())
        assert run["startup_and_overhead_s"] == pytest.approx(run["wall_s"] - sum(run["stage_s"].values()))
        assert set(run["cached"].values()) == ({True} if way.endswith("cached") else {False})
        summary = result["summary"][way]
        check_spread(summary["wall_s"])
        assert summary["wall_s"]["median"] == pytest.approx(run["wall_s"])
        for stage in STAGES:
            check_spread(summary["stage_s"][stage])

    s = result["summary"]
    med = lambda way: s[way]["wall_s"]["median"]
    assert result["ratio_prefect_over_direct"] > 0
    assert result["ratio_prefect_over_direct"] == pytest.approx(med("prefect") / med("direct"))
    assert result["orchestration_overhead_s"] == pytest.approx(med("prefect") - med("direct"))
    assert result["cached_ratio_prefect_over_direct"] == pytest.approx(med("prefect_cached") / med("direct_cached"))
    assert result["cached_over_first"]["prefect"] == pytest.approx(med("prefect_cached") / med("prefect"))
    assert result["cached_over_first"]["direct"] == pytest.approx(med("direct_cached") / med("direct"))
    for stage in STAGES:
        assert result["stage_ratio_prefect_over_direct"][stage] == pytest.approx(
            s["prefect"]["stage_s"][stage]["median"] / s["direct"]["stage_s"][stage]["median"])

    # the same artifacts both ways: dataset and tokenizer ids equal, every content hash and the eval metrics equal
    prefect, direct = result["runs"]["prefect"][0], result["runs"]["direct"][0]
    assert prefect["ids"]["dataset"] == direct["ids"]["dataset"]
    assert prefect["ids"]["tokenizer"] == direct["ids"]["tokenizer"]
    assert prefect["content_hashes"] == direct["content_hashes"]
    assert result["same_artifacts"] == {"dataset": True, "tokenizer": True, "model": True, "eval": True, "eval_metrics": True}
    # a cached re-run returns its first run's ids
    assert result["runs"]["prefect_cached"][0]["ids"] == prefect["ids"]
    assert result["runs"]["direct_cached"][0]["ids"] == direct["ids"]
    assert {"i2t_r1", "t2i_r1", "zs_top1"} <= set(result["metrics"])

    # every run used one snapshot of the code
    assert len(result["code"]["fingerprint"]) == 64 and isinstance(result["code"]["uncommitted_changes"], bool)
    assert len(result["loadavg_start"]) == 3 and len(result["loadavg_end"]) == 3
    assert result["versions"]["prefect"] and result["versions"]["ray"] and result["versions"]["python"]
    assert not list(tmp_path.glob("*.tmp"))


def test_orchestration_bench_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {family: clip, steps: 3}\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--config", str(bad), "--out", str(tmp_path)],
                          check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: config file '{bad}'") and "steps" in lines[0]
    assert not (tmp_path / "orchestration.json").exists()


def test_direct_driver_does_not_import_prefect() -> None:
    """The driver's module (what the direct subprocess imports first) pulls in nothing of Prefect's."""
    code = ("import sys; sys.path.insert(0, 'bench'); import orchestration_bench; "
            "from vlforge.components import stages; print('prefect' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
