"""open_clip benchmark: CLIP training samples/s of the project's Ray trainer against open_clip's own trainer, the
same tiny ViT CLIP on the same webdataset shards, cores, threads and precision (vlforge issue 9, items 1 and 6).

    .venv/bin/python bench/openclip_bench.py [--repeat 3] [--steps 300] [--profile] [--setup-peer] [--tiny]
    .venv/bin/python bench/openclip_bench.py --quality [--steps 750] [--ours-set K=V] [--ours-recipe NAME] [--tiny]

Data: builtin scenes ingested once by the project's ingest stage (``run_ingest``: loopback server + img2dataset
-> webdataset shards of jpg + txt) and a BPE tokenizer trained on them (``run_tokenizer``). Model (both sides):
64 px images, 16 px patches, 2 layers of width 64 with 2 heads in each tower, MLP ratio 4, quick-GELU, context 32,
vocab 49,408 (open_clip's; our recipe's ``vocab_size`` is set to it so the embedding tables match), joint
embedding 64; batch 32, fp32, AdamW (0.9, 0.98, 1e-6), gradient clipping 1.0, cosine schedule.

- ours: ``vlforge.components.training.loop.train`` (the Ray Train TorchTrainer every stage uses) with the clip
  family, 1 Ray worker x 2 threads (``loader_workers=1``), and again with 2 Ray workers x 1 thread (the scaling
  figure). Run in a subprocess per repeat so Ray is down while the peer runs.
- peer: open_clip 3.3's trainer (``open_clip_train.main``) in its own virtual environment
  (``.bench-venvs/openclip``; ``--setup-peer`` creates it from the local package indexes with the pins below), on
  the same shards (``--dataset-type webdataset --dataset-resampled``), ``--workers 1``, 2 torch threads,
  ``--precision fp32 --device cpu``, via bench/openclip_peer.py.

Both sides are measured the same way: samples trained between two consecutive training log records over the time
between them, every ``--log-every`` steps; the first window (start-up) and partial windows are dropped and the
median window is the run's figure. The runs alternate (ours first on even repeats, the peer first on odd ones);
the table gives the median over repeats with min/max and the ratio ours / peer of the medians.
``--profile`` profiles our training step in one process (same model, batch, threads and loader): torch.profiler's
top ops by self CPU time and the split loader wait / tokenise / forward / backward / optimiser.
``--tiny``: a few hundred scenes, 40 steps, one repeat; without the peer venv it runs ours only and records
``"peer": null`` with the reason. Prints a markdown table; writes ``<out>/openclip.json`` (and, with
``--profile``, ``<out>/openclip_profile.txt``).

``--quality``: the other comparison, zero-shot retrieval on held-out emoji concepts after the same training budget
on both sides (vlforge issue 21; bench/openclip_quality.py says how); writes ``<out>/openclip_quality.json``."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_venv import peer_python  # noqa: E402 - shared with the other reference benchmarks

# run as a script, this module is also the ``openclip_bench`` that bench/openclip_quality.py imports (one BenchError)
sys.modules.setdefault("openclip_bench", sys.modules[__name__])

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PEER_RUNNER = BENCH / "openclip_peer.py"
DEFAULT_PEER_VENV = REPO / ".bench-venvs" / "openclip"
# open_clip 3.3's trainer breaks on webdataset >= 0.2.96 (KeyError 'fname', open_clip issue 935); torchvision 0.29.1
# is what open_clip_torch resolves to and it brings torch 2.14.1 (../shared/notes/stack.md).
PEER_PINS = ("torch==2.14.1", "torchvision==0.29.1", "open_clip_torch==3.3.0", "webdataset==0.2.86", "pandas")
MODEL_NAME = "vlforge-bench-tiny"


class BenchError(Exception):
    """A problem the user can fix: printed as one line, exit code 2."""


# --------------------------------------------------------------------------------------------------- helpers
def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def tail_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["(no output)"])[-1][:300]


def our_versions() -> dict:
    from importlib.metadata import version

    return {d: version(d) for d in ("vlforge", "torch", "transformers", "ray", "webdataset")}


# ------------------------------------------------------------------------------------------------------- peer
def setup_peer(venv: Path) -> None:
    """Create open_clip's venv with the pinned packages from the package indexes pip is configured with."""
    py = peer_python(venv)
    if not py.exists():
        print(f"creating {venv} ...", file=sys.stderr)
        proc = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BenchError(f"could not create the venv {venv}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    print(f"installing {' '.join(PEER_PINS)} into {venv} ...", file=sys.stderr)
    proc = subprocess.run([str(py), "-m", "pip", "install", "--quiet", *PEER_PINS], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines() or ["?"]
        raise BenchError(f"pip could not install the open_clip peer into {venv}: {lines[-1]}")


def peer_missing_reason(venv: Path) -> str | None:
    """None when ``venv`` has open_clip's trainer; else why not."""
    py = peer_python(venv)
    if not py.exists():
        return f"open_clip's venv is missing at {venv} (create it with --setup-peer)"
    probe = ("import importlib.util as u; print(all(u.find_spec(m) is not None for m in "
             "('open_clip', 'open_clip_train.main', 'webdataset', 'torchvision')))")
    proc = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
    if proc.returncode != 0 or proc.stdout.strip() != "True":
        why = (proc.stderr.strip().splitlines() or ["open_clip_train.main is missing"])[-1]
        return f"the venv {venv} has no working open_clip trainer ({why}); recreate it with --setup-peer"
    return None


def openclip_model_config(cfg: dict) -> dict:
    """open_clip's config for the tiny ViT CLIP (heads = width / head_width on the vision side)."""
    return {
        "embed_dim": cfg["embed_dim"],
        "quick_gelu": True,  # HF CLIPModel's activation
        "vision_cfg": {"image_size": cfg["image_size"], "layers": cfg["layers"], "width": cfg["width"],
                       "patch_size": cfg["patch_size"], "mlp_ratio": cfg["mlp_ratio"],
                       "head_width": cfg["width"] // cfg["heads"]},
        "text_cfg": {"context_length": cfg["context"], "vocab_size": cfg["vocab_size"], "width": cfg["width"],
                     "heads": cfg["heads"], "layers": cfg["layers"], "mlp_ratio": cfg["mlp_ratio"]},
    }


def peer_windows(marks: list, batch: int, log_every: int) -> list[dict]:
    """open_clip's log records (time, epoch, samples so far) -> full windows after the first."""
    wins = []
    for (t0, e0, n0), (t1, e1, n1) in zip(marks, marks[1:]):
        if e0 == e1 and n1 - n0 == batch * log_every and t1 > t0:
            wins.append({"samples": n1 - n0, "seconds": t1 - t0, "samples_per_s": (n1 - n0) / (t1 - t0)})
    return wins[1:]


def peer_train_command(venv: Path, *, model: str, model_config: Path | None, shards: list[str], batch: int,
                       n_steps: int, log_every: int, threads: int | None, workers: int, precision: str, device: str,
                       run: Path, extra: list[str] = (), lr: float = 1e-3, wd: float = 0.1, warmup: int = 10,
                       save_frequency: int = 0) -> tuple[list[str], dict]:
    """The argv and environment of one open_clip training run of ``n_steps`` steps in ``run`` (its ``peer.json``
    and ``logs/``; with ``save_frequency`` 1, the checkpoint ``logs/run/checkpoints/epoch_1.pt``)."""
    argv = [str(peer_python(venv)), str(PEER_RUNNER), "train", "--model", model, "--out", str(run / "peer.json")]
    argv += ["--model-config", str(model_config)] if model_config else []
    argv += ["--threads", str(threads)] if threads else []
    argv += ["--", "--model", model, "--train-data", "::".join(shards), "--dataset-type", "webdataset",
             "--dataset-resampled", "--train-num-samples", str(n_steps * batch), "--epochs", "1",
             "--batch-size", str(batch), "--workers", str(workers), "--precision", precision, "--device", device,
             "--lr", str(lr), "--wd", str(wd), "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6",
             "--warmup", str(warmup), "--grad-clip-norm", "1.0", "--log-every-n-steps", str(log_every),
             "--logs", str(run / "logs"), "--name", "run", "--save-frequency", str(save_frequency),
             "--zeroshot-frequency", "0", "--val-frequency", "0", "--seed", "0", *extra]
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return argv, env


def run_peer(venv: Path, *, model: str, model_config: Path | None, shards: list[str], batch: int, steps: int,
             log_every: int, threads: int | None, workers: int, precision: str, device: str, work: Path,
             extra: list[str] = (), lr: float = 1e-3, wd: float = 0.1, warmup: int = 10, accum_freq: int = 1) -> dict:
    """One open_clip training run of ``steps`` logged steps (+1: open_clip logs after the first batch, so the last
    window ends on a log record too); returns its windows, parameters and versions. ``batch`` is the samples of one
    optimizer step: with ``accum_freq`` k > 1 open_clip gets ``--batch-size batch/k --accum-freq k`` (its effective
    batch is batch_size x accum_freq) and k micro-batches per step."""
    run = work / f"peer-{uuid.uuid4().hex[:8]}"
    run.mkdir(parents=True)
    out, log = run / "peer.json", run / "peer.log"
    accum = ["--accum-freq", str(accum_freq)] if accum_freq > 1 else []
    argv, env = peer_train_command(venv, model=model, model_config=model_config, shards=shards,
                                   batch=batch // accum_freq, n_steps=(steps + 1) * accum_freq, log_every=log_every,
                                   threads=threads, workers=workers, precision=precision, device=device, run=run,
                                   extra=[*extra, *accum], lr=lr, wd=wd, warmup=warmup)
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=run, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"open_clip's trainer failed (exit {proc.returncode}): {tail_line(log)}")
    res = json.loads(out.read_text())
    wins = peer_windows(res["marks"], batch, log_every)
    if not wins:
        raise RuntimeError(f"open_clip logged no full window after the first ({len(res['marks'])} log records)")
    shutil.rmtree(run, ignore_errors=True)
    return {"samples_per_s": statistics.median(w["samples_per_s"] for w in wins), "windows": len(wins),
            "window_samples_per_s": [float(f"{w['samples_per_s']:.4g}") for w in wins], "wall_s": round(wall, 1),
            "params": res["params"], "versions": res["versions"]}


# ------------------------------------------------------------------------------------------------------- ours
def ours_overrides(cfg: dict, *, workers: int, threads: int, steps: int, log_every: int) -> dict:
    return {
        "steps": steps, "batch_size": cfg["batch_size"], "lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 10,
        "grad_clip": 1.0, "image_size": cfg["image_size"], "patch_size": cfg["patch_size"],
        "max_text_length": cfg["context"], "embed_dim": cfg["embed_dim"], "vocab_size": cfg["vocab_size"],
        "vision_width": cfg["width"], "vision_layers": cfg["layers"], "vision_heads": cfg["heads"],
        "text_width": cfg["width"], "text_layers": cfg["layers"], "text_heads": cfg["heads"],
        "mlp_ratio": cfg["mlp_ratio"], "num_workers": workers, "threads_per_worker": threads, "loader_workers": 1,
        "precision": "fp32", "use_gpu": False, "log_every": log_every, "checkpoint_every": steps,
    }


def ours_windows(history: list[dict], batch: int, log_every: int) -> list[float]:
    """The loop's log rows -> samples/s of the full windows after the first (the loop's own figure is the median
    of every window after the first, the last one included)."""
    out, prev = [], 0
    for i, row in enumerate(history):
        if i > 0 and row["step"] - prev == log_every:
            out.append(float(row["samples_per_s"]))
        prev = row["step"]
    return out


def _ours_child(spec_path: str) -> None:
    """Inside the ``--_ours`` subprocess: one Ray session, every run of the spec in order."""
    from vlforge.components.models.registry import get_family
    from vlforge.components.training.loop import TRAIN_LOG, train
    from vlforge.components.training.ray_runtime import ensure_ray, shutdown_ray

    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"])
    family = get_family(spec.get("family", "clip"))
    results = []
    ensure_ray()
    try:
        for run in spec["runs"]:
            recipe = family.recipe(spec.get("recipe", "tiny"), run["overrides"])
            tag = uuid.uuid4().hex[:8]
            run_dir, out_dir = work / "ray" / f"bench-{tag}", work / f"model-{tag}"
            start = time.perf_counter()
            summary = train(family_name=family.name, recipe=recipe, dataset_dir=Path(spec["dataset_dir"]),
                            tokenizer_dir=Path(spec["tokenizer_dir"]), run_dir=run_dir, out_dir=out_dir)
            history = [json.loads(x) for x in (out_dir / TRAIN_LOG).read_text().splitlines() if x]
            results.append({"label": run["label"], "summary": summary, "wall_s": time.perf_counter() - start,
                            "history": [{"step": h["step"], "samples_per_s": h["samples_per_s"], "loss": h["loss"]}
                                        for h in history]})
            shutil.rmtree(out_dir, ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        shutdown_ray()
    write_json(Path(spec["out"]), results)


def run_child(script: Path, spec: dict, work: Path, what: str) -> Any:
    """``script --_ours SPEC`` in a fresh process (Ray, when it trains, goes down with it): ``spec`` with ``work``
    and ``out`` added goes in, the JSON the child writes to ``out`` comes back; RuntimeError naming ``what``."""
    tag = uuid.uuid4().hex[:8]
    spec_path, out, log = work / f"ours-{tag}.json", work / f"ours-{tag}.out.json", work / f"ours-{tag}.log"
    write_json(spec_path, {**spec, "work": str(work), "out": str(out)})
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, str(script), "--_ours", str(spec_path)],
                              stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail_line(log)}")
    return json.loads(out.read_text())


def run_ours(runs: list[dict], *, dataset_dir: Path, tokenizer_dir: Path, work: Path, recipe: str = "tiny",
             family: str = "clip") -> list[dict]:
    """Every run in ``runs`` ({"label", "overrides"}) with the project's Ray trainer, in one fresh subprocess."""
    return run_child(Path(__file__).resolve(), {"runs": runs, "dataset_dir": str(dataset_dir),
                     "tokenizer_dir": str(tokenizer_dir), "recipe": recipe, "family": family}, work,
                     "the project's trainer")


# ------------------------------------------------------------------------------------------------------- data
def prepare_data(source: str, image_size: int, tokenizer_vocab: int) -> dict:
    """Ingest ``source`` once with the project's ingest stage and train its tokenizer (in $VLFORGE_HOME)."""
    from vlforge.catalog import Catalog
    from vlforge.components.data.crawl import CrawlConfig
    from vlforge.components.data.loader import split_shards
    from vlforge.components.data.shard import ShardConfig
    from vlforge.components.pipeline_config import SourceConfig
    from vlforge.components.stages import run_ingest, run_tokenizer
    from vlforge.components.tokenizer import TokenizerConfig
    from vlforge.settings import catalog_root

    catalog = Catalog(catalog_root())
    start = time.perf_counter()
    data = run_ingest(SourceConfig(spec=source), CrawlConfig(image_size=image_size), ShardConfig(), catalog).artifact
    tok = run_tokenizer(data.id, TokenizerConfig(vocab_size=tokenizer_vocab), catalog).artifact
    dataset_dir = catalog.path(data.id)
    shards = [str(p) for p in split_shards(dataset_dir, "train")]
    return {"source": source, "dataset": data.id, "tokenizer": tok.id, "dataset_dir": str(dataset_dir),
            "tokenizer_dir": str(catalog.path(tok.id)), "train_shards": shards, "train_samples":
            int(data.metrics["train_samples"]), "tokenizer_vocab": int(tok.metrics["vocab_size"]),
            "ingest_s": round(time.perf_counter() - start, 1)}


def our_param_count(overrides: dict, tokenizer_dir: str, recipe_name: str = "tiny", meta: bool = False) -> int:
    import torch
    from vlforge.components.models.registry import get_family, special_token_ids
    from vlforge.components.tokenizer import load_tokenizer

    family = get_family("clip")
    tok = load_tokenizer(tokenizer_dir)
    recipe = family.recipe(recipe_name, overrides)
    with torch.device("meta") if meta else torch.device("cpu"):
        model = family.build_model(recipe, len(tok), special_token_ids(tok))
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------- profile
def profile_ours(data: dict, overrides: dict, *, warm: int, timed: int, profiled: int, out_dir: Path) -> dict:
    """Our training step in this process, as the loop does it (same loader, tokenisation, objective, AdamW groups,
    clipping, schedule), timed phase by phase, then a few steps under torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    from vlforge.components.data.loader import training_loader
    from vlforge.components.models.registry import ImageTextBatch, get_family, special_token_ids
    from vlforge.components.tokenizer import load_tokenizer
    from vlforge.components.training.loop import _lr_lambda, make_optimizer, word_id_tensor

    family = get_family("clip")
    recipe = family.recipe("tiny", {**overrides, "num_workers": 1})
    torch.set_num_threads(recipe.threads_per_worker)
    torch.manual_seed(recipe.seed)
    tok = load_tokenizer(data["tokenizer_dir"])
    model = family.build_model(recipe, len(tok), special_token_ids(tok))
    model.train()
    opt = make_optimizer(model, recipe, torch.device("cpu"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(recipe))
    transform = family.image_transform(recipe)
    batches = iter(training_loader([Path(p) for p in data["train_shards"]], rank=0, world=1, seed=recipe.seed,
                                   shuffle_buffer=recipe.shuffle_buffer, transform=transform,
                                   batch_size=recipe.batch_size, num_workers=recipe.loader_workers))
    phases = ("loader_wait", "tokenize", "forward", "backward", "optimizer")

    def step(i: int) -> list[float]:
        t = [time.perf_counter()]
        with record_function("loader_wait"):
            decoded = next(batches)
        t.append(time.perf_counter())
        with record_function("tokenize"):
            enc = tok(decoded.captions, padding="max_length", truncation=True, max_length=recipe.max_text_length,
                      return_tensors="pt")
            batch = ImageTextBatch(decoded.pixel_values, enc["input_ids"], enc["attention_mask"], decoded.captions,
                                   decoded.keys, word_ids=word_id_tensor(enc, len(decoded.captions)),
                                   meta=decoded.meta, step=i, tokenizer=tok, max_text_length=recipe.max_text_length)
        t.append(time.perf_counter())
        with record_function("forward"):
            losses = family.training_step(model, batch, recipe)
        t.append(time.perf_counter())
        with record_function("backward"):
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
        t.append(time.perf_counter())
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            sched.step()
            family.after_optimizer_step(model, recipe)
        t.append(time.perf_counter())
        return [b - a for a, b in zip(t, t[1:])]

    for i in range(warm):
        step(i)
    rows = [step(warm + i) for i in range(timed)]
    per_step = {p: statistics.mean(r[k] for r in rows) * 1e3 for k, p in enumerate(phases)}
    total = sum(per_step.values())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(profiled):
            step(warm + timed + i)
    averages = prof.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=30)
    write_text(out_dir / "openclip_profile.txt", table + "\n")
    self_total = sum(e.self_cpu_time_total for e in averages) or 1.0
    top = sorted((e for e in averages if e.key not in phases), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    del batches
    return {
        "steps_timed": timed, "steps_profiled": profiled, "batch_size": recipe.batch_size,
        "threads": recipe.threads_per_worker, "loader_workers": recipe.loader_workers,
        "ms_per_step": {p: round(v, 2) for p, v in per_step.items()},
        "fraction": {p: round(v / total, 3) for p, v in per_step.items()},
        "samples_per_s_in_process": round(recipe.batch_size / (total / 1e3), 1),
        "top_ops_self_cpu": [{"op": e.key, "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / profiled, 3),
                              "share": round(e.self_cpu_time_total / self_total, 3),
                              "calls_per_step": round(e.count / profiled, 1)} for e in top],
        "table": "openclip_profile.txt",
    }


# ------------------------------------------------------------------------------------------------------- main
def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--_ours":
        _ours_child(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for openclip.json")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each side (default 3; --tiny: 1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 300; --tiny: 40; "
                        "--quality: 750, with --tiny 10)")
    parser.add_argument("--log-every", type=int, default=10, help="steps per measured window (both sides)")
    parser.add_argument("--samples", type=int, default=None, help="builtin scenes to ingest (default 2000; --tiny 400)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (--quality: 64, with --tiny 32)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2, help="transformer layers of each tower")
    parser.add_argument("--width", type=int, default=64, help="width of each tower")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--context", type=int, default=32, help="text context length")
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=49408, help="both sides' token embedding rows")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (ours: 1 Ray worker x THREADS; "
                        "--quality: open_clip's only, ours keeps the recipe's workers and threads)")
    parser.add_argument("--no-scaling", action="store_true", help="skip ours with 2 Ray workers x 1 thread")
    parser.add_argument("--profile", action="store_true", help="profile our training step (torch.profiler)")
    parser.add_argument("--peer-venv", default=str(DEFAULT_PEER_VENV), help="open_clip's virtual environment")
    parser.add_argument("--setup-peer", action="store_true", help="create/refresh the peer venv with the pins first")
    parser.add_argument("--tiny", action="store_true", help="a smoke run (well under 90 s on 2 cores)")
    parser.add_argument("--quality", action="store_true", help="zero-shot retrieval on held-out emoji concepts after "
                        "the same budget on both sides (bench/openclip_quality.py), instead of samples/s")
    parser.add_argument("--quality-data", default=None, help="--quality: a pairs.parquet with key, path, caption, "
                        "concept (default ../shared/data/emoji-noto/pairs.parquet)")
    parser.add_argument("--holdout", type=float, default=0.2, help="--quality: share of concepts held out")
    parser.add_argument("--split-seed", type=int, default=0, help="--quality: seed of the concept hash")
    parser.add_argument("--ours-set", action="append", metavar="KEY=VALUE", help="--quality: a run of ours' tiny "
                        "recipe with these overrides (repeatable), an extra row; tokenizer.FIELD=V keys train its "
                        "own BPE (e.g. tokenizer.vocab_size=2048)")
    parser.add_argument("--ours-recipe", action="append", metavar="NAME", help="--quality: a run of another clip "
                        "recipe (e.g. tiny-minilm) at the same steps and batch (repeatable), an extra row")
    args = parser.parse_args()
    run_or_exit(dispatch, args)


def dispatch(args: argparse.Namespace) -> None:
    """``--quality`` (bench/openclip_quality.py) or the throughput benchmark."""
    if args.quality:
        from openclip_quality import DEFAULT_DATA, run_quality

        args.quality_data = args.quality_data or str(DEFAULT_DATA)
        run_quality(args)
        return
    args.batch_size = args.batch_size if args.batch_size is not None else 32
    run_bench(args)


def run_or_exit(run: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> None:
    """``run(args)``; a bad argument or missing input (BenchError) is a one-line error and exit code 2, a side that
    failed (RuntimeError) one line and exit code 1."""
    try:
        run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


def run_bench(args: argparse.Namespace) -> None:
    repeat = args.repeat if args.repeat is not None else (1 if args.tiny else 3)
    steps = args.steps if args.steps is not None else (40 if args.tiny else 300)
    samples = args.samples if args.samples is not None else (400 if args.tiny else 2000)
    for name, value, low in (("--repeat", repeat, 1), ("--log-every", args.log_every, 1), ("--samples", samples, 50),
                             ("--batch-size", args.batch_size, 2), ("--threads", args.threads, 1)):
        if value < low:
            raise BenchError(f"{name} must be at least {low} (got {value})")
    if steps < 3 * args.log_every:
        raise BenchError(f"--steps must be at least 3 x --log-every = {3 * args.log_every} (got {steps})")
    steps = -(-steps // args.log_every) * args.log_every  # whole windows only
    if args.width % args.heads:
        raise BenchError(f"--width {args.width} is not a multiple of --heads {args.heads}")
    if args.image_size % args.patch_size:
        raise BenchError(f"--image-size {args.image_size} is not a multiple of --patch-size {args.patch_size}")
    out_dir = Path(args.out)
    venv = Path(args.peer_venv).resolve()
    if args.setup_peer:
        setup_peer(venv)
    peer_reason = peer_missing_reason(venv)
    if peer_reason and not args.tiny:
        raise BenchError(peer_reason)
    cfg = {"image_size": args.image_size, "patch_size": args.patch_size, "layers": args.layers, "width": args.width,
           "heads": args.heads, "mlp_ratio": 4, "context": args.context, "embed_dim": args.embed_dim,
           "vocab_size": args.vocab_size, "batch_size": args.batch_size}
    load_start = loadavg()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="vlforge-openclip-") as tmp:
        work = Path(tmp)
        os.environ["VLFORGE_HOME"] = str(work / "home")
        os.environ.pop("VLFORGE_RAY_STORAGE", None)
        data = prepare_data(f"builtin:shapes?n={samples}&image_size={args.image_size}", args.image_size, 2048)
        print(f"data: {data['train_samples']} training samples in {len(data['train_shards'])} shards "
              f"({data['ingest_s']} s)", file=sys.stderr)
        model_config = work / f"{MODEL_NAME}.json"
        write_json(model_config, openclip_model_config(cfg))
        one = ours_overrides(cfg, workers=1, threads=args.threads, steps=steps, log_every=args.log_every)
        ours_runs = [{"label": "ours_1_worker", "overrides": one}]
        if not args.no_scaling:
            two = ours_overrides(cfg, workers=2, threads=1, steps=steps, log_every=args.log_every)
            ours_runs.append({"label": "ours_2_workers", "overrides": two})
        runs: list[dict] = []
        peer_info: dict | None = None
        for r in range(repeat):
            order = ("ours", "peer") if r % 2 == 0 else ("peer", "ours")
            for side in order:
                if side == "ours":
                    for res in run_ours(ours_runs, dataset_dir=Path(data["dataset_dir"]),
                                        tokenizer_dir=Path(data["tokenizer_dir"]), work=work):
                        wins = ours_windows(res["history"], args.batch_size, args.log_every)
                        runs.append({"repeat": r, "side": res["label"],
                                     "samples_per_s": statistics.median(wins),
                                     "loop_samples_per_s": res["summary"]["samples_per_s"], "windows": len(wins),
                                     "window_samples_per_s": [float(f"{w:.4g}") for w in wins],
                                     "wall_s": round(res["wall_s"], 1),
                                     "first_loss": res["summary"]["first_loss"],
                                     "final_loss": res["summary"]["final_loss"]})
                        print(f"repeat {r}: {res['label']} {runs[-1]['samples_per_s']:.0f} samples/s", file=sys.stderr)
                elif peer_reason is None:
                    res = run_peer(venv, model=MODEL_NAME, model_config=model_config, shards=data["train_shards"],
                                   batch=args.batch_size, steps=steps, log_every=args.log_every, threads=args.threads,
                                   workers=1, precision="fp32", device="cpu", work=work)
                    peer_info = {"params": res.pop("params"), "versions": res.pop("versions")}
                    runs.append({"repeat": r, "side": "peer", **res})
                    print(f"repeat {r}: open_clip {res['samples_per_s']:.0f} samples/s", file=sys.stderr)
        ours_params = our_param_count(one, data["tokenizer_dir"])
        profile = None
        if args.profile:
            profile = profile_ours(data, one, warm=3 if args.tiny else 5, timed=10 if args.tiny else 30,
                                   profiled=5 if args.tiny else 10, out_dir=out_dir)
    load_end = loadavg()

    def side(label: str) -> dict | None:
        vals = [x["samples_per_s"] for x in runs if x["side"] == label]
        return {k: (round(v, 1) if isinstance(v, float) else [round(x, 1) for x in v]) for k, v in spread(vals).items()} \
            if vals else None

    ours, ours2, peer = side("ours_1_worker"), side("ours_2_workers"), side("peer")
    peer_params = peer_info["params"] if peer_info else None
    result = {
        "bench": "openclip",
        "tiny": args.tiny,
        "repeat": repeat,
        "steps": steps,
        "log_every": args.log_every,
        "measure": "median over logging windows after the first (full windows only), then median over repeats",
        "model": cfg | {"precision": "fp32", "quick_gelu": True, "threads": args.threads},
        "openclip_model_config": openclip_model_config(cfg),
        "data": {k: data[k] for k in ("source", "dataset", "train_samples", "tokenizer_vocab")}
        | {"train_shards": len(data["train_shards"])},
        "params": {"ours": ours_params, "peer": peer_params,
                   "peer_over_ours": round(peer_params / ours_params, 6) if peer_params else None,
                   "note": "same modules on both sides (HF CLIPModel vs open_clip CLIP): patch conv without bias, "
                           "class + position embeddings, pre/post layer norms, q/k/v/out projections with biases, "
                           "MLP with biases, projections without bias, one temperature"},
        "ours": ours | {"ray_workers": 1, "threads_per_worker": args.threads, "loader_workers": 1} if ours else None,
        "ours_2_workers": ours2 | {"ray_workers": 2, "threads_per_worker": 1, "loader_workers": 1} if ours2 else None,
        "peer": peer | {"trainer": "open_clip_train.main", "workers": 1, "threads": args.threads,
                        "venv": str(venv)} if peer else None,
        "peer_reason": peer_reason,
        "ratio_ours_over_peer": float(f"{ours['median'] / peer['median']:.4g}") if peer else None,
        "ratio_ours_2_workers_over_peer": float(f"{ours2['median'] / peer['median']:.4g}") if peer and ours2 else None,
        "scaling_2_over_1_workers": round(ours2["median"] / ours["median"], 3) if ours2 else None,
        "runs": runs,
        "profile": profile,
        "load_average": {"start": load_start, "end": load_end},
        "wall_s": round(time.time() - started, 1),
        "versions": {"ours": our_versions(), "peer": peer_info["versions"] if peer_info else None},
    }
    write_json(out_dir / "openclip.json", result)
    print_table(result)


def print_table(r: dict) -> None:
    def row(name: str, s: dict | None) -> str:
        if not s:
            return f"| {name} | - | - | - |"
        return f"| {name} | {s['median']:.0f} | {s['min']:.0f} - {s['max']:.0f} | {len(s['runs'])} |"

    m = r["model"]
    print(f"\nCLIP ViT {m['image_size']} px / patch {m['patch_size']}, {m['layers']} layers x width {m['width']} per tower,"
          f" context {m['context']}, vocab {m['vocab_size']}, batch {m['batch_size']}, fp32, {m['threads']} threads; "
          f"{r['steps']} steps, windows of {r['log_every']} steps; load average {r['load_average']['start']} -> "
          f"{r['load_average']['end']}\n")
    print("| trainer | samples/s (median) | min - max | runs |\n|---|---|---|---|")
    print(row(f"ours: Ray Train, 1 worker x {m['threads']} threads", r["ours"]))
    print(row("ours: Ray Train, 2 workers x 1 thread", r["ours_2_workers"]))
    print(row(f"open_clip {((r['versions']['peer'] or {}).get('open_clip_torch') or '')} trainer, 1 process x "
              f"{m['threads']} threads", r["peer"]))
    ratio = r["ratio_ours_over_peer"]
    print(f"| ratio ours (1 worker) / open_clip | {ratio if ratio is not None else '-'} | | |")
    ratio2 = r["ratio_ours_2_workers_over_peer"]
    print(f"| ratio ours (2 workers) / open_clip | {ratio2 if ratio2 is not None else '-'} | | |")
    p = r["params"]
    print(f"\nparameters: ours {p['ours']:,}, open_clip {p['peer']:,}" if p["peer"] else
          f"\nparameters: ours {p['ours']:,}; open_clip not run: {r['peer_reason']}")
    if r["profile"]:
        pr = r["profile"]
        split = ", ".join(f"{k} {v} ms ({pr['fraction'][k]:.0%})" for k, v in pr["ms_per_step"].items())
        print(f"\nprofile (ours, one process, batch {pr['batch_size']}): {split}")
        print("\n| op | self CPU ms/step | share |\n|---|---|---|")
        for op in pr["top_ops_self_cpu"][:10]:
            print(f"| {op['op']} | {op['self_cpu_ms_per_step']} | {op['share']:.1%} |")


if __name__ == "__main__":
    main()
