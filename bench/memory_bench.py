"""Memory benchmark: peak memory of one CLIP training step on the CPU, per sample, by batch size, with and without
activation checkpointing (``grad_checkpointing``), gradient accumulation (``accum_freq``, GradCache) and the local
contrastive loss (``local_loss``, two ranks) — issue 22, item 1.

    .venv/bin/python bench/memory_bench.py [--recipes tiny base] [--batches 64 128 256 512 1024]
                                           [--variants plain checkpointing accum4 ranks2 ranks2-local]
                                           [--max-base-batch 128] [--out DIR]
    .venv/bin/python bench/memory_bench.py --tiny     # seconds: the tiny recipe at batches 8 and 16

How: every measurement runs in a fresh Python process (nothing cached from another one). It builds the family's
model from the recipe as the training loop does (``build_model``, ``enable_grad_checkpointing``, the loop's AdamW),
takes one warm-up step (so AdamW's state exists, as in every step after the first), then records the second step
(zero_grad, forward, backward, optimizer step; with ``accum_freq`` the loop's ``accumulate_gradients``) with torch's
memory profiler (``torch.profiler.profile(profile_memory=True)``). Reported: the resident state before the step
(parameters + AdamW's state, MiB); the step's peak: how far allocated CPU memory rose above that during the step
(the running sum of the profiler's allocation and free records in time order: gradients, activations, temporaries);
and the batch-dependent part, that peak less the gradients, per sample (KiB/sample). Variants:

- ``plain``: one process, the whole batch in one step.
- ``checkpointing``: ``grad_checkpointing: true``.
- ``accum4``: ``accum_freq: 4``, micro-batches of batch/4 (open_clip's convention: the batch is the step's samples).
- ``ranks2`` / ``ranks2-local``: two gloo ranks on loopback, each with batch/2 samples, the loss over the gathered
  features (``gather_features``) without / with ``local_loss``; rank 0 is profiled, per sample = per rank-0 sample.

Random pixels and token ids (memory does not depend on values). The base recipe (ViT-B/32 at 224 px) is slow on the
CPU, so it stops at ``--max-base-batch``. Writes ``<out>/memory.json`` (default bench/results) and prints a table."""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "plain": {"overrides": {}, "ranks": 1},
    "checkpointing": {"overrides": {"grad_checkpointing": True}, "ranks": 1},
    "accum4": {"overrides": {"accum_freq": 4}, "ranks": 1},
    "ranks2": {"overrides": {"gather_features": True, "local_loss": False}, "ranks": 2},
    "ranks2-local": {"overrides": {"gather_features": True, "local_loss": True}, "ranks": 2},
}
VOCAB = 1000


def _batch(recipe: Any, n: int, seed: int) -> Any:
    import torch
    from vlforge.components.models.registry import ImageTextBatch

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, recipe.image_size, recipe.image_size, generator=g)
    ids = torch.randint(4, VOCAB, (n, recipe.max_text_length), generator=g)
    mask = torch.ones_like(ids)
    return ImageTextBatch(pixels, ids, mask, [f"caption {i}" for i in range(n)], [f"{seed}-{i}" for i in range(n)])


def measure(spec: dict[str, Any], rank: int = 0, world: int = 1) -> dict[str, Any]:
    """One profiled training step of ``spec`` (recipe, batch, variant) in this process; rank 0's figures."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from vlforge.components.models.common.checkpointing import enable_grad_checkpointing
    from vlforge.components.models.registry import ImageTextBatch, get_family
    from vlforge.components.training.accumulation import accumulate_gradients
    from vlforge.components.training.loop import make_optimizer

    torch.manual_seed(0)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    variant = VARIANTS[spec["variant"]]
    family = get_family("clip")
    per_rank = spec["batch"] // world
    recipe = family.recipe(spec["recipe"], {"batch_size": per_rank, **variant["overrides"]})
    model = family.build_model(recipe, VOCAB, {})
    if recipe.grad_checkpointing:
        enable_grad_checkpointing(model)
    model.train()
    optimizer = make_optimizer(model, recipe, torch.device("cpu"))
    k = recipe.accum_freq

    def step(seed: int) -> float:
        optimizer.zero_grad(set_to_none=True)
        batch = _batch(recipe, per_rank, seed * 100 + rank)
        if k > 1:  # the same samples in k micro-batches
            n = per_rank // k
            micro = [ImageTextBatch(batch.pixel_values[i:i + n], batch.input_ids[i:i + n],
                                    batch.attention_mask[i:i + n], batch.captions[i:i + n], batch.keys[i:i + n])
                     for i in range(0, per_rank, n)]
            loss = accumulate_gradients(family, model, micro, recipe)["loss"]
        else:
            loss = family.training_step(model, batch, recipe)["loss"]
            loss.backward()
        if world > 1:  # the gradient all-reduce data parallelism does (DDP), in place
            for p in model.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
        optimizer.step()
        return float(loss.detach())

    step(0)
    resting = sum(t.numel() * t.element_size() for t in (*model.parameters(), *(
        v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor))))
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)  # frees the warm-up's gradients before the profiler starts: a block
    # allocated before it and freed inside it would be left out of the running sum
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = step(1)
    seconds = time.perf_counter() - start
    if rank != 0:
        return {}
    params = sum(p.numel() for p in model.parameters())
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    step_peak = allocation_peak(prof)
    return {**spec, "ranks": world, "per_rank_batch": per_rank, "accum_freq": k, "loss": round(loss, 4),
            "params": params, "resident_mib": round(resting / 2**20, 2),
            "step_peak_mib": round(step_peak / 2**20, 2), "gradients_mib": round(grad_bytes / 2**20, 2),
            "batch_peak_mib": round((step_peak - grad_bytes) / 2**20, 2),
            "batch_kib_per_sample": round((step_peak - grad_bytes) / 2**10 / per_rank, 1),
            "profiled_step_s": round(seconds, 2)}


def allocation_peak(prof: Any) -> int:
    """The highest the CPU memory allocated during the profiled region rose above where it started (bytes): the
    running sum of the profiler's allocation (+) and free (-) records in time order."""
    from torch._C._autograd import DeviceType

    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def _rank_main(rank: int, world: int, port: int, spec: dict[str, Any], out: str) -> None:
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = measure(spec, rank, world)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """``measure`` in a fresh process (``world`` of them for the two-rank variants)."""
    world = VARIANTS[spec["variant"]]["ranks"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // world))}
        proc = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec), "--result", str(out)],
                              capture_output=True, text=True, env=env, cwd=REPO, check=False)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {**spec, "error": tail[0][:300]}
        return json.loads(out.read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(spec: dict[str, Any], result: str) -> None:
    world = VARIANTS[spec["variant"]]["ranks"]
    if world == 1:
        Path(result).write_text(json.dumps(measure(spec)))
        return
    import torch.multiprocessing as tmp

    tmp.spawn(_rank_main, args=(world, _free_port(), spec, result), nprocs=world, join=True)


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| recipe | batch | variant | resident MiB | step peak MiB | batch-dependent MiB | KiB / sample | step s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['recipe']} | {r['batch']} | {r['variant']} | failed: {r['error']} | | | | |")
            continue
        print(f"| {r['recipe']} | {r['batch']} | {r['variant']} | {r['resident_mib']:.1f} | {r['step_peak_mib']:.1f} | "
              f"{r['batch_peak_mib']:.1f} | {r['batch_kib_per_sample']:.1f} | {r['profiled_step_s']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="+", default=["tiny", "base"])
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 128, 256, 512, 1024])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--max-base-batch", type=int, default=128, help="the largest batch measured for the base recipe")
    ap.add_argument("--tiny", action="store_true", help="tiny recipe, batches 8 and 16 (seconds)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        _child(json.loads(args.measure), args.result)
        return
    if args.tiny:
        args.recipes, args.batches = ["tiny"], [8, 16]
    for b in args.batches:
        if b % 8:
            ap.error(f"--batches: {b} is not a multiple of 8 (two ranks x four micro-batches)")
    specs = [{"recipe": r, "batch": b, "variant": v} for r in args.recipes for b in args.batches for v in args.variants
             if r != "base" or b <= args.max_base_batch]
    load = os.getloadavg()[0]
    rows = []
    for spec in specs:
        rows.append(run_one(spec))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    import torch

    report = {"rows": rows, "torch": torch.__version__, "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "load_start": round(load, 2), "load_end": round(os.getloadavg()[0], 2), "tiny": args.tiny}
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "memory.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(target)
    print_table(rows)


if __name__ == "__main__":
    main()
