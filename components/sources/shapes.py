"""``builtin:shapes``: a deterministic generator of synthetic image-text pairs (the demo dataset).

Each scene holds 1-3 non-overlapping coloured shapes on a plain dark background. The caption comes from a small
grammar and is faithful to what is drawn (shapes, colours, sizes, the spatial relation of two objects, left-to-right
order of three), so a tiny CLIP can learn from it. The scene's facts (objects with normalised boxes, pairwise
relations, counts) are stored with each sample for evaluation tasks derived later (retrieval, VQA, true/false
statements, grounding, zero-shot classification by ``label``).

Determinism: sample ``i`` depends only on ``(seed, i)``. Its RNG is ``random.Random(f"{seed}-{i}")`` and only its
``random()`` method is used (the one method whose sequence Python promises to keep across versions), so the first
100 samples of ``n=2000`` are the first 100 of ``n=100`` and the same seed gives byte-identical PNG files.

Geometry is drawn in this order from the RNG: object count, per object (shape, colour, size), background tint,
positions (rejection sampling), then the caption template; changing the grammar never moves an object.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from vlforge.errors import UserError

# ---------------------------------------------------------------------------------------------------- vocabulary

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 100, 245),
    "yellow": (240, 220, 40),
    "purple": (165, 70, 225),
    "orange": (250, 140, 20),
    "cyan": (40, 220, 230),
    "gray": (150, 150, 150),
}
SIZES: tuple[str, ...] = ("small", "large")
SIZE_FRACTION: dict[str, float] = {"small": 0.18, "large": 0.34}  # side of an object's box / image side
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
PLURALS: dict[str, str] = {s: ("crosses" if s == "cross" else s + "s") for s in SHAPES}
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three"}

COUNT_WEIGHTS: tuple[tuple[int, float], ...] = ((1, 0.40), (2, 0.35), (3, 0.25))
REPEAT_PROBABILITY = 0.15  # an extra object copies an earlier one's shape+colour (so "two ..."/"three ..." occur)
BACKGROUND_BASE = 16  # background channel = base + tint, tint in [0, BACKGROUND_TINT)
BACKGROUND_TINT = 14
EDGE_MARGIN = 0.02  # free border around the image (normalised)
GAP = 0.04  # minimum gap between two objects' boxes (normalised)
DOMINANCE = 1.25  # for every pair, the larger of |dx|, |dy| between centres is at least this times the smaller
PLACEMENT_TRIES = 200  # positions tried per object before the whole placement restarts
PLACEMENT_RESTARTS = 30  # restarts before every object is made small (never needed in practice)
COORD_DECIMALS = 4  # boxes are quantised so facts and rendering use the very same numbers

GENERATOR = "builtin:shapes"
GENERATOR_VERSION = 1  # bump when the images, captions or facts a (seed, i) gives change
DEFAULTS: dict[str, int] = {"n": 2000, "seed": 0, "image_size": 96}
MAX_IMAGE_SIZE = 4096
TABLE_NAME = "samples.parquet"
IMAGES_DIR = "images"
GENERATION_FILE = "generation.json"


class RandomLike(Protocol):
    """Anything with ``random() -> float in [0, 1)``: ``random.Random`` or a ``numpy.random.Generator``."""

    def random(self) -> float: ...


# ------------------------------------------------------------------------------------------------ scene model


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object; ``bbox`` is ``(x0, y0, x1, y1)`` normalised to [0, 1], y grows downwards."""

    shape: str
    color: str
    size: str
    bbox: tuple[float, float, float, float]

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (round((x0 + x1) / 2, COORD_DECIMALS + 1), round((y0 + y1) / 2, COORD_DECIMALS + 1))



def relation(subject: ShapeObject, obj: ShapeObject) -> str:
    """Where ``subject`` is relative to ``obj``: horizontal if |dx| >= |dy| between centres, else vertical."""
    (sx, sy), (ox, oy) = subject.center, obj.center
    dx, dy = ox - sx, oy - sy
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def label_for(objects: Sequence[ShapeObject]) -> str:
    """The shape of the largest object (by size class, not by float box area); ties go to the leftmost (smallest
    centre x, then smallest centre y)."""
    best = min(objects, key=lambda o: (-SIZE_FRACTION[o.size], o.center[0], o.center[1]))
    return best.shape


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int]
    caption: str
    label: str

    def facts(self) -> dict:
        """JSON-serialisable facts: objects, count, relations for every ordered pair, counts, background."""
        objects = [
            {"shape": o.shape, "color": o.color, "size": o.size, "bbox": list(o.bbox), "center": list(o.center)}
            for o in self.objects
        ]
        relations = [
            {"subject": i, "relation": relation(a, b), "object": j}
            for i, a in enumerate(self.objects)
            for j, b in enumerate(self.objects)
            if i != j
        ]
        by_shape = Counter(o.shape for o in self.objects)
        by_color = Counter(o.color for o in self.objects)
        return {
            "objects": objects,
            "count": len(self.objects),
            "relations": relations,
            "counts_by_shape": {s: by_shape[s] for s in SHAPES},
            "counts_by_color": {c: by_color[c] for c in COLORS},
            "background": list(self.background),
        }


# -------------------------------------------------------------------------------------------------- randomness


def _rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}-{index}")


def _choice(rng: RandomLike, items: Sequence):
    return items[min(int(rng.random() * len(items)), len(items) - 1)]


def _weighted(rng: RandomLike, pairs: Sequence[tuple[object, float]]):
    r = rng.random() * sum(w for _, w in pairs)
    for item, weight in pairs:
        r -= weight
        if r < 0:
            return item
    return pairs[-1][0]


def _chance(rng: RandomLike, p: float) -> bool:
    return rng.random() < p


# --------------------------------------------------------------------------------------------------- placement


def _separated(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Boxes at least GAP apart on some axis, and centres clearly horizontal or clearly vertical of each other."""
    apart = a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]
    if not apart:
        return False
    dx = abs((a[0] + a[2]) - (b[0] + b[2])) / 2
    dy = abs((a[1] + a[3]) - (b[1] + b[3])) / 2
    return max(dx, dy) >= DOMINANCE * min(dx, dy)


def _place(rng: RandomLike, sides: Sequence[float]) -> list[tuple[float, float, float, float]] | None:
    """Rejection-sample boxes for ``sides`` (largest placed first); None when every restart failed."""
    order = sorted(range(len(sides)), key=lambda k: -sides[k])
    for _ in range(PLACEMENT_RESTARTS):
        boxes: dict[int, tuple[float, float, float, float]] = {}
        for k in order:
            side = sides[k]
            span = 1 - 2 * EDGE_MARGIN - side
            for _ in range(PLACEMENT_TRIES):
                x0 = round(EDGE_MARGIN + span * rng.random(), COORD_DECIMALS)
                y0 = round(EDGE_MARGIN + span * rng.random(), COORD_DECIMALS)
                box = (x0, y0, round(x0 + side, COORD_DECIMALS), round(y0 + side, COORD_DECIMALS))
                if all(_separated(box, other) for other in boxes.values()):
                    boxes[k] = box
                    break
            else:
                break
        if len(boxes) == len(sides):
            return [boxes[k] for k in range(len(sides))]
    return None


# ------------------------------------------------------------------------------------------------------ grammar


def _noun_phrase(count: int, obj: ShapeObject, with_size: bool) -> str:
    size = f"{obj.size} " if with_size else ""
    if count == 1:
        return f"a {size}{obj.color} {obj.shape}"
    return f"{NUMBER_WORDS[count]} {size}{obj.color} {PLURALS[obj.shape]}"


def caption_for(objects: Sequence[ShapeObject], rng: RandomLike) -> str:
    """A caption faithful to ``objects`` (1-3), the template chosen with ``rng.random()``.

    Every object's colour and shape is named, and nothing else is. Forms:
    1: "a [size] <colour> <shape>";
    2: "<A> left of|right of|above|below <B>" (the relation of the first-named to the second, from the centres; the
       sizes may be omitted unless the two share shape and colour) or, for the same shape and colour,
       "two [size] <colour> <shape>s" (size only when both share it);
    3: a list ordered left to right by each group's leftmost object: "a X, a Y and a Z", "two Xs and a Y",
       "a Y and two Xs", or "three [size] Xs" (groups are objects of the same shape and colour).
    """
    objects = list(objects)
    if not 1 <= len(objects) <= 3:
        raise ValueError(f"caption_for takes 1 to 3 objects, got {len(objects)}")
    if len(objects) == 1:
        return _noun_phrase(1, objects[0], with_size=_chance(rng, 0.8))
    if len(objects) == 2:
        a, b = objects
        same_kind = (a.shape, a.color) == (b.shape, b.color)
        if same_kind and (a.size == b.size or _chance(rng, 0.5)):
            return _noun_phrase(2, a, with_size=a.size == b.size and _chance(rng, 0.5))
        if _chance(rng, 0.5):
            a, b = b, a
        size_a = same_kind or _chance(rng, 0.7)
        size_b = same_kind or _chance(rng, 0.5)
        return f"{_noun_phrase(1, a, size_a)} {relation(a, b)} {_noun_phrase(1, b, size_b)}"
    groups: dict[tuple[str, str], list[ShapeObject]] = {}
    for o in sorted(objects, key=lambda o: (o.center[0], o.center[1])):
        groups.setdefault((o.shape, o.color), []).append(o)
    phrases = []
    for members in groups.values():
        same_size = len({m.size for m in members}) == 1
        phrases.append(_noun_phrase(len(members), members[0], with_size=same_size and _chance(rng, 0.5)))
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


# ------------------------------------------------------------------------------------------------------- scenes


def make_scene(seed: int, index: int) -> Scene:
    """Scene ``index`` of generation ``seed``; depends on nothing else."""
    rng = _rng(seed, index)
    count = _weighted(rng, COUNT_WEIGHTS)
    kinds: list[tuple[str, str, str]] = []
    for k in range(count):
        if k > 0 and _chance(rng, REPEAT_PROBABILITY):
            shape, color = _choice(rng, kinds)[:2]
        else:
            shape, color = _choice(rng, SHAPES), _choice(rng, tuple(COLORS))
        kinds.append((shape, color, _choice(rng, SIZES)))
    background = tuple(BACKGROUND_BASE + int(rng.random() * BACKGROUND_TINT) for _ in range(3))
    boxes = _place(rng, [SIZE_FRACTION[size] for _, _, size in kinds])
    if boxes is None:  # cannot happen with the constants above; kept so a scene always exists
        kinds = [(shape, color, "small") for shape, color, _ in kinds]
        boxes = _place(rng, [SIZE_FRACTION["small"]] * count)
        assert boxes is not None, "placement of small objects failed"
    objects = tuple(ShapeObject(shape, color, size, box) for (shape, color, size), box in zip(kinds, boxes))
    return Scene(objects=objects, background=background, caption=caption_for(objects, rng), label=label_for(objects))


def _star_points(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else 0.45 * r
        angle = math.radians(-90 + 36 * k)
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def render_scene(scene: Scene, image_size: int = 96) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``image_size`` px; every object stays inside its box."""
    image = Image.new("RGB", (image_size, image_size), scene.background)
    draw = ImageDraw.Draw(image)
    last = image_size - 1
    for o in scene.objects:
        fill = COLORS[o.color]
        x0, y0 = o.bbox[0] * image_size, o.bbox[1] * image_size
        x1, y1 = min(o.bbox[2] * image_size - 1, last), min(o.bbox[3] * image_size - 1, last)
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        if o.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
        elif o.shape == "diamond":
            draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
        elif o.shape == "star":
            draw.polygon(_star_points(cx, cy, min(w, h) / 2), fill=fill)
        elif o.shape == "cross":
            t = 0.18 * w  # half the arm thickness
            draw.rectangle((cx - t, y0, cx + t, y1), fill=fill)
            draw.rectangle((x0, cy - t, x1, cy + t), fill=fill)
        else:
            raise ValueError(f"unknown shape {o.shape!r}")
    return image


# ---------------------------------------------------------------------------------------------------- arguments


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise UserError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise UserError(f"{name} must be <= {maximum}, got {value}")
    return value


def _check_arguments(n: object, seed: object, image_size: object) -> None:
    _check_int("n", n, 1)
    _check_int("seed", seed, 0)
    _check_int("image_size", image_size, 16, MAX_IMAGE_SIZE)


def parse_builtin_source(spec: str) -> dict:
    """``builtin:shapes[?n=..&seed=..&image_size=..]`` -> ``{"name": "shapes", "n", "seed", "image_size"}``."""
    if not isinstance(spec, str) or not spec.startswith("builtin:"):
        raise UserError(f"source {spec!r} is not a builtin source (expected builtin:shapes?n=..&seed=..&image_size=..)")
    name, _, query = spec[len("builtin:") :].partition("?")
    if name != "shapes":
        raise UserError(f"unknown builtin source {name!r} in {spec!r} (known: shapes)")
    params = dict(DEFAULTS)
    seen: set[str] = set()
    for part in query.split("&") if query else []:
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise UserError(f"bad parameter {part!r} in {spec!r} (expected key=value)")
        if key not in DEFAULTS:
            raise UserError(f"unknown parameter {key!r} in {spec!r} (known: {', '.join(DEFAULTS)})")
        if key in seen:
            raise UserError(f"parameter {key!r} given twice in {spec!r}")
        if not re.fullmatch(r"[0-9]{1,18}", value):
            raise UserError(f"parameter {key} in {spec!r} must be a non-negative integer, got {value!r}")
        seen.add(key)
        params[key] = int(value)
    _check_arguments(**params)
    return {"name": "shapes", **params}


# --------------------------------------------------------------------------------------------------- generation


def sample_key(seed: int, index: int) -> str:
    return f"shapes-{seed}-{index:06d}"


def _generation_record(n: int, seed: int, image_size: int) -> dict:
    return {"generator": GENERATOR, "version": GENERATOR_VERSION, "n": n, "seed": seed, "image_size": image_size}


def _is_complete(out_dir: Path, record: dict) -> bool:
    try:
        if json.loads((out_dir / GENERATION_FILE).read_text()) != record:
            return False
        if not (out_dir / TABLE_NAME).is_file():
            return False
        with os.scandir(out_dir / IMAGES_DIR) as entries:
            return sum(1 for e in entries if e.name.endswith(".png")) == record["n"]
    except (OSError, ValueError):
        return False


def _check_replaceable(out_dir: Path) -> None:
    """Only an empty folder or an earlier generation (it has generation.json) is ever replaced."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"out_dir '{out_dir}' exists and is not a folder")
    if (out_dir / GENERATION_FILE).is_file() or not any(out_dir.iterdir()):
        return
    raise UserError(f"out_dir '{out_dir}' holds other files and no {GENERATION_FILE}; refusing to replace it")


def _write_generation(folder: Path, n: int, seed: int, image_size: int) -> None:
    images = folder / IMAGES_DIR
    images.mkdir()
    columns: dict[str, list[str]] = {"key": [], "path": [], "caption": [], "label": [], "facts": []}
    for i in range(n):
        scene = make_scene(seed, i)
        key = sample_key(seed, i)
        rel = f"{IMAGES_DIR}/{key}.png"
        render_scene(scene, image_size).save(folder / rel, format="PNG", compress_level=6, optimize=False)
        columns["key"].append(key)
        columns["path"].append(rel)
        columns["caption"].append(scene.caption)
        columns["label"].append(scene.label)
        columns["facts"].append(json.dumps(scene.facts(), separators=(",", ":")))
    schema = pa.schema([(name, pa.string()) for name in columns])
    pq.write_table(pa.table(columns, schema=schema), folder / TABLE_NAME)


def generate_shapes(out_dir: Path, n: int = 2000, seed: int = 0, image_size: int = 96) -> Path:
    """Write ``n`` samples to ``out_dir`` (images/shapes-{seed}-{i:06d}.png + samples.parquet); return the table path.

    Built in a temporary sibling folder, then renamed into place. A folder that already holds a complete generation
    with the same n/seed/image_size (and generator version) is returned as is; an earlier different generation or
    an empty folder is replaced; any other existing folder is refused (UserError), never deleted.
    """
    _check_arguments(n, seed, image_size)
    out_dir = Path(out_dir)
    record = _generation_record(n, seed, image_size)
    table = out_dir / TABLE_NAME
    if _is_complete(out_dir, record):
        return table
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_generation(tmp, n, seed, image_size)
        (tmp / GENERATION_FILE).write_text(json.dumps(record, indent=2) + "\n")
        try:
            os.rename(tmp, out_dir)  # succeeds when out_dir is absent or an empty folder
        except OSError:
            if _is_complete(out_dir, record):  # a concurrent run finished the same generation first
                shutil.rmtree(tmp, ignore_errors=True)
                return table
            _check_replaceable(out_dir)
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, old / "previous")
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return table
