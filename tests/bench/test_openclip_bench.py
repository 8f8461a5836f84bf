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


# ---------------------------------------------------------------------------------------------- --quality
def _quality():
    load_module("openclip_bench", SCRIPT)  # what openclip_quality imports its helpers from
    return load_module("openclip_quality_under_test", REPO / "bench" / "openclip_quality.py")


def _pairs_table(tmp_path: Path, concepts: int = 200) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"key": f"k{i}-{s}", "path": f"images/{i}-{s}.png", "caption": f"thing {i % 50}", "concept": f"c{i}"}
            for i in range(concepts) for s in ("a", "b")]  # two pairs (styles) per concept
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_quality_split_holds_out_whole_concepts(tmp_path: Path) -> None:
    q = _quality()
    table = _pairs_table(tmp_path)
    split = q.split_pairs(table, seed=0, fraction=0.2)
    train, held = ({r["concept"] for r in split[s]} for s in ("train", "heldout"))
    assert not train & held and len(train | held) == 200
    assert 25 <= len(held) <= 55  # ~20% of 200 concepts
    assert all(len([r for r in split["heldout"] if r["concept"] == c]) == 2 for c in held)
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).parent == tmp_path / "images" for r in split["train"])
    assert split == q.split_pairs(table, seed=0, fraction=0.2)  # stable
    assert {r["concept"] for r in q.split_pairs(table, seed=1, fraction=0.2)["heldout"]} != held
    assert sum(len(v) for v in q.split_pairs(table, seed=0, fraction=0.2, limit=50).values()) == 50


def test_quality_scorer_and_ratios() -> None:
    import numpy as np

    q = _quality()
    s = q.eval_set([{"path": "a", "caption": "x"}, {"path": "b", "caption": "y"}, {"path": "c", "caption": "x"}])
    assert s["texts"] == ["x", "y"] and s["caption_ids"] == [0, 1, 0]
    text = np.array([[1.0, 0.0], [0.0, 3.0]])
    perfect = q.score(np.array([[2.0, 0.1], [0.0, 1.0], [1.0, -0.2]]), text, s["caption_ids"])
    assert perfect["i2t_r1"] == 1.0 and perfect["t2i_r1"] == 1.0 and perfect["unique_captions"] == 2
    swapped = q.score(np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), text, s["caption_ids"])
    assert swapped["i2t_r1"] == 0.0 and swapped["i2t_r5"] == 1.0
    ours = {st: {m: 0.5 for m in q.METRICS} for st in q.SETS}
    peer = {st: {m: (0.25 if m != "t2i_r5" else 0.0) for m in q.METRICS} for st in q.SETS}
    r = q.ratios(ours, peer)
    assert r["heldout"]["i2t_r1"] == 2.0 and r["train"]["t2i_r5"] is None and q.ratios(ours, None) is None


def test_quality_runs_of_ours_are_checked_before_training() -> None:
    q = _quality()
    extras = q.parse_sets(["lr=0.0005", "train_crop_scale=[0.9,1.0] weight_decay=0.2"])  # one row per --ours-set
    assert extras == [{"lr": 5e-4}, {"train_crop_scale": [0.9, 1.0], "weight_decay": 0.2}]
    runs = q.our_runs(20, 8, extras, ["tiny-minilm"])
    assert [r["recipe"] for r in runs] == ["tiny", "tiny", "tiny", "tiny-minilm"]
    assert all(r["overrides"]["steps"] == 20 and r["overrides"]["batch_size"] == 8 for r in runs)
    assert runs[0]["overrides"] == {"steps": 20, "batch_size": 8} and runs[1]["overrides"]["lr"] == 5e-4
    assert runs[2]["overrides"]["weight_decay"] == 0.2 and "lr" not in runs[2]["overrides"]
    assert runs[0]["tower"] is None and runs[1]["tower"] is None
    assert (Path(runs[3]["tower"]) / "config.json").is_file()  # the MiniLM tower: its own tokenizer
    assert len({r["label"] for r in runs}) == 4
    with pytest.raises(q.BenchError, match="--ours-recipe: .*no recipe 'nope'"):
        q.our_runs(20, 8, [], ["nope"])
    with pytest.raises(q.BenchError, match="--ours-set: .*'bogus'"):
        q.our_runs(20, 8, [{"bogus": 1}], [])
    with pytest.raises(q.BenchError, match="--ours-set: .*'oops' is not KEY=VALUE"):
        q.parse_sets(["lr=1e-3 oops"])


def test_quality_errors_are_one_line(tmp_path: Path) -> None:
    table = _pairs_table(tmp_path)
    proc = _run("--quality", "--quality-data", str(table), "--peer-venv", str(tmp_path / "no-venv"), "--out",
                str(tmp_path))
    assert proc.returncode == 2 and "--setup-peer" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = _run("--quality", "--quality-data", str(table), "--holdout", "1.5", "--out", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --holdout")
    proc = _run("--quality", "--quality-data", str(table), "--steps", "0", "--out", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --steps must be at least 1 (got 0)"
    proc = _run("--quality", "--quality-data", str(tmp_path / "none.parquet"), "--out", str(tmp_path))
    assert proc.returncode == 2 and "none.parquet" in proc.stderr
    proc = _run("--quality", "--tiny", "--quality-data", str(table), "--ours-recipe", "nope", "--peer-venv",
                str(tmp_path / "no-venv"), "--out", str(tmp_path))  # --tiny runs without the peer: no probe
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --ours-recipe")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "openclip_quality.json").exists()


@pytest.mark.slow
@pytest.mark.bench
@pytest.mark.timeout(1200)
def test_quality_tiny_run_writes_a_well_formed_result(tmp_path: Path, emoji_dir: Path) -> None:
    proc = _run("--quality", "--tiny", "--quality-data", str(emoji_dir / "pairs.parquet"), "--ours-recipe",
                "tiny-minilm", "--out", str(tmp_path), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "openclip_quality.json").read_text())
    assert result["bench"] == "openclip_quality" and result["tiny"] is True and result["steps"] == 10
    data = result["data"]
    assert data["train_pairs"] + data["heldout_pairs"] == 300 and data["train_samples_ingested"] == data["train_pairs"]
    ours, (minilm,) = result["ours"], result["variants"]
    assert ours["steps"] == 10 and ours["recipe"]["batch_size"] == 32 and ours["params"] > 1_000_000
    assert ours["recipe_name"] == "tiny" and ours["text_tower"] is None and data["tokenizer_vocab_ours"] == 512
    assert minilm["recipe_name"] == "tiny-minilm" and minilm["steps"] == 10 and minilm["recipe"]["lock_text"] is True
    assert minilm["params"] > 20_000_000 and minilm["model"] != ours["model"]
    for run in (ours, minilm):
        for s in ("heldout", "train"):
            assert all(0.0 <= run["scores"][s][m] <= 1.0 for m in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"))
            assert run["scores"][s]["i2t_r1"] <= run["scores"][s]["i2t_r5"]
            assert run["scores"][s]["images"] == data[f"{s}_pairs"]
    if result["peer"] is None:
        assert isinstance(result["peer_reason"], str) and "venv" in result["peer_reason"]
        assert result["ratio_ours_over_peer"] is None and minilm["ratio_over_peer"] is None
    else:
        peer = result["peer"]
        assert result["peer_reason"] is None and peer["steps"] == 10 and peer["wd"] == 0.2
        assert peer["scores"]["heldout"]["images"] == data["heldout_pairs"]
        assert set(result["ratio_ours_over_peer"]) == {"heldout", "train"} == set(minilm["ratio_over_peer"])
    assert "| model |" in proc.stdout and "ratio vlforge / open_clip" in proc.stdout
    assert "ratio vlforge tiny-minilm / open_clip" in proc.stdout
