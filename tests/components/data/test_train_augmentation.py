"""Training-time augmentation (``Recipe.train_crop_scale``, open_clip's RandomResizedCrop): the crop box as
torchvision draws it, only on training batches, seeded by the stream's position so a resumed run crops alike."""
import io
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vlforge.components.data.loader import ImageTransform, random_resized_crop_box, training_loader
from vlforge.components.data.shard import _SplitWriter
from vlforge.components.models.registry import family_names, get_family
from vlforge.errors import UserError

MEAN = STD = (0.5, 0.5, 0.5)
CROP = ImageTransform(16, MEAN, STD, train_crop_scale=(0.5, 1.0))
PLAIN = ImageTransform(16, MEAN, STD)
# the recipes that ship with the augmentation on (measured: BENCHMARKS.md, "CLIP quality vs open_clip")
AUGMENTED_RECIPES: set[tuple[str, str]] = set()


def gradient(width: int = 24, height: int = 24, shift: int = 0) -> Image.Image:
    """An image whose every pixel differs from its neighbours, so any change of crop changes the pixels."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([(x * 10 + shift) % 256, y * 10 % 256, (x * y + shift) % 256], -1).astype(np.uint8))


def write_shards(out: Path, n: int, per_shard: int) -> list[Path]:
    writer = _SplitWriter(out, "train", per_shard)
    for i in range(n):
        buf = io.BytesIO()
        gradient(shift=i).save(buf, "PNG")
        writer.write(f"s{i:04d}", {"png": buf.getvalue(), "txt": f"caption {i}".encode()})
    return [out / s["shard"] for s in writer.close()]


@pytest.mark.parametrize("size", [(64, 64), (80, 50), (20, 100)])
@pytest.mark.parametrize("scale", [(0.9, 1.0), (0.08, 1.0), (0.3, 0.5)])
def test_crop_box_stays_inside_and_respects_scale_and_ratio(size: tuple[int, int], scale: tuple[float, float]) -> None:
    width, height = size
    fitted = 0
    for seed in range(200):
        left, top, right, bottom = random_resized_crop_box(size, scale, random.Random(seed))
        w, h = right - left, bottom - top
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        centred = top == (height - h) // 2 and left == (width - w) // 2
        if centred and (w == width or h == height):
            continue  # (possibly) the centre fallback after 10 misses
        fitted += 1
        slack = (w + h) / (width * height)  # w and h are rounded to whole pixels
        assert scale[0] - slack <= w * h / (width * height) <= scale[1] + slack
        tol = 1.5 / min(w, h)  # the same rounding, on the aspect ratio
        assert 3 / 4 * (1 - tol) <= w / h <= 4 / 3 * (1 + tol)
    # a box fits only where the scale allows an aspect ratio in [3/4, 4/3]: not (0.9, 1.0) of 80 x 50, nor of 20 x 100
    assert (fitted > 0) == (size == (64, 64) or scale == (0.08, 1.0) or size == (80, 50) and scale == (0.3, 0.5))


def test_crop_box_falls_back_to_the_centre_crop_nearest_the_ratio() -> None:
    # 5:1 with >= 99% of the area: no box with aspect in [3/4, 4/3] fits, so the centred 27 x 20 (4/3 of the height)
    assert random_resized_crop_box((100, 20), (0.99, 1.0), random.Random(0)) == (36, 0, 63, 20)
    assert random_resized_crop_box((20, 100), (0.99, 1.0), random.Random(0)) == (0, 36, 20, 63)  # 20 / (3/4) = 27
    assert random_resized_crop_box((30, 30), (1.0, 1.0), random.Random(0)) == (0, 0, 30, 30)  # square: the whole


def test_same_seed_same_pixels_and_the_eval_path_never_crops() -> None:
    image = gradient(40, 30)
    a = CROP.augmented(image, random.Random(3))
    assert a.shape == (3, 16, 16) and torch.equal(a, CROP.augmented(image, random.Random(3)))
    assert any(not torch.equal(a, CROP.augmented(image, random.Random(s))) for s in range(4, 8))
    assert torch.equal(CROP(image), PLAIN(image))  # __call__ (validation, evaluation) ignores the crop
    assert torch.equal(PLAIN.augmented(image, random.Random(3)), PLAIN(image))  # off: augmented is __call__
    # a crop of the whole image is the plain squash resize
    whole = ImageTransform(16, MEAN, STD, train_crop_scale=(1.0, 1.0))
    assert torch.equal(whole.augmented(gradient(), random.Random(0)), PLAIN(gradient()))


def _pixels(loader, batches: int) -> list[tuple[list[str], torch.Tensor]]:
    it = iter(loader)
    return [(b.keys, b.pixel_values.clone()) for b in (next(it) for _ in range(batches))]


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_crop_deterministically_and_resume_alike(tmp_path: Path, workers: int) -> None:
    shards = write_shards(tmp_path, 24, per_shard=6)  # 10 batches of 4: each consumer passes over its shards again
    make = lambda transform=CROP, start=0, seed=5: training_loader(  # noqa: E731
        shards, rank=0, world=1, seed=seed, shuffle_buffer=8, transform=transform, batch_size=4,
        num_workers=workers, start_step=start)
    full = _pixels(make(), 10)
    again = _pixels(make(), 10)
    assert all(ka == kb and torch.equal(pa, pb) for (ka, pa), (kb, pb) in zip(full, again))
    resumed = _pixels(make(start=4), 6)  # the same samples and the same crops as the uninterrupted run
    assert all(ka == kb and torch.equal(pa, pb) for (ka, pa), (kb, pb) in zip(full[4:], resumed))
    plain = _pixels(make(PLAIN), 10)
    assert [k for k, _ in plain] == [k for k, _ in full]  # the crop changes pixels, never the sample order
    assert not any(torch.equal(pa, pb) for (_, pa), (_, pb) in zip(full, plain))
    # each pass over the data crops anew: the same image, a new position, a new box
    by_key: dict[str, list[torch.Tensor]] = {}
    for ks, px in full:
        for k, p in zip(ks, px):
            by_key.setdefault(k, []).append(p)
    assert any(not torch.equal(ps[0], ps[1]) for ps in by_key.values() if len(ps) > 1)


def test_off_by_default_and_carried_by_the_family_transform() -> None:
    for name in family_names():
        family = get_family(name)
        for recipe_name in family.recipe_names():
            recipe = family.recipe(recipe_name)
            expected = (0.9, 1.0) if (name, recipe_name) in AUGMENTED_RECIPES else None
            assert recipe.train_crop_scale == expected, (name, recipe_name)
    clip = get_family("clip")
    recipe = clip.recipe("tiny", {"train_crop_scale": [0.9, 1.0]})
    assert recipe.train_crop_scale == (0.9, 1.0) and clip.image_transform(recipe).train_crop_scale == (0.9, 1.0)
    assert get_family("vilt").image_transform(get_family("vilt").recipe("tiny")).train_crop_scale is None
    for bad in ([0.5, 1.5], [0.9, 0.5], [0.0, 1.0]):
        with pytest.raises(UserError, match="field 'train_crop_scale'"):
            clip.recipe("tiny", {"train_crop_scale": bad})
    assert math.isclose(clip.recipe("tiny", {"train_crop_scale": [0.08, 1]}).train_crop_scale[0], 0.08)
