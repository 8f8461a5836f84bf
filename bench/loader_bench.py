"""Loader benchmark: the training input pipeline's samples/s against the decode limit on the same shards and cores.

    python bench/loader_bench.py [--samples 4000] [--workers 2] [--image-size 64] [--repeat 3] [--tiny] [--out DIR]

The decode limit is a tight loop with no framework: ``--workers`` processes (``multiprocessing``, one torch thread
each) that read their share of the shards with ``tarfile`` and fully decode + resize + normalise every image with
the same ``ImageTransform``. The loader decodes JPEGs at a reduced DCT scale when the image is at least twice the
training size (``decode_image(data, size)``), so a third run, the same bare loop with that decode, isolates what
the framework itself (shuffle buffer, DataLoader workers, batching, inter-process transfer) costs. The pipeline is ``training_loader`` (shuffle buffer, rank/worker split, batches of 64)
with ``--workers`` DataLoader workers, consuming the same number of samples. Both include their process start-up;
they alternate, ``--repeat`` runs of each, and the best run of each gives the headline ratio pipeline / limit (the
aim is at least 0.9); medians, min/max and the ratio of the medians are recorded too, with the load average at
start and end and the tool versions. ``--tiny`` is 400 samples, 2 runs each (seconds). Prints a markdown table
and writes ``<out>/loader.json`` (default bench/results)."""
from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from vlforge.components.data.loader import (
    ImageTransform,
    _read_tar,
    decode_image,
    training_loader,
)
from vlforge.components.data.shard import _SplitWriter

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def write_shards(out: Path, samples: int, side: int = 128, per_shard: int = 250) -> list[Path]:
    """JPEGs like a crawl's: smooth random content at ``side`` px, quality 90."""
    writer = _SplitWriter(out, "train", per_shard)
    rng = np.random.default_rng(0)
    for i in range(samples):
        blocks = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(blocks).resize((side, side), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
        writer.write(f"b{i:07d}", {"jpg": buf.getvalue(), "txt": f"sample {i}".encode()})
    return [out / s["shard"] for s in writer.close()]


def _decode_shards(args: tuple[list[str], int, bool]) -> int:
    paths, size, draft = args
    torch.set_num_threads(1)
    transform = ImageTransform(size, MEAN, STD)
    n = 0
    for path in paths:
        for raw in _read_tar(Path(path)):
            transform(decode_image(raw.image, size if draft else None))
            n += 1
    return n


def decode_limit(shards: list[Path], workers: int, size: int, draft: bool = False) -> tuple[int, float]:
    """The bare loop: full JPEG decode + bicubic resize (``draft``: the loader's reduced-scale JPEG decode instead)."""
    start = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        n = sum(pool.map(_decode_shards, [([str(p) for p in shards[w::workers]], size, draft) for w in range(workers)]))
    return n, time.perf_counter() - start


def pipeline(shards: list[Path], workers: int, size: int, samples: int, batch: int = 64) -> tuple[int, float]:
    start = time.perf_counter()
    loader = training_loader(shards, rank=0, world=1, seed=0, shuffle_buffer=256, transform=ImageTransform(size, MEAN, STD),
                             batch_size=batch, num_workers=workers)
    n = 0
    for b in loader:
        n += len(b.keys)
        if n >= samples:
            break
    elapsed = time.perf_counter() - start
    del loader
    return n, elapsed


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("vlforge", "torch", "numpy", "pillow", "webdataset"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=None, help="samples per run (default 4000; 400 with --tiny)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=None, help="runs of each, alternating (default 3; 2 with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="400 samples, 2 runs of each")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for loader.json")
    args = ap.parse_args()
    args.samples = args.samples if args.samples is not None else (400 if args.tiny else 4000)
    args.repeat = args.repeat if args.repeat is not None else (2 if args.tiny else 3)
    for name in ("samples", "workers", "image_size", "repeat"):
        if getattr(args, name) < 1:
            sys.exit(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(1)
    loadavg_start = os.getloadavg()
    limits, drafts, pipes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp), args.samples)
        for _ in range(args.repeat):  # alternate, so a change in the machine's load hits all alike
            n, s = decode_limit(shards, args.workers, args.image_size)
            limits.append(n / s)
            n, s = pipeline(shards, args.workers, args.image_size, args.samples)
            pipes.append(n / s)
            n, s = decode_limit(shards, args.workers, args.image_size, draft=True)
            drafts.append(n / s)
    loadavg_end = os.getloadavg()
    limit, draft, ours = max(limits), max(drafts), max(pipes)
    result = {"samples": args.samples, "workers": args.workers, "image_size": args.image_size, "repeat": args.repeat,
              "tiny": args.tiny, "decode_limit_samples_per_s": round(limit, 1), "pipeline_samples_per_s": round(ours, 1),
              "ratio": round(ours / limit, 3),
              "decode_limit_runs": [round(v, 1) for v in limits], "pipeline_runs": [round(v, 1) for v in pipes],
              "decode_limit_spread": spread(limits), "pipeline_spread": spread(pipes),
              "ratio_of_medians": round(statistics.median(pipes) / statistics.median(limits), 3),
              "draft_limit_samples_per_s": round(draft, 1), "draft_limit_runs": [round(v, 1) for v in drafts],
              "draft_limit_spread": spread(drafts), "ratio_vs_draft_limit": round(ours / draft, 3),
              "ratio_of_medians_vs_draft_limit": round(statistics.median(pipes) / statistics.median(drafts), 3),
              "loadavg_start": list(loadavg_start), "loadavg_end": list(loadavg_end), "cpu_count": os.cpu_count(),
              "versions": versions()}
    print("| pipeline | best samples/s | median (min-max) |\n|---|---|---|")
    fmt = lambda s: f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"
    print(f"| decode limit (tight loop, {args.workers} processes) | {limit:.0f} | {fmt(result['decode_limit_spread'])} |")
    print(f"| training_loader ({args.workers} DataLoader workers) | {ours:.0f} | {fmt(result['pipeline_spread'])} |")
    print(f"| bare loop with the loader's reduced-scale JPEG decode | {draft:.0f} | {fmt(result['draft_limit_spread'])} |")
    print(f"| ratio training_loader / decode limit | {result['ratio']:.3f} | {result['ratio_of_medians']:.3f} |")
    print(f"| ratio training_loader / reduced-scale bare loop (framework overhead) | {result['ratio_vs_draft_limit']:.3f} "
          f"| {result['ratio_of_medians_vs_draft_limit']:.3f} |")
    print(f"| load average start / end | {loadavg_start[0]:.2f} / {loadavg_end[0]:.2f} | |")
    out = Path(args.out) / "loader.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out)


if __name__ == "__main__":
    main()
