"""A vlforge model's image preprocessing, and the same preprocessing as a transformers ``CLIPImageProcessor``
config (``preprocessor_config.json``).

vlforge preprocesses images as ``components/data/loader.py`` ``ImageTransform`` does, under the model's recipe
(``Family.image_transform``): RGB, a bicubic resize to ``image_size`` (``image_resize``: ``squash``, the whole image,
or ``shortest-crop``, the shortest side then the centre), then ``(x / 255 - mean) / std`` with the recipe's
``image_mean`` / ``image_std`` or else the family's. ``CLIPImageProcessor`` does the same with ``resample=BICUBIC``
and, for ``squash``, ``size={"height": s, "width": s}``, ``do_center_crop=False``; for ``shortest-crop``,
``size={"shortest_edge": s}``, ``do_center_crop=True``. A checkpoint's own preprocessing (a transformers
``preprocessor_config.json``, open_clip's ``preprocess_cfg``) is read back into a ``Preprocessing`` on import and
becomes the imported model's recipe fields (``preprocessing_fields``), so vlforge feeds it what its source did."""
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
    """The preprocessing vlforge applies for the checkpoint in ``model_dir``: its recipe's image size, resize mode,
    mean and std (the family's where the recipe names none), what ``Family.image_transform`` builds."""
    path = Path(model_dir) / FAMILY_FILE
    if not path.is_file():
        raise UserError(f"'{model_dir}' is not a vlforge model (no {FAMILY_FILE})")
    meta = json.loads(path.read_text())
    family, recipe = get_family(meta["family"]), meta["recipe"]
    return Preprocessing(int(recipe.get("image_size", 224)), tuple(recipe.get("image_mean") or family.image_mean),
                         tuple(recipe.get("image_std") or family.image_std), resize=recipe.get("image_resize", "squash"))


def takes_images(family_name: str) -> bool:
    """Whether a trained model of the family reads images (a text-only model's export gets no image processor)."""
    return not get_family(family_name).capabilities <= {"text_features"}


def image_processor_config(pre: Preprocessing) -> dict[str, Any]:
    """A ``CLIPImageProcessor`` config that gives exactly vlforge's pixels for ``pre``."""
    square = {"height": pre.image_size, "width": pre.image_size}
    crop = pre.resize == "shortest-crop"
    return {"image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
            "do_convert_rgb": True, "do_resize": True, "size": {"shortest_edge": pre.image_size} if crop else square,
            "resample": PIL_BICUBIC, "do_center_crop": crop, "crop_size": square, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(pre.mean), "image_std": list(pre.std)}


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


def preprocessing_fields(pre: Preprocessing, family_name: str, where: str) -> dict[str, Any]:
    """The recipe fields that make vlforge preprocess as the source did: its resize mode, and its mean and std
    where they are not the family's. UserError for a resize vlforge does not do (open_clip's ``longest-pad``). The
    interpolation is recorded only: vlforge resizes bicubic, which changes pixels by resampling alone."""
    if pre.resize not in ("squash", "shortest-crop"):
        raise UserError(f"{where} resizes images by '{pre.resize}'; vlforge takes squash or shortest-crop")
    family = get_family(family_name)
    fields: dict[str, Any] = {"image_resize": pre.resize}
    for name, ours, theirs in (("image_mean", family.image_mean, pre.mean), ("image_std", family.image_std, pre.std)):
        if any(abs(a - b) > 1e-6 for a, b in zip(ours, theirs)):
            fields[name] = tuple(theirs)
    return fields
