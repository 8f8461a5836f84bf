"""bench/gpu_bench.py: the peak table, the one-line error without a GPU, and a --dry-run (CPU, ViT-B/32, batch 4,
2 steps through the project's Ray trainer and, when its venv exists, open_clip's) whose JSON must be well formed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_harness import load_module

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_bench.py"
PEER_VENV = REPO / ".bench-venvs" / "openclip"
VIT_B32_PARAMS = 151_277_313  # transformers' CLIPModel at the base recipe (vocab 49,408); open_clip's ViT-B-32 too


def _module():
    return load_module("gpu_bench_under_test", SCRIPT)


def test_peak_flops_table() -> None:
    peak = _module().peak_flops
    assert peak("NVIDIA H100 80GB HBM3", None)[0] == 989e12
    assert peak("NVIDIA H100 PCIe", None)[0] == 756e12
    assert peak("NVIDIA H200", None)[0] == 989e12
    assert peak("NVIDIA A100-SXM4-80GB", None)[0] == 312e12
    assert peak("NVIDIA A10G", None)[0] == 70e12
    assert peak("Some Future GPU", None)[0] is None
    assert peak("NVIDIA H100 80GB HBM3", 500.0) == (500e12, "--peak-tflops")


def test_no_gpu_is_a_one_line_error(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--dry-run" in proc.stderr
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.slow
@pytest.mark.bench
@pytest.mark.timeout(1200)
def test_dry_run_writes_a_well_formed_result(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["bench"] == "gpu" and result["dry_run"] is True and result["device"]["kind"] == "cpu"
    flops = result["flops_per_sample"]
    assert 40e9 < flops["train_step"] < 50e9 and 2.8 < flops["train_over_forward"] < 3.2  # ViT-B/32: ~44 GFLOPs
    assert result["model"]["params_ours"] == VIT_B32_PARAMS
    ours = result["ours"]
    assert ours["median"] > 0 and ours["min"] <= ours["median"] <= ours["max"]
    assert ours["flops_per_s"] == pytest.approx(ours["median"] * flops["train_step"])
    assert ours["mfu"] is None and result["peak_bf16_flops"] is None  # no peak for a CPU unless --peak-tflops
    assert len(result["load_average"]["start"]) == 3 and result["versions"]["ours"]["torch"]
    if result["peer"] is None:
        assert isinstance(result["peer_reason"], str) and result["ratio_ours_over_peer"] is None
    else:
        assert result["peer"]["median"] > 0 and result["model"]["params_peer"] == VIT_B32_PARAMS
        assert result["ratio_ours_over_peer"] == pytest.approx(ours["median"] / result["peer"]["median"], rel=0.01)
    if (PEER_VENV / "bin" / "python").exists():
        assert result["peer"] is not None, result["peer_reason"]
    assert "| trainer |" in proc.stdout
