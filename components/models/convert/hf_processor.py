"""A vlforge model's image preprocessing, and the same preprocessing as a transformers ``CLIPImageProcessor``
config (``preprocessor_config.json``).

vlforge preprocesses every image one way (``components/data/loader.py`` ``ImageTransform``): RGB, a bicubic
resize of the whole image to ``image_size`` x ``image_size`` (no crop, no aspect ratio kept: vlforge's shards hold
square images), then ``(x / 255 - mean) / std`` with the family's mean and std. ``CLIPImageProcessor`` does the
same with ``size={"height": s, "width": s}``, ``do_center_crop=False`` and ``resample=BICUBIC``; a checkpoint's
own preprocessing (a transformers ``preprocessor_config.json``, open_clip's ``preprocess_cfg``) is read back into
a ``Preprocessing`` on import."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlforge.components.models.registry import FAMILY_FILE, get_family
from vlforge.errors import UserError

PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as transformers' image processors write it
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class Preprocessing:
    """What an image goes through before the model sees it. ``resize``: ``squash`` (the whole image to a square,
    vlforge's way) or ``shortest-crop`` (shortest side to ``image_size``, then a centre crop: CLIP's and
    open_clip's way; the same pixels for a square image)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize: str = "squash"

    def as_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize": self.resize}


def model_preprocessing(model_dir: Path) -> Preprocessing:
    """The preprocessing vlforge applies for the checkpoint in ``model_dir``: the recipe's image size and the
    family's mean and std (what training and evaluation build ``ImageTransform`` from)."""
    path = Path(model_dir) / FAMILY_FILE
    if not path.is_file():
        raise UserError(f"'{model_dir}' is not a vlforge model (no {FAMILY_FILE})")
    meta = json.loads(path.read_text())
    family = get_family(meta["family"])
    return Preprocessing(int(meta["recipe"].get("image_size", 224)), tuple(family.image_mean), tuple(family.image_std))


def takes_images(family_name: str) -> bool:
    """Whether a trained model of the family reads images (a text-only model's export gets no image processor)."""
    return not get_family(family_name).capabilities <= {"text_features"}


def image_processor_config(pre: Preprocessing) -> dict[str, Any]:
    """A ``CLIPImageProcessor`` config that gives exactly vlforge's pixels for ``pre`` (a ``squash`` resize)."""
    square = {"height": pre.image_size, "width": pre.image_size}
    return {"image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
            "do_convert_rgb": True, "do_resize": True, "size": square, "resample": PIL_BICUBIC,
            "do_center_crop": False, "crop_size": square, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": list(pre.mean), "image_std": list(pre.std)}


def preprocessing_from_hf(config: dict[str, Any], where: str) -> Preprocessing:
    """A transformers image-processor config (``preprocessor_config.json``) read as a ``Preprocessing``."""
    size = config.get("crop_size") if config.get("do_center_crop", True) else config.get("size")
    size = size or config.get("size")
    if isinstance(size, dict):
        side = size.get("height") or size.get("shortest_edge")
        if "width" in size and size["width"] != side:
            raise UserError(f"{where}: a {size['height']}x{size['width']} image size; vlforge models take square images")
    else:
        side = size
    if not isinstance(side, int):
        raise UserError(f"{where}: no image size (size/crop_size)")
    resize = config.get("size")  # an int is the shortest edge in older configs
    shortest = isinstance(resize, int) or (isinstance(resize, dict) and "shortest_edge" in resize)
    return Preprocessing(side, _triple(config.get("image_mean"), where, "image_mean"),
                         _triple(config.get("image_std"), where, "image_std"),
                         RESAMPLE_NAMES.get(config.get("resample", PIL_BICUBIC), str(config.get("resample"))),
                         "shortest-crop" if shortest and config.get("do_center_crop", True) else "squash")


def _triple(value: Any, where: str, what: str) -> tuple[float, float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
        raise UserError(f"{where}: {what} {value!r} is not three numbers")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def check_fits_family(pre: Preprocessing, family_name: str, where: str) -> None:
    """UserError unless vlforge normalises images for ``family_name`` as the source did: a model fed pixels on
    another scale scores wrongly without any error. The resize (interpolation, crop) is not checked: vlforge always
    resizes bicubic and whole (``squash``), which changes pixels only by resampling; the import records the
    source's way beside it."""
    family = get_family(family_name)
    ours = (tuple(family.image_mean), tuple(family.image_std))
    if any(abs(a - b) > 1e-6 for x, y in zip(ours, (pre.mean, pre.std)) for a, b in zip(x, y)):
        raise UserError(f"{where} normalises images with mean {list(pre.mean)} std {list(pre.std)}; the '{family_name}' "
                        f"family uses mean {list(ours[0])} std {list(ours[1])}")
