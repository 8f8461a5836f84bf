"""bench/memory_bench.py measures what it says: one CLIP tiny step's allocation peak on the CPU, which activation
checkpointing and gradient accumulation lower (the same loss), at a batch small enough for the suite."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_harness import REPO, load_module

bench = load_module("memory_bench", REPO / "bench" / "memory_bench.py")


def test_checkpointing_and_accumulation_lower_the_step_peak() -> None:
    rows = {v: bench.measure({"recipe": "tiny", "batch": 16, "variant": v})
            for v in ("plain", "checkpointing", "accum4")}
    plain = rows["plain"]
    assert plain["resident_mib"] > 0 and plain["gradients_mib"] > 0
    # parameters + AdamW's two moments, float32
    assert abs(plain["resident_mib"] - 3 * plain["params"] * 4 / 2**20) < 0.5
    assert plain["step_peak_mib"] > plain["gradients_mib"]  # the activations come on top of the gradients
    assert rows["checkpointing"]["batch_peak_mib"] < 0.8 * plain["batch_peak_mib"], rows
    assert rows["accum4"]["batch_peak_mib"] < 0.8 * plain["batch_peak_mib"], rows
    # the same step: checkpointing recomputes, it changes no number; GradCache's loss is the full batch's
    assert rows["checkpointing"]["loss"] == pytest.approx(plain["loss"], abs=1e-4)
    assert rows["accum4"]["loss"] == pytest.approx(plain["loss"], abs=1e-3)


def test_bad_batch_is_one_line_and_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "memory_bench.py"), "--batches", "12", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--batches: 12 is not a multiple of 8" in proc.stderr
    assert not (tmp_path / "memory.json").exists()


@pytest.mark.bench  # minutes on two loaded cores: make test-bench
def test_two_ranks_through_fresh_processes(tmp_path: Path) -> None:
    """The two-rank variants (gloo on loopback) in fresh processes, as the benchmark runs every measurement."""
    got = {v: bench.run_one({"recipe": "tiny", "batch": 16, "variant": v})
           for v in ("ranks2", "ranks2-local")}
    for v, row in got.items():
        assert "error" not in row, row
        assert row["ranks"] == 2 and row["per_rank_batch"] == 8 and row["step_peak_mib"] > 0
        assert 0 < row["loss"] < 10
    json.dumps(got)  # the rows are what memory.json holds
