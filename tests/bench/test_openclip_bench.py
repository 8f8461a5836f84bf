"""bench/openclip_bench.py: its window arithmetic, its one-line errors, and a --tiny run end to end (the project's
Ray trainer, and open_clip's trainer when its venv at .bench-venvs/openclip exists) whose JSON must be well formed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_harness import load_module

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "openclip_bench.py"
PEER_VENV = REPO / ".bench-venvs" / "openclip"


def _module():
    return load_module("openclip_bench_under_test", SCRIPT)


def _run(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def test_windows_are_full_and_skip_the_first() -> None:
    bench = _module()
    # open_clip logs after batch 1, then every 10 batches: (time, epoch, samples so far), batch 32
    marks = [(0.0, 0, 32), (1.0, 0, 352), (1.5, 0, 672), (2.0, 0, 992), (2.2, 0, 1280)]
    wins = bench.peer_windows(marks, batch=32, log_every=10)
    assert [w["samples_per_s"] for w in wins] == [640.0, 640.0]  # first window and the partial last one dropped
    history = [{"step": 10, "samples_per_s": 100.0}, {"step": 20, "samples_per_s": 300.0},
               {"step": 30, "samples_per_s": 310.0}, {"step": 35, "samples_per_s": 5.0}]
    assert bench.ours_windows(history, batch=32, log_every=10) == [300.0, 310.0]


def test_peer_model_config_matches_ours() -> None:
    bench = _module()
    cfg = {"image_size": 64, "patch_size": 16, "layers": 2, "width": 64, "heads": 2, "mlp_ratio": 4, "context": 32,
           "embed_dim": 64, "vocab_size": 49408, "batch_size": 32}
    oc = bench.openclip_model_config(cfg)
    assert oc["quick_gelu"] is True and oc["vision_cfg"]["head_width"] == 32 and oc["text_cfg"]["vocab_size"] == 49408
    ours = bench.ours_overrides(cfg, workers=1, threads=2, steps=40, log_every=10)
    assert ours["vocab_size"] == 49408 and ours["vision_heads"] == 2 and ours["precision"] == "fp32"
    assert ours["loader_workers"] == 1 and ours["threads_per_worker"] == 2


def test_missing_peer_venv(tmp_path: Path) -> None:
    reason = _module().peer_missing_reason(tmp_path / "no-venv")
    assert "--setup-peer" in reason and str(tmp_path / "no-venv") in reason
    proc = _run("--peer-venv", str(tmp_path / "no-venv"), "--out", str(tmp_path))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--setup-peer" in proc.stderr
    assert not (tmp_path / "openclip.json").exists()


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    proc = _run("--tiny", "--steps", "5", "--out", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --steps")
    proc = _run("--tiny", "--width", "64", "--heads", "3", "--out", str(tmp_path))
    assert proc.returncode == 2 and "--heads" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.bench
@pytest.mark.timeout(1200)
def test_tiny_run_writes_a_well_formed_result(tmp_path: Path) -> None:
    proc = _run("--tiny", "--profile", "--out", str(tmp_path), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "openclip.json").read_text())
    assert result["bench"] == "openclip" and result["tiny"] is True
    for key in ("ours", "ours_2_workers", "peer", "peer_reason", "ratio_ours_over_peer", "params", "runs",
                "load_average", "versions", "profile", "model", "data"):
        assert key in result, key
    for side in ("ours", "ours_2_workers"):
        s = result[side]
        assert s["median"] > 0 and s["min"] <= s["median"] <= s["max"] and len(s["runs"]) == result["repeat"]
    assert result["params"]["ours"] > 3_000_000
    assert len(result["load_average"]["start"]) == 3 and len(result["load_average"]["end"]) == 3
    if result["peer"] is None:
        assert isinstance(result["peer_reason"], str) and result["peer_reason"]
        assert result["ratio_ours_over_peer"] is None
    else:
        assert result["peer_reason"] is None and result["peer"]["median"] > 0
        assert result["ratio_ours_over_peer"] == pytest.approx(result["ours"]["median"] / result["peer"]["median"], rel=0.01)
        assert result["params"]["peer"] == result["params"]["ours"]  # the same modules on both sides
        assert result["versions"]["peer"]["open_clip_torch"]
    assert all(r["samples_per_s"] > 0 and r["windows"] >= 1 for r in result["runs"])
    prof = result["profile"]
    assert set(prof["ms_per_step"]) == {"loader_wait", "tokenize", "forward", "backward", "optimizer"}
    assert prof["top_ops_self_cpu"] and all(op["self_cpu_ms_per_step"] >= 0 for op in prof["top_ops_self_cpu"])
    assert (tmp_path / "openclip_profile.txt").is_file()
    assert "| trainer |" in proc.stdout


def test_peer_venv_probe(tmp_path: Path) -> None:
    """A folder without open_clip's trainer is a reason (what --tiny records with "peer": null); the real venv is none."""
    bench = _module()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)  # a python without open_clip
    assert "--setup-peer" in bench.peer_missing_reason(tmp_path)
    if (PEER_VENV / "bin" / "python").exists():
        assert bench.peer_missing_reason(PEER_VENV) is None
