"""Reading split webdataset shards for training and evaluation.

Training streams samples without end: each epoch shuffles the shard list with (seed, epoch), gives each
data-parallel rank every ``world``-th shard (all shards, sample-strided, when there are fewer shards than
ranks), and shuffles within a bounded buffer. The stream is a pure function of (seed, rank, world, position),
so resuming at step ``s`` skips ``s`` batches of raw bytes without decoding them and sees exactly the samples an
uninterrupted run would have seen. Evaluation reads a split in order with ``webdataset``."""
from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

IMAGE_EXTS = ("jpg", "png", "webp", "jpeg")


@dataclass
class RawSample:
    key: str
    image: bytes
    caption: str
    meta: dict


class ImageTransform:
    """PIL image -> normalised float tensor (3, size, size). Bicubic resize of the (already square) image."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        return (array - self.mean) / self.std


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def split_shards(dataset_dir: Path, split: str) -> list[Path]:
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    if split == "all":
        names = [s for sp in manifest["splits"].values() for s in sp["shards"]]
    else:
        names = manifest["splits"][split]["shards"]
    return [dataset_dir / n for n in names]


def _read_tar(path: Path) -> Iterator[RawSample]:
    group: dict[str, bytes] = {}
    current = None
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if current is not None and key != current:
                yield _to_raw(current, group)
                group = {}
            current = key
            group[ext] = tar.extractfile(member).read()
    if current is not None:
        yield _to_raw(current, group)


def _to_raw(key: str, group: dict[str, bytes]) -> RawSample:
    image = next(group[e] for e in IMAGE_EXTS if e in group)
    return RawSample(key, image, group.get("txt", b"").decode("utf-8"), json.loads(group.get("json", b"{}")))


def training_stream(shards: Sequence[Path], rank: int, world: int, seed: int, shuffle_buffer: int) -> Iterator[RawSample]:
    """Endless, deterministic stream of raw samples for one data-parallel rank."""
    if not shards:
        raise ValueError("no training shards")
    shards = sorted(shards)
    epoch = 0
    while True:
        order = list(shards)
        random.Random(f"{seed}:{epoch}:shards").shuffle(order)
        if len(order) >= world:
            mine, stride = order[rank::world], 1
        else:
            mine, stride = order, world
        rng = random.Random(f"{seed}:{epoch}:{rank}:buffer")
        buffer: list[RawSample] = []
        index = 0
        for shard in mine:
            for sample in _read_tar(shard):
                index += 1
                if stride > 1 and (index - 1) % stride != rank:
                    continue
                buffer.append(sample)
                if len(buffer) >= shuffle_buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))
        while buffer:
            yield buffer.pop(rng.randrange(len(buffer)))
        epoch += 1


def read_split(dataset_dir: Path, split: str) -> list[RawSample]:
    """Every sample of a split, in shard order, read with ``webdataset``."""
    urls = [str(p) for p in split_shards(dataset_dir, split)]
    if not urls:
        return []
    samples = []
    for item in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        ext = next(e for e in IMAGE_EXTS if e in item)
        samples.append(
            RawSample(item["__key__"], item[ext], item.get("txt", b"").decode("utf-8"), json.loads(item.get("json", b"{}")))
        )
    return samples
