"""GPU benchmark: CLIP ViT-B/32 (the clip family's paper-size ``base`` recipe, 151.3M parameters) trained by the
project's Ray trainer and by open_clip's trainer (``ViT-B-32``) on one NVIDIA GPU, in four variants: bf16 autocast,
fp16 autocast with a GradScaler, gradient accumulation over 4 micro-batches and activation checkpointing; samples/s
and model FLOPs utilisation (MFU) of each side and the ratio per variant (vlforge issue 9, item 6; issue 22, 6).

    .venv/bin/python bench/gpu_bench.py [--variants bf16,fp16,accum4,ckpt] [--steps 60] [--batch-size 256]
                                        [--loader-workers N] [--repeat 3] [--peak-tflops T] [--samples 5000]
                                        [--skip-peer]
    .venv/bin/python bench/gpu_bench.py --dry-run     # CPU only: same code paths, tiny batch (slow: bf16 on a CPU)

Variants (``--variants``, a comma list, default all), each the same change on both sides, bf16 unless named:

| variant | ours (recipe fields) | open_clip 3.3 (``open_clip_train.main``) |
|---|---|---|
| bf16 | ``precision: bf16`` | ``--precision amp_bf16`` |
| fp16 | ``precision: fp16`` (fp16 autocast + GradScaler) | ``--precision amp`` (the same) |
| accum4 | ``accum_freq: 4, batch_size: B/4`` | ``--accum-freq 4 --batch-size B/4`` |
| ckpt | ``grad_checkpointing: true`` | ``--grad-checkpointing`` |

accum4 keeps the optimizer step's batch B (``--batch-size``): both trainers take k micro-batches of B/k per step
(effective batch = batch_size x accum_freq, open_clip's convention) with a feature cache (GradCache), so the
gradient is the full batch's.

- ours: ``vlforge.components.training.loop.train`` (Ray Train TorchTrainer, NCCL) with the ``base`` recipe and
  ``use_gpu: true, num_workers: 1``, ``loader_workers`` DataLoader processes decoding off the training process;
  batch and steps from the command line. Every variant of one repeat runs in one subprocess (one Ray session).
- peer: open_clip 3.3's ``open_clip_train.main`` (``ViT-B-32 --force-quick-gelu``: HF CLIP's activation, the same
  151.3M parameters) in its own venv (``.bench-venvs/openclip``, see bench/openclip_bench.py ``--setup-peer``),
  ``--device cuda``, ``--workers`` = the same loader processes, the same shards, one process per run.
- data: builtin scenes ingested by the project's ingest stage at 224 px (``--samples``), both sides resampling the
  training shards for as many steps as asked.
- FLOPs per sample: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward of the family's
  ``training_step`` on the meta device (every matmul, the attention's included; about 3x the forward), applied to
  both sides and every variant: model FLOPs, so the recomputation of checkpointing and of the feature cache's extra
  forward counts as none (MFU as PaLM defines it). MFU = FLOPs/sample x samples/s / the GPU's dense bf16 peak (equal
  to its fp16 peak on these parts), from a small table by device name (H100 SXM/H200 989e12, H100 PCIe 756e12,
  A100 312e12, ...) or ``--peak-tflops``.
- samples/s as in bench/openclip_bench.py: samples between consecutive training log records over the time between
  them, first window and partial windows dropped, median window per run, median over ``--repeat`` runs (ours
  first on even repeats, open_clip first on odd ones); ratio ours / open_clip of the medians, per variant.
- peak GPU memory is not reported: neither trainer's log carries a memory figure from its training process (ours
  trains inside a Ray worker), and this script reads only those logs.

``--dry-run`` needs no GPU: ViT-B/32 on the CPU (``use_gpu: false``, bf16 autocast on the CPU), batch 4 (accum4:
4 micro-batches of 1), 2 steps, 64 scenes at 64 px resized to 224, through the same trainers, counter and JSON;
fp16 is recorded as skipped (vlforge refuses ``precision: fp16`` without a GPU) and the open_clip part runs only if
its venv exists. Writes ``<out>/gpu.json`` (``"variants": {name: {ours, peer, ratio_ours_over_peer, config}}``; the
top-level ``ours``, ``peer`` and ``ratio_ours_over_peer`` are the bf16 variant's; ``"dry_run": true`` for a dry
run) and prints a markdown table."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openclip_bench import (  # noqa: E402 - the shared helpers of the open_clip benchmark
    DEFAULT_PEER_VENV,
    REPO,
    BenchError,
    loadavg,
    our_versions,
    ours_windows,
    peer_missing_reason,
    prepare_data,
    run_ours,
    run_or_exit,
    run_peer,
    spread,
    write_json,
)

# Dense bf16 tensor-core peaks (FLOP/s) by device name; first match wins, so the specific names come first.
PEAK_BF16 = (
    ("GH200", 989e12), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
    ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12),
    ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12),
)
PEER_MODEL = "ViT-B-32"


def peak_flops(device_name: str | None, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    for key, value in PEAK_BF16:
        if device_name and key.lower() in device_name.lower():
            return value, f"table: {key}"
    return None, "unknown device (pass --peak-tflops)"


def flops_per_sample(overrides: dict, vocab: int, batch: int = 8) -> dict:
    """Model FLOPs of one training step of the base recipe, counted on the meta device, per sample."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from vlforge.components.models.registry import ImageTextBatch, get_family

    family = get_family("clip")
    recipe = family.recipe("base", overrides)
    with torch.device("meta"):
        model = family.build_model(recipe, vocab, {})
        pixels = torch.empty(batch, 3, recipe.image_size, recipe.image_size)
        ids = torch.zeros(batch, recipe.max_text_length, dtype=torch.long)
    # no attention mask: the mask builder reads values (impossible on meta); the matmuls are the same either way
    step = ImageTextBatch(pixels, ids, None, [""] * batch, [""] * batch)  # type: ignore[arg-type]
    counter = FlopCounterMode(display=False)
    with counter:
        loss = family.training_step(model, step, recipe)["loss"]
        forward = counter.get_total_flops()
        loss.backward()
    total = counter.get_total_flops()
    return {"forward": forward / batch, "train_step": total / batch, "train_over_forward": round(total / forward, 3),
            "params": sum(p.numel() for p in model.parameters())}


@dataclass(frozen=True)
class Variant:
    """One measured configuration: the same change on both sides."""
    name: str
    ours: dict  # recipe fields on top of the shared ones
    peer_precision: str  # open_clip's --precision
    peer_extra: tuple[str, ...] = ()
    accum_freq: int = 1  # micro-batches of --batch-size / accum_freq per optimizer step, both sides


VARIANTS = {v.name: v for v in (
    Variant("bf16", {"precision": "bf16"}, "amp_bf16"),
    Variant("fp16", {"precision": "fp16"}, "amp"),
    Variant("accum4", {"precision": "bf16", "accum_freq": 4}, "amp_bf16", accum_freq=4),
    Variant("ckpt", {"precision": "bf16", "grad_checkpointing": True}, "amp_bf16", ("--grad-checkpointing",)),
)}


def parse_variants(text: str | None) -> list[Variant]:
    """``--variants`` (a comma list; None: all, in table order) -> the variants, each once."""
    names = [n.strip() for n in text.split(",") if n.strip()] if text is not None else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise BenchError(f"--variants: unknown variant {unknown[0]!r} (choose from {', '.join(VARIANTS)})" if unknown
                         else f"--variants names no variant (choose from {', '.join(VARIANTS)})")
    return [VARIANTS[n] for n in dict.fromkeys(names)]


def variant_plan(v: Variant, shared: dict, batch: int) -> dict:
    """Variant ``v`` at an optimizer-step batch of ``batch``: our recipe overrides (``shared`` plus the variant's),
    run_peer's arguments, the JSON's config, and why it is skipped (None: it runs)."""
    if batch % v.accum_freq:
        raise BenchError(f"--batch-size {batch} is not a multiple of {v.accum_freq}, the micro-batches per step "
                         f"of variant {v.name}")
    micro = batch // v.accum_freq
    ours = {**shared, **v.ours, "batch_size": micro, "accum_freq": v.accum_freq}
    peer_args = ["--precision", v.peer_precision, "--batch-size", str(micro)]
    peer_args += (["--accum-freq", str(v.accum_freq)] if v.accum_freq > 1 else []) + list(v.peer_extra)
    config = {"global_batch": batch, "micro_batch": micro, "accum_freq": v.accum_freq,
              "ours_fields": {k: ours[k] for k in ("precision", "batch_size", "accum_freq")}
              | ({"grad_checkpointing": True} if ours.get("grad_checkpointing") else {}),
              "peer_args": peer_args}
    # the project's own rule (loop.check_scale_fields): fp16 autocast with a GradScaler only on a GPU
    skipped = "fp16 needs a GPU" if ours["precision"] == "fp16" and not ours["use_gpu"] else None
    return {"variant": v.name, "ours": ours, "config": config, "skipped": skipped,
            "peer": {"batch": batch, "precision": v.peer_precision, "accum_freq": v.accum_freq,
                     "extra": ["--force-quick-gelu", *v.peer_extra]}}


def device_info(dry_run: bool) -> dict:
    import torch

    if dry_run or not torch.cuda.is_available():
        return {"kind": "cpu", "name": None, "cuda": False}
    props = torch.cuda.get_device_properties(0)
    return {"kind": "cuda", "name": props.name, "cuda": True, "memory_gib": round(props.total_memory / 2**30, 1),
            "torch_cuda": torch.version.cuda, "count": torch.cuda.device_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for gpu.json")
    parser.add_argument("--dry-run", action="store_true", help="CPU, batch 4, 2 steps: checks the code paths")
    parser.add_argument("--variants", default=None, help=f"comma list of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 60; dry run 2)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per optimizer step (default 256; dry run 4); accum4: 4 micro-batches of a quarter")
    parser.add_argument("--log-every", type=int, default=None, help="steps per measured window (default 10; dry run 1)")
    parser.add_argument("--loader-workers", type=int, default=None,
                        help="DataLoader processes, both sides (default: cores - 2; dry run 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the training process (default 4; dry run 2)")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each side (default 3; dry run 1)")
    parser.add_argument("--samples", type=int, default=None, help="builtin scenes to ingest (default 5000; dry run 64)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak bf16 TFLOP/s")
    parser.add_argument("--peer-venv", default=str(DEFAULT_PEER_VENV))
    parser.add_argument("--skip-peer", action="store_true", help="ours only")
    args = parser.parse_args()
    run_or_exit(run, args)


def run(args: argparse.Namespace) -> None:
    dry = args.dry_run
    variants = parse_variants(args.variants)
    steps = args.steps or (2 if dry else 60)
    batch = args.batch_size or (4 if dry else 256)
    log_every = args.log_every or (1 if dry else 10)
    loader_workers = args.loader_workers if args.loader_workers is not None else (1 if dry else max(1, (os.cpu_count() or 4) - 2))
    threads = args.threads or (2 if dry else 4)
    repeat = args.repeat or (1 if dry else 3)
    samples = args.samples or (64 if dry else 5000)
    source_px = 64 if dry else 224
    if steps < 2 * log_every:
        raise BenchError(f"--steps must be at least 2 x --log-every = {2 * log_every} (got {steps})")
    steps = -(-steps // log_every) * log_every
    shared = {"steps": steps, "num_workers": 1, "threads_per_worker": threads, "loader_workers": loader_workers,
              "use_gpu": not dry, "log_every": log_every, "checkpoint_every": steps, "warmup_steps": min(10, steps)}
    plans = [variant_plan(v, shared, batch) for v in variants]
    device = device_info(dry)
    if not dry and not device["cuda"]:
        raise BenchError("no CUDA GPU is visible to torch here; run with --dry-run to check the code paths on the CPU")
    venv = Path(args.peer_venv).resolve()
    peer_reason = "--skip-peer" if args.skip_peer else peer_missing_reason(venv)
    if peer_reason and not dry and not args.skip_peer:
        raise BenchError(peer_reason)
    peak, peak_source = peak_flops(device["name"], args.peak_tflops)
    to_run = [p for p in plans if p["skipped"] is None]
    load_start, started = loadavg(), time.time()
    with tempfile.TemporaryDirectory(prefix="vlforge-gpu-") as tmp:
        work = Path(tmp)
        os.environ["VLFORGE_HOME"] = str(work / "home")
        os.environ.pop("VLFORGE_RAY_STORAGE", None)
        data = prepare_data(f"builtin:shapes?n={samples}&image_size={source_px}", source_px, 2048)
        flops = flops_per_sample({**shared, "batch_size": batch, "precision": "bf16"}, data["tokenizer_vocab"])
        print(f"data: {data['train_samples']} training samples ({data['ingest_s']} s); "
              f"{flops['train_step'] / 1e9:.1f} GFLOPs per sample per training step", file=sys.stderr)
        runs, peer_info = [], None
        for r in range(repeat if to_run else 0):
            for side in (("ours", "peer") if r % 2 == 0 else ("peer", "ours")):
                if side == "ours":
                    trained = run_ours([{"label": p["variant"], "overrides": p["ours"]} for p in to_run],
                                       dataset_dir=Path(data["dataset_dir"]), tokenizer_dir=Path(data["tokenizer_dir"]),
                                       work=work, recipe="base")
                    for res in trained:
                        wins = ours_windows(res["history"], batch, log_every)
                        if not wins:
                            raise RuntimeError(f"the project's trainer logged no full window after the first in "
                                               f"variant {res['label']} ({res['history']})")
                        runs.append({"repeat": r, "variant": res["label"], "side": "ours",
                                     "samples_per_s": statistics.median(wins), "windows": len(wins),
                                     "window_samples_per_s": [float(f"{w:.4g}") for w in wins],
                                     "wall_s": round(res["wall_s"], 1), "final_loss": res["summary"]["final_loss"]})
                        print(f"repeat {r}: {res['label']} ours {runs[-1]['samples_per_s']:.4g} samples/s",
                              file=sys.stderr)
                elif peer_reason is None:
                    for p in to_run:
                        res = run_peer(venv, model=PEER_MODEL, model_config=None, shards=data["train_shards"],
                                       steps=steps, log_every=log_every, threads=threads, workers=loader_workers,
                                       device="cpu" if dry else "cuda", work=work, warmup=min(10, steps), **p["peer"])
                        peer_info = {"params": res.pop("params"), "versions": res.pop("versions")}
                        runs.append({"repeat": r, "variant": p["variant"], "side": "peer", **res})
                        print(f"repeat {r}: {p['variant']} open_clip {res['samples_per_s']:.4g} samples/s",
                              file=sys.stderr)
    load_end = loadavg()

    def side(variant: str, label: str, about: dict) -> dict | None:
        vals = [x["samples_per_s"] for x in runs if x["variant"] == variant and x["side"] == label]
        if not vals:
            return None
        s = spread(vals)
        s["flops_per_s"] = s["median"] * flops["train_step"]
        s["mfu"] = round(s["flops_per_s"] / peak, 4) if peak else None
        return s | about

    results = {}
    for p in plans:
        ours = side(p["variant"], "ours", {"trainer": "vlforge loop.train (Ray Train, 1 worker)"})
        peer = side(p["variant"], "peer", {"trainer": "open_clip_train.main", "venv": str(venv)})
        ratio = round(ours["median"] / peer["median"], 3) if ours and peer else None
        results[p["variant"]] = {"ours": ours, "peer": peer, "ratio_ours_over_peer": ratio, "config": p["config"]} \
            | ({"skipped": p["skipped"]} if p["skipped"] else {})
    bf16 = results.get("bf16", {})
    result = {
        "bench": "gpu",
        "dry_run": dry,
        "device": device,
        "peak_bf16_flops": peak,
        "peak_source": peak_source,
        "model": {"recipe": "base", "peer_model": PEER_MODEL, "image_size": 224, "patch_size": 32,
                  "context": 77, "precision": "bf16 autocast", "params_ours": flops["params"],
                  "params_peer": peer_info["params"] if peer_info else None},
        "flops_per_sample": {"train_step": flops["train_step"], "forward": flops["forward"],
                             "train_over_forward": flops["train_over_forward"],
                             "method": "torch.utils.flop_counter.FlopCounterMode, meta device, one training_step + "
                                       "backward of the base recipe; model FLOPs (recomputation not counted), "
                                       "applied to both sides and every variant"},
        "config": {"steps": steps, "batch_size": batch, "log_every": log_every, "loader_workers": loader_workers,
                   "threads": threads, "repeat": repeat, "samples": data["train_samples"], "source_px": source_px},
        "variants": results,
        # the bf16 variant's figures, where earlier readers of gpu.json find them
        "ours": bf16.get("ours"),
        "peer": bf16.get("peer"),
        "ratio_ours_over_peer": bf16.get("ratio_ours_over_peer"),
        "peer_reason": peer_reason,
        "runs": runs,
        "load_average": {"start": load_start, "end": load_end},
        "wall_s": round(time.time() - started, 1),
        "versions": {"ours": our_versions(), "peer": peer_info["versions"] if peer_info else None},
    }
    write_json(Path(args.out) / "gpu.json", result)
    print_table(result)


def print_table(r: dict) -> None:
    def row(variant: str, name: str, s: dict | None) -> str:
        if not s:
            return f"| {variant} | {name} | - | - | - | - |"
        mfu = f"{s['mfu']:.1%}" if s["mfu"] is not None else "-"
        return (f"| {variant} | {name} | {s['median']:.4g} | {s['min']:.4g} - {s['max']:.4g} | "
                f"{s['flops_per_s'] / 1e12:.3g} | {mfu} |")

    c, f = r["config"], r["flops_per_sample"]
    where = "CPU (dry run)" if r["dry_run"] else r["device"]["name"]
    print(f"\nCLIP ViT-B/32 on {where}: batch {c['batch_size']} per optimizer step, {c['steps']} steps, "
          f"{c['loader_workers']} loader workers; {f['train_step'] / 1e9:.1f} GFLOPs/sample per step "
          f"(forward {f['forward'] / 1e9:.1f}); peak {r['peak_bf16_flops'] or '-'} ({r['peak_source']})\n")
    print("| variant | trainer | samples/s (median) | min - max | TFLOP/s | MFU |\n|---|---|---|---|---|---|")
    for name, v in r["variants"].items():
        fields = ", ".join(f"{k}: {str(x).lower() if isinstance(x, bool) else x}"
                           for k, x in v["config"]["ours_fields"].items())
        if v.get("skipped"):
            print(f"| {name} | not run: {v['skipped']} | - | - | - | - |")
            continue
        print(row(name, f"ours: Ray Train, 1 worker ({fields})", v["ours"]))
        print(row(name, f"open_clip {PEER_MODEL} {' '.join(v['config']['peer_args'])}", v["peer"]))
        ratio = v["ratio_ours_over_peer"]
        print(f"| {name} | ratio ours / open_clip | {ratio if ratio is not None else '-'} | | | |")
    if r["peer_reason"]:
        print(f"\nopen_clip not run: {r['peer_reason']}")


if __name__ == "__main__":
    main()
