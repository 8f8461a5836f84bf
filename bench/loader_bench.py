"""Loader benchmark: the training input pipeline's samples/s against the decode limit on the same shards and cores.

    python bench/loader_bench.py [--samples 4000] [--workers 2] [--image-size 64] [--repeat 3]

The decode limit is a tight loop with no framework: ``--workers`` processes (``multiprocessing``, one torch thread
each) that read their share of the shards with ``tarfile`` and decode + resize + normalise every image with the
same ``ImageTransform``. The pipeline is ``training_loader`` (shuffle buffer, rank/worker split, batches of 64)
with ``--workers`` DataLoader workers, consuming the same number of samples. Both include their process start-up;
the best of ``--repeat`` runs of each is kept. Prints a markdown table and writes bench/results/loader.json with
the ratio pipeline / limit (the aim is at least 0.9)."""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
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


def _decode_shards(args: tuple[list[str], int]) -> int:
    paths, size = args
    torch.set_num_threads(1)
    transform = ImageTransform(size, MEAN, STD)
    n = 0
    for path in paths:
        for raw in _read_tar(Path(path)):
            transform(decode_image(raw.image))
            n += 1
    return n


def decode_limit(shards: list[Path], workers: int, size: int) -> tuple[int, float]:
    start = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        n = sum(pool.map(_decode_shards, [([str(p) for p in shards[w::workers]], size) for w in range(workers)]))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp), args.samples)
        limit = max((n / s, n, s) for n, s in (decode_limit(shards, args.workers, args.image_size) for _ in range(args.repeat)))
        ours = max((n / s, n, s) for n, s in (pipeline(shards, args.workers, args.image_size, args.samples)
                                              for _ in range(args.repeat)))
    result = {"samples": args.samples, "workers": args.workers, "image_size": args.image_size,
              "decode_limit_samples_per_s": round(limit[0], 1), "pipeline_samples_per_s": round(ours[0], 1),
              "ratio": round(ours[0] / limit[0], 3)}
    print("| pipeline | samples/s |\n|---|---|")
    print(f"| decode limit (tight loop, {args.workers} processes) | {limit[0]:.0f} |")
    print(f"| training_loader ({args.workers} DataLoader workers) | {ours[0]:.0f} |")
    print(f"| ratio | {result['ratio']:.3f} |")
    out = REPO / "bench" / "results" / "loader.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
