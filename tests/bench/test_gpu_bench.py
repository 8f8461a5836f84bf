"""bench/gpu_bench.py: the peak table, the variants (bf16, fp16, accum4, ckpt) and what each changes on both sides,
the one-line errors (no GPU, an unknown variant), and a --dry-run (CPU, ViT-B/32, batch 4, 2 steps through the
project's Ray trainer and, when its venv exists, open_clip's, for every variant but fp16) whose JSON must be well
formed."""
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


def test_variants_parse_and_change_the_same_thing_on_both_sides() -> None:
    m = _module()
    assert [v.name for v in m.parse_variants(None)] == ["bf16", "fp16", "accum4", "ckpt"]
    assert [v.name for v in m.parse_variants(" ckpt,bf16,ckpt ")] == ["ckpt", "bf16"]
    for bad, named in (("bf16,nope", "'nope'"), (",", "no variant")):
        with pytest.raises(m.BenchError) as err:
            m.parse_variants(bad)
        assert named in str(err.value) and "\n" not in str(err.value)
    shared = {"steps": 20, "num_workers": 1, "threads_per_worker": 2, "loader_workers": 1, "use_gpu": True,
              "log_every": 10, "checkpoint_every": 20, "warmup_steps": 10}
    plans = {v.name: m.variant_plan(v, shared, 256) for v in m.parse_variants(None)}
    assert plans["bf16"]["ours"]["precision"] == "bf16" and plans["bf16"]["peer"]["precision"] == "amp_bf16"
    assert plans["fp16"]["ours"]["precision"] == "fp16" and plans["fp16"]["peer"]["precision"] == "amp"
    accum = plans["accum4"]
    assert (accum["ours"]["batch_size"], accum["ours"]["accum_freq"]) == (64, 4)  # 4 x 64 = 256 per optimizer step
    assert (accum["peer"]["batch"], accum["peer"]["accum_freq"]) == (256, 4)  # run_peer: --batch-size 64 --accum-freq 4
    assert accum["config"]["peer_args"] == ["--precision", "amp_bf16", "--batch-size", "64", "--accum-freq", "4"]
    assert plans["ckpt"]["ours"]["grad_checkpointing"] is True
    assert "--grad-checkpointing" in plans["ckpt"]["peer"]["extra"]
    assert all(p["skipped"] is None and "--force-quick-gelu" in p["peer"]["extra"] for p in plans.values())
    assert m.variant_plan(m.VARIANTS["fp16"], shared | {"use_gpu": False}, 4)["skipped"] == "fp16 needs a GPU"
    with pytest.raises(m.BenchError, match="--batch-size 6 is not a multiple of 4"):
        m.variant_plan(m.VARIANTS["accum4"], shared, 6)

    from vlforge.components.models.registry import get_family
    from vlforge.components.training.loop import check_scale_fields
    from vlforge.errors import UserError

    family = get_family("clip")
    for name, plan in plans.items():  # every override is a real recipe field with the intended value
        recipe = family.recipe("base", plan["ours"])
        assert (recipe.batch_size * recipe.accum_freq, recipe.precision) == (256, plan["ours"]["precision"]), name
        assert recipe.grad_checkpointing is (name == "ckpt")
    # the skip mirrors the trainer's own rule: fp16 without a GPU is refused before anything runs
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        check_scale_fields(family, family.recipe("base", plans["fp16"]["ours"] | {"use_gpu": False}), None)


def test_unknown_variant_is_a_one_line_error(tmp_path: Path) -> None:
    argv = [sys.executable, str(SCRIPT), "--dry-run", "--variants", "bf16,fp32", "--out", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "'fp32'" in proc.stderr and "accum4" in proc.stderr
    assert not (tmp_path / "gpu.json").exists()


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
@pytest.mark.timeout(3600)  # 3 variants x 2 sides of ViT-B/32 bf16 on a loaded 2-core CPU
def test_dry_run_writes_a_well_formed_result(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["bench"] == "gpu" and result["dry_run"] is True and result["device"]["kind"] == "cpu"
    flops = result["flops_per_sample"]
    assert 40e9 < flops["train_step"] < 50e9 and 2.8 < flops["train_over_forward"] < 3.2  # ViT-B/32: ~44 GFLOPs
    assert result["model"]["params_ours"] == VIT_B32_PARAMS
    variants = result["variants"]
    assert list(variants) == ["bf16", "fp16", "accum4", "ckpt"]
    fp16 = variants["fp16"]  # vlforge refuses fp16 without a GPU: recorded, not run, on either side
    assert fp16["skipped"] == "fp16 needs a GPU" and fp16["ours"] is None and fp16["peer"] is None
    accum = variants["accum4"]["config"]  # 4 micro-batches of 1 per optimizer step of 4
    assert (accum["global_batch"], accum["micro_batch"], accum["accum_freq"]) == (4, 1, 4)
    assert accum["peer_args"][-4:] == ["--batch-size", "1", "--accum-freq", "4"]
    assert "--grad-checkpointing" in variants["ckpt"]["config"]["peer_args"]
    peer_ran = result["peer_reason"] is None
    if (PEER_VENV / "bin" / "python").exists():
        assert peer_ran, result["peer_reason"]
    for name in ("bf16", "accum4", "ckpt"):
        v = variants[name]
        assert "skipped" not in v, name
        ours = v["ours"]
        assert ours["median"] > 0 and ours["min"] <= ours["median"] <= ours["max"], name
        assert ours["flops_per_s"] == pytest.approx(ours["median"] * flops["train_step"])
        assert ours["mfu"] is None  # no peak for a CPU unless --peak-tflops
        sides = sorted(x["side"] for x in result["runs"] if x["variant"] == name)
        assert sides == (["ours", "peer"] if peer_ran else ["ours"]), name
        if peer_ran:
            assert v["peer"]["median"] > 0
            assert v["ratio_ours_over_peer"] == pytest.approx(ours["median"] / v["peer"]["median"], rel=0.01)
            assert f"| {name} | ratio ours / open_clip | {v['ratio_ours_over_peer']} |" in proc.stdout
        else:
            assert v["peer"] is None and v["ratio_ours_over_peer"] is None
    assert not any(x["variant"] == "fp16" for x in result["runs"])
    # the top-level figures are the bf16 variant's (earlier readers of gpu.json)
    assert (result["ours"], result["peer"]) == (variants["bf16"]["ours"], variants["bf16"]["peer"])
    assert result["ratio_ours_over_peer"] == variants["bf16"]["ratio_ours_over_peer"]
    assert result["peak_bf16_flops"] is None
    assert len(result["load_average"]["start"]) == 3 and result["versions"]["ours"]["torch"]
    if peer_ran:
        assert result["model"]["params_peer"] == VIT_B32_PARAMS
    else:
        assert isinstance(result["peer_reason"], str)
    assert "| variant | trainer |" in proc.stdout and "| fp16 | not run: fp16 needs a GPU |" in proc.stdout
