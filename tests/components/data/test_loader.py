"""The training input pipeline: split by rank and dataloader worker, deterministic, resumable, resampling,
corrupt images skipped and counted."""
import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from vlforge.components.data.loader import (
    ImageTransform,
    training_loader,
    training_stream,
)
from vlforge.components.data.shard import _SplitWriter

TRANSFORM = ImageTransform(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def write_shards(out: Path, n: int, per_shard: int, corrupt: set[int] = frozenset(), prefix: str = "s") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    writer = _SplitWriter(out, "train", per_shard)
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (20, 20), (i % 256, 7, 9)).save(buf, "PNG")
        data = b"\x89PNG\r\n\x1a\ngarbage" if i in corrupt else buf.getvalue()
        writer.write(f"{prefix}{i:04d}", {"png": data, "txt": f"caption {i}".encode()})
    return [out / s["shard"] for s in writer.close()]


def keys(loader, batches: int) -> list[list[str]]:
    it = iter(loader)
    return [next(it).keys for _ in range(batches)]


def test_ranks_and_workers_split_an_epoch_exactly(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, 96, per_shard=8)  # 12 shards over 2 ranks x 2 workers
    seen = []
    for rank in (0, 1):
        loader = training_loader(shards, rank=rank, world=2, seed=3, shuffle_buffer=8, transform=TRANSFORM,
                                 batch_size=6, num_workers=2)
        seen += [k for batch in keys(loader, 8) for k in batch]  # 8 batches x 6 = one epoch of this rank's 48
    assert sorted(seen) == [f"s{i:04d}" for i in range(96)]  # every sample once: no overlap between consumers


def test_deterministic_and_resumable_at_a_step(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, 80, per_shard=10)
    make = lambda start=0, seed=5: training_loader(shards, rank=0, world=1, seed=seed, shuffle_buffer=16,
                                                   transform=TRANSFORM, batch_size=4, num_workers=2, start_step=start)
    full = keys(make(), 12)
    assert keys(make(), 12) == full
    assert keys(make(start=5), 7) == full[5:]  # resume: exactly the batches an uninterrupted run sees next
    assert keys(make(seed=6), 12) != full
    batch = next(iter(make()))
    assert batch.pixel_values.shape == (4, 3, 16, 16) and batch.pixel_values.dtype == torch.float32


def test_no_workers_matches_the_rank_stream(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, 40, per_shard=10)
    loader = training_loader(shards, rank=1, world=2, seed=1, shuffle_buffer=4, transform=TRANSFORM, batch_size=5,
                             num_workers=0)
    stream = training_stream(shards, 1, 2, 1, 4)
    assert [k for b in keys(loader, 4) for k in b] == [next(stream).key for _ in range(20)]


def test_resampling_draws_shards_with_replacement(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, 30, per_shard=10)  # 3 shards, 4 consumers: resampling still feeds everyone
    streams = [training_stream(shards, c, 4, 0, 5, resample=True) for c in range(4)]
    firsts = [[next(s).key for _ in range(60)] for s in streams]
    assert all(len(f) == 60 for f in firsts) and len({tuple(f) for f in firsts}) == 4
    again = training_stream(shards, 2, 4, 0, 5, resample=True)
    assert [next(again).key for _ in range(60)] == firsts[2]


def test_corrupt_images_are_counted_skips(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, 20, per_shard=20, corrupt={3, 11})
    loader = training_loader(shards, rank=0, world=1, seed=0, shuffle_buffer=1, transform=TRANSFORM, batch_size=6,
                             num_workers=0)
    it = iter(loader)
    batches = [next(it) for _ in range(3)]
    assert sum(b.skipped for b in batches) == 2
    assert not {"s0003", "s0011"} & {k for b in batches for k in b.keys}


@pytest.mark.parametrize("workers", [1, 2])
def test_batches_come_in_order_across_workers(tmp_path: Path, workers: int) -> None:
    shards = write_shards(tmp_path, 40, per_shard=5)
    a = keys(training_loader(shards, rank=0, world=1, seed=9, shuffle_buffer=3, transform=TRANSFORM, batch_size=4,
                             num_workers=workers), 6)
    b = keys(training_loader(shards, rank=0, world=1, seed=9, shuffle_buffer=3, transform=TRANSFORM, batch_size=4,
                             num_workers=workers, start_step=3), 3)
    assert b == a[3:]


def test_reduced_scale_jpeg_decode_keeps_the_training_size_and_the_content() -> None:
    from vlforge.components.data.loader import decode_image

    gen = torch.Generator().manual_seed(0)
    blocks = (torch.rand(8, 8, 3, generator=gen) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(blocks).resize((160, 160), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    assert decode_image(data).size == (160, 160)
    assert decode_image(data, 64).size == (80, 80)  # libjpeg's 1/2 scale: the smallest that keeps >= 64 px
    assert decode_image(data, 16).size == (20, 20)  # 1/8
    transform = ImageTransform(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    full, reduced = transform(decode_image(data)), transform(decode_image(data, 64))
    assert reduced.shape == full.shape == (3, 64, 64)
    assert (full - reduced).abs().mean() * 0.5 * 255 < 2.0  # under 2/255 per pixel on average
    png = io.BytesIO()
    Image.fromarray(blocks).resize((160, 160)).save(png, "PNG")
    assert decode_image(png.getvalue(), 64).size == (160, 160)  # only JPEG has reduced-scale decoding
