"""Reading split webdataset shards for training and evaluation.

Training streams samples without end: each epoch shuffles the shard list with (seed, epoch), gives each
data-parallel rank every ``world``-th shard (all shards, sample-strided, when there are fewer shards than
ranks), and shuffles within a bounded buffer. The stream is a pure function of (seed, rank, world, position),
so resuming at step ``s`` skips ``s`` batches of raw bytes without decoding them and sees exactly the samples an
uninterrupted run would have seen. An image with several captions (a benchmark's ``captions``) is one sample per
pass, with one of its captions drawn from the same seeded stream each time it is read. ``training_loader`` is the same stream split further across torch DataLoader
workers that decode, resize and normalise in parallel, with optional shard resampling (``bench/loader_bench.py``
measures it against a bare decode loop).

Two options follow open_clip's data flags. ``epoch_samples`` (``Recipe.train_num_samples``, open_clip's
``--train-num-samples``) fixes an epoch's length: after that many samples (rounded up to whole batches per
consumer) the stream starts its next epoch, a new shard order (resampled: new shard draws) and an empty shuffle
buffer, however far it got through the shards; training still lasts ``steps``. A ``DataMix`` (``vlforge run train
--data A=3 --data B=1``) draws each sample's dataset by weight from a seeded RNG per consumer and epoch, then
takes that dataset's next sample from its own stream (a dataset that runs out starts its next pass): the batches
are again a pure function of (seed, rank, world, position), so a resumed run sees what an uninterrupted one
would. Evaluation reads a split in order with ``webdataset``.

Training-time augmentation, open_clip's default (``Recipe.train_crop_scale``, carried by the family's
``ImageTransform``): each training image is a random resized crop, its box drawn from an RNG seeded by (seed,
consumer, position in the consumer's stream), so it too is a pure function of the stream's position and a resumed
run crops what an uninterrupted one would. ``ImageTransform.__call__`` (validation, evaluation, filtering) never
crops."""
from __future__ import annotations

import io
import itertools
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from vlforge.components.data.shard import read_tar_groups

IMAGE_EXTS = ("jpg", "png", "webp", "jpeg")


@dataclass
class RawSample:
    key: str
    image: bytes
    caption: str
    meta: dict


class ImageTransform:
    """PIL image -> normalised float tensor (3, size, size): RGB, a bicubic resize, then ``(x / 255 - mean) / std``.

    ``resize``: ``squash`` (the whole image to size x size, vlforge's own way; its shards hold square images) or
    ``shortest-crop`` (the shortest side to ``size``, the other ``int(size * long / short)``, then the centre
    size x size, top-left at ``(excess // 2)``: transformers' ``CLIPImageProcessor``, the way CLIP and open_clip
    preprocess). Both give the same pixels for a square image. An imported model keeps its source's way
    (``Recipe.image_resize``).

    ``train_crop_scale``: the training stream's augmentation (``augmented``, used by ``TrainingBatches`` only):
    a random resized crop covering that share of the image's area, open_clip's ``RandomResizedCrop``; None: none."""

    RESIZE_MODES = ("squash", "shortest-crop")

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], resize: str = "squash",
                 train_crop_scale: tuple[float, float] | None = None) -> None:
        if resize not in self.RESIZE_MODES:
            raise ValueError(f"resize mode '{resize}' (modes: {', '.join(self.RESIZE_MODES)})")
        self.size, self.resize = size, resize
        self.train_crop_scale = tuple(train_crop_scale) if train_crop_scale is not None else None
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def _resized(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if (width, height) == (self.size, self.size):
            return image
        if self.resize == "squash" or width == height:
            return image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        short, long = min(width, height), max(width, height)
        new_long = int(self.size * long / short)
        new = (self.size, new_long) if width < height else (new_long, self.size)
        image = image.resize(new, Image.Resampling.BICUBIC)
        left, top = (new[0] - self.size) // 2, (new[1] - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def _normalised(self, image: Image.Image) -> torch.Tensor:
        array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        return (array - self.mean) / self.std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self._normalised(self._resized(image.convert("RGB")))

    def augmented(self, image: Image.Image, rng: random.Random) -> torch.Tensor:
        """A training image: with ``train_crop_scale``, the crop ``random_resized_crop_box`` draws from ``rng``,
        bicubic to size x size (torchvision's ``resized_crop`` on a PIL image); without it, ``__call__``."""
        if self.train_crop_scale is None:
            return self(image)
        image = image.convert("RGB")
        box = random_resized_crop_box(image.size, self.train_crop_scale, rng)
        return self._normalised(image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box))


CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default aspect ratios (open_clip passes none)


def random_resized_crop_box(image_size: tuple[int, int], scale: tuple[float, float], rng: random.Random,
                            ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of a random resized crop of a ``(width, height)`` image, drawn as
    torchvision's ``RandomResizedCrop.get_params`` draws it: up to 10 tries of an area share uniform in ``scale``
    and a log-uniform aspect ratio in ``ratio``, the first box that fits placed uniformly; else the centre crop
    closest to ``ratio`` (the whole image when its own ratio lies inside)."""
    width, height = image_size
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def decode_image(data: bytes, size: int | None = None) -> Image.Image:
    """RGB image from encoded bytes. With ``size``, a JPEG is decoded at the smallest of libjpeg's DCT scales (1/2,
    1/4, 1/8) that still leaves both sides at least ``size`` px (Pillow's ``draft``, as ``Image.thumbnail`` does):
    1.8x faster for a 2x reduction, within 1/255 of a full decode on average after the final resize."""
    with Image.open(io.BytesIO(data)) as im:
        if size is not None:
            im.draft("RGB", (size, size))
        return im.convert("RGB")


def split_shards(dataset_dir: Path, split: str) -> list[Path]:
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    if split == "all":
        names = [s for sp in manifest["splits"].values() for s in sp["shards"]]
    else:
        names = manifest["splits"][split]["shards"]
    return [dataset_dir / n for n in names]


def _read_tar(path: Path, rng: random.Random | None = None) -> Iterator[RawSample]:
    """The raw samples of one shard; with ``rng``, a sample with several captions gets one of them at random."""
    for key, group in read_tar_groups(path):
        raw = _to_raw(key, group)
        captions = raw.meta.get("captions")
        if rng is not None and captions and len(captions) > 1:
            raw.caption = captions[rng.randrange(len(captions))]
        yield raw


def _to_raw(key: str, group: dict[str, bytes]) -> RawSample:
    image = next(group[e] for e in IMAGE_EXTS if e in group)
    return RawSample(key, image, group.get("txt", b"").decode("utf-8"), json.loads(group.get("json", b"{}")))


def training_stream(shards: Sequence[Path], rank: int, world: int, seed: int | str, shuffle_buffer: int,
                    resample: bool = False, epoch_samples: int | None = None) -> Iterator[RawSample]:
    """Endless, deterministic stream of raw samples for one consumer (a data-parallel rank, or one dataloader
    worker of one rank: see ``TrainingBatches``). ``resample``: draw shards with replacement (seeded per consumer)
    instead of splitting each epoch's shard order — every consumer sees every shard, so a shard count below the
    number of consumers costs no stride and no consumer runs dry first (webdataset's ``ResampledShards``).
    ``epoch_samples``: this consumer's epoch ends after that many samples (or at the end of its pass over the
    shards, if sooner; a resampled epoch never ends by itself) and the next starts afresh with the next epoch's
    seeds."""
    if not shards:
        raise ValueError("no training shards")
    shards = sorted(shards)
    epoch = 0
    while True:
        samples = (_resampled_epoch(shards, rank, seed, shuffle_buffer, epoch) if resample
                   else _shuffled_epoch(shards, rank, world, seed, shuffle_buffer, epoch))
        yield from samples if epoch_samples is None else itertools.islice(samples, epoch_samples)
        samples.close()
        epoch += 1


def _shuffled_epoch(shards: Sequence[Path], rank: int, world: int, seed: int | str, shuffle_buffer: int,
                    epoch: int) -> Iterator[RawSample]:
    order = list(shards)
    random.Random(f"{seed}:{epoch}:shards").shuffle(order)
    if len(order) >= world:
        mine, stride = order[rank::world], 1
    else:
        mine, stride = order, world
    rng = random.Random(f"{seed}:{epoch}:{rank}:buffer")
    pick_caption = random.Random(f"{seed}:{epoch}:{rank}:captions")
    buffer: list[RawSample] = []
    index = 0
    for shard in mine:
        for sample in _read_tar(shard, pick_caption):
            index += 1
            if stride > 1 and (index - 1) % stride != rank:
                continue
            buffer.append(sample)
            if len(buffer) >= shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
    while buffer:
        yield buffer.pop(rng.randrange(len(buffer)))


def _resampled_epoch(shards: Sequence[Path], consumer: int, seed: int | str, shuffle_buffer: int,
                     epoch: int) -> Iterator[RawSample]:
    tag = f"{seed}:{consumer}" if epoch == 0 else f"{seed}:{consumer}:{epoch}"  # epoch 0: the seeds of old
    pick = random.Random(f"{tag}:resample")
    rng = random.Random(f"{tag}:buffer")
    pick_caption = random.Random(f"{tag}:captions")
    buffer: list[RawSample] = []
    while True:
        for sample in _read_tar(shards[pick.randrange(len(shards))], pick_caption):
            buffer.append(sample)
            if len(buffer) >= shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))


@dataclass(frozen=True)
class DataMix:
    """The training shards of several datasets, each dataset drawn per sample with probability weight / total."""

    sources: tuple[tuple[Path, ...], ...]  # one dataset's training shards each
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.weights) or not self.sources:
            raise ValueError("a data mix needs one weight per dataset, and at least one dataset")
        if any(not math.isfinite(w) or w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"data mix weights {self.weights}: each must be >= 0 and their sum > 0")

    @classmethod
    def of(cls, pairs: Sequence[tuple[Sequence[Path | str], float]]) -> DataMix:
        """From (shards, weight) pairs (the form a Ray worker's config carries)."""
        return cls(tuple(tuple(Path(p) for p in shards) for shards, _ in pairs), tuple(float(w) for _, w in pairs))


def mixed_stream(mix: DataMix, consumer: int, consumers: int, seed: int, shuffle_buffer: int, resample: bool = False,
                 epoch_samples: int | None = None) -> Iterator[RawSample]:
    """Endless, deterministic stream of one consumer over a ``DataMix``: each sample's dataset drawn by weight
    (``random.Random`` seeded by seed, epoch and consumer: webdataset's ``RandomMix`` draws from the process-wide
    RNG, which nothing here may share), then that dataset's next sample from its own ``training_stream`` (seeded
    apart per dataset). ``epoch_samples``: after that many samples every dataset's stream starts over with the next
    epoch's seeds."""
    cum_weights = list(itertools.accumulate(mix.weights))
    indices = range(len(mix.sources))
    epoch = 0
    while True:
        streams = [training_stream(shards, consumer, consumers, f"{seed}:{epoch}:source{i}", shuffle_buffer, resample)
                   for i, shards in enumerate(mix.sources)]
        pick = random.Random(f"{seed}:{epoch}:{consumer}:mix")
        drawn = 0
        while epoch_samples is None or drawn < epoch_samples:
            yield next(streams[pick.choices(indices, cum_weights=cum_weights)[0]])
            drawn += 1
        for stream in streams:
            stream.close()
        epoch += 1


@dataclass
class DecodedBatch:
    pixel_values: torch.Tensor  # (B, 3, size, size), normalised
    captions: list[str]
    keys: list[str]
    skipped: int  # samples whose image did not decode, skipped on the way to this batch (a counted skip)
    meta: list[dict] = field(default_factory=list)  # each sample's json (label, scene facts)


class TrainingBatches(torch.utils.data.IterableDataset):
    """The training input pipeline: shards -> shuffled raw samples -> decoded, resized, normalised batches.

    Split two ways: by data-parallel rank (Ray Train worker) and, inside a rank, by torch DataLoader worker; each
    (rank, worker) pair is one consumer of ``training_stream`` (``world * num_workers`` consumers). The DataLoader
    takes batches round-robin from its workers, so the batch sequence is a pure function of (seed, rank, world,
    num_workers, resample, epoch_samples) and resuming at ``start_step`` has each worker skip, undecoded, the raw
    samples of the batches it made before that step. Decoding happens in the workers, off the training process.

    ``shards``: one dataset's training shards, or a ``DataMix``. ``epoch_samples``: the length of an epoch over
    all consumers (``Recipe.train_num_samples``), rounded up as open_clip does to whole batches per consumer."""

    def __init__(self, shards: Sequence[Path] | DataMix, *, rank: int, world: int, seed: int, shuffle_buffer: int,
                 transform: ImageTransform, batch_size: int, num_workers: int, start_step: int = 0,
                 resample: bool = False, epoch_samples: int | None = None) -> None:
        super().__init__()
        self.shards = shards if isinstance(shards, DataMix) else list(shards)
        self.rank, self.world, self.seed = rank, world, seed
        self.shuffle_buffer, self.transform, self.batch_size = shuffle_buffer, transform, batch_size
        self.num_workers, self.start_step, self.resample = max(0, num_workers), start_step, resample
        self.epoch_samples = epoch_samples

    def consumer_stream(self, consumer: int, consumers: int) -> Iterator[RawSample]:
        """The raw samples of one consumer, from its first (an epoch of ``epoch_samples`` over all consumers is
        ``ceil(epoch_samples / (consumers * batch_size))`` batches of each)."""
        epoch = None if self.epoch_samples is None else \
            math.ceil(self.epoch_samples / (consumers * self.batch_size)) * self.batch_size
        if isinstance(self.shards, DataMix):
            return mixed_stream(self.shards, consumer, consumers, self.seed, self.shuffle_buffer, self.resample, epoch)
        return training_stream(self.shards, consumer, consumers, self.seed, self.shuffle_buffer, self.resample, epoch)

    def __iter__(self) -> Iterator[DecodedBatch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader asks its workers for batches round-robin from worker 0, so after a resume at step s the
        # worker asked first must play the part of the worker that made batch s: rotate the roles by s.
        role = (worker + self.start_step) % workers
        consumer, consumers = self.rank * workers + role, self.world * workers
        stream = self.consumer_stream(consumer, consumers)
        made_before = len(range(role, self.start_step, workers))  # batches this role made before start_step
        position = made_before * self.batch_size  # raw samples of this consumer's stream read so far
        for _ in range(position):
            next(stream)
        size = self.transform.size
        augment = self.transform.train_crop_scale is not None
        while True:
            # each image is written straight into the batch, allocated in shared memory inside a DataLoader worker
            # so that handing it to the training process copies nothing
            pixels = torch.empty((self.batch_size, 3, size, size))
            if info is not None:
                pixels.share_memory_()
            captions: list[str] = []
            keys: list[str] = []
            metas: list[dict] = []
            skipped = 0
            while len(keys) < self.batch_size:
                raw = next(stream)
                position += 1
                try:
                    image = decode_image(raw.image, size)
                    if augment:  # the crop's RNG is seeded by the sample's position: a resumed run crops the same
                        crop_rng = random.Random(f"{self.seed}:{consumer}:{consumers}:{position}:crop")
                        pixels[len(keys)] = self.transform.augmented(image, crop_rng)
                    else:
                        pixels[len(keys)] = self.transform(image)
                except Exception:  # noqa: BLE001 - a corrupt image inside a shard is a counted skip, not a crash
                    skipped += 1
                    continue
                captions.append(raw.caption)
                keys.append(raw.key)
                metas.append(raw.meta)
            yield DecodedBatch(pixels, captions, keys, skipped, metas)


def _as_is(batch: DecodedBatch) -> DecodedBatch:
    return batch  # batches are whole already (a module-level function: picklable for spawned workers)


def _single_thread_worker(_: int) -> None:
    torch.set_num_threads(1)  # one core per worker: the workers are the parallelism


def training_loader(shards: Sequence[Path] | DataMix, *, rank: int, world: int, seed: int, shuffle_buffer: int,
                    transform: ImageTransform, batch_size: int, num_workers: int = 2, start_step: int = 0,
                    resample: bool = False, epoch_samples: int | None = None,
                    prefetch_factor: int = 4) -> torch.utils.data.DataLoader:
    """A DataLoader over ``TrainingBatches`` (batches are made in the workers; ``batch_size=None`` here)."""
    dataset = TrainingBatches(shards, rank=rank, world=world, seed=seed, shuffle_buffer=shuffle_buffer,
                              transform=transform, batch_size=batch_size, num_workers=num_workers,
                              start_step=start_step, resample=resample, epoch_samples=epoch_samples)
    extra = {"prefetch_factor": prefetch_factor, "worker_init_fn": _single_thread_worker} if num_workers else {}
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers,
                                       collate_fn=_as_is, **extra)


def read_split(dataset_dir: Path, split: str) -> list[RawSample]:
    """Every sample of a split, in shard order, read with ``webdataset``; a text-only dataset's (format ``text``,
    no image: ``image`` is empty) in index order from ``samples.parquet``."""
    if json.loads((dataset_dir / "manifest.json").read_text()).get("format") == "text":
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(dataset_dir / "samples.parquet").read().to_pylist()
        return [RawSample(r["key"], b"", r["caption"], {"label": r["label"]}) for r in rows
                if split == "all" or r["split"] == split]
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
