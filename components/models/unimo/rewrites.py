"""UNIMO's text rewriting, done from the builtin scenes' facts instead of a scene-graph parser and back-translation
(the recipe's ``rewrites: facts`` route; ``mlm_rewrites.py`` rewrites captions without facts).

UNIMO (Li et al., 2021) builds its cross-modal contrastive positives from back-translated paraphrases
and its hard negatives by rewriting the caption's scene graph (objects, attributes, relations) at word, phrase and
sentence level. The builtin ``shapes`` source stores each scene's facts, so the rewrites here are made from the
facts and are *verified*, not hoped for:

- ``positive_rewrites``: the caption regenerated from the same facts with other grammar draws (subject/object
  swapped with the inverse relation, sizes named or not, ...). Every one is checked to hold in the scene.
- ``negative_rewrite(kind)``: one fact changed, the caption regenerated from the changed scene: ``color`` (one
  object's colour), ``shape`` (one object's shape) or ``relation`` (two objects of different kinds trade places,
  which inverts their relation; in a three-object scene it changes the left-to-right order the caption states).
  Each carries the changed facts; it holds in those and is checked *not* to hold in the original scene.
- ``holds(text, facts)``: whether a caption of the shapes grammar is true of a scene, under the grammar's own
  semantics (every object is named, a list runs left to right, a relation is the one ``shapes.relation`` gives).
  ``None`` when the text is not of that grammar: the caller then falls back to exact-caption matching.

Everything is a pure function of its arguments (randomness comes in as a ``random.Random``), so the training step
that uses it stays deterministic."""
from __future__ import annotations

import copy
import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from vlforge.components.sources.shapes import (
    COLORS,
    NUMBER_WORDS,
    PLURALS,
    RELATIONS,
    SHAPES,
    SIZES,
    ShapeObject,
    caption_for,
    relation,
)

RewriteKind = Literal["color", "shape", "relation"]
REWRITE_KINDS: tuple[str, ...] = ("color", "shape", "relation")
REGENERATION_TRIES = 8  # grammar draws tried for a positive that differs from the caption

_SINGULAR = {p: s for s, p in PLURALS.items()}
_COUNTS = {"a": 1, **{w: n for n, w in NUMBER_WORDS.items()}}
_NP = re.compile(rf"^(a|{'|'.join(NUMBER_WORDS.values())}) (?:({'|'.join(SIZES)}) )?(\w+) (\w+)$")
_REL = re.compile(rf"^(.+?) ({'|'.join(RELATIONS)}) (.+)$")


@dataclass(frozen=True)
class NounPhrase:
    count: int
    size: str | None
    color: str
    shape: str


@dataclass(frozen=True)
class Rewrite:
    """A caption rewritten so that exactly ``kind`` changed; ``facts`` is the changed scene it describes."""

    text: str
    kind: str
    facts: dict


# --------------------------------------------------------------------------------------------- facts <-> objects


def scene_objects(facts: dict) -> list[ShapeObject]:
    return [ShapeObject(o["shape"], o["color"], o["size"], tuple(o["bbox"])) for o in facts["objects"]]  # type: ignore[arg-type]


def objects_to_facts(objects: list[ShapeObject], like: dict) -> dict:
    """Facts of ``objects`` in the layout of ``Scene.facts()`` (background copied from ``like``)."""
    out = copy.deepcopy(like)
    out["objects"] = [{"shape": o.shape, "color": o.color, "size": o.size, "bbox": list(o.bbox), "center": list(o.center)}
                      for o in objects]
    out["count"] = len(objects)
    out["relations"] = [{"subject": i, "relation": relation(a, b), "object": j}
                        for i, a in enumerate(objects) for j, b in enumerate(objects) if i != j]
    by_shape, by_color = Counter(o.shape for o in objects), Counter(o.color for o in objects)
    out["counts_by_shape"] = {s: by_shape[s] for s in SHAPES}
    out["counts_by_color"] = {c: by_color[c] for c in COLORS}
    return out


# ---------------------------------------------------------------------------------------------------- parsing


def _noun_phrase(text: str) -> NounPhrase | None:
    m = _NP.match(text)
    if m is None:
        return None
    det, size, color, shape = m.groups()
    count = _COUNTS[det]
    shape = shape if count == 1 else _SINGULAR.get(shape, "")
    if color not in COLORS or shape not in SHAPES:
        return None
    return NounPhrase(count, size, color, shape)


@lru_cache(maxsize=4096)
def parse_caption(text: str) -> tuple[str, tuple[NounPhrase, ...], str | None] | None:
    """``("relation", (a, b), rel)`` or ``("list", phrases, None)``; None when ``text`` is not of the shapes grammar."""
    text = " ".join(text.strip().lower().split())
    m = _REL.match(text)
    if m is not None:
        a, b = _noun_phrase(m.group(1)), _noun_phrase(m.group(3))
        if a is None or b is None or a.count != 1 or b.count != 1:
            return None
        return ("relation", (a, b), m.group(2))
    head, sep, last = text.rpartition(" and ")
    parts = (head.split(", ") + [last]) if sep else [text]
    phrases = tuple(_noun_phrase(p) for p in parts)
    if any(p is None for p in phrases):
        return None
    return ("list", phrases, None)  # type: ignore[return-value]


def _fits(np_: NounPhrase, o: dict) -> bool:
    return o["color"] == np_.color and o["shape"] == np_.shape and (np_.size is None or o["size"] == np_.size)


def holds(text: str, facts: dict) -> bool | None:
    """Whether the caption ``text`` is true of the scene ``facts`` (grammar semantics, see the module docstring)."""
    parsed = parse_caption(text)
    if parsed is None:
        return None
    form, phrases, rel = parsed
    objects = facts["objects"]
    if form == "relation":
        if len(objects) != 2:
            return False
        a, b = phrases
        relations = {(r["subject"], r["object"]): r["relation"] for r in facts["relations"]}
        return any(_fits(a, objects[p]) and _fits(b, objects[q]) and relations[(p, q)] == rel
                   for p, q in ((0, 1), (1, 0)))
    if sum(p.count for p in phrases) != len(objects):
        return False
    # groups of the same shape and colour, ordered by their leftmost member (as ``shapes.caption_for`` lists them)
    groups: dict[tuple[str, str], list[dict]] = {}
    for o in sorted(objects, key=lambda o: (o["center"][0], o["center"][1])):
        groups.setdefault((o["shape"], o["color"]), []).append(o)
    if len(groups) != len(phrases):
        return False
    return all(len(members) == p.count and all(_fits(p, m) for m in members)
               for p, members in zip(phrases, groups.values()))


# --------------------------------------------------------------------------------------------------- rewriting


def positive_rewrites(facts: dict, caption: str, rng: random.Random, n: int = 1) -> list[str]:
    """Up to ``n`` captions regenerated from the same facts that differ from ``caption`` and hold in the scene
    (fewer when the grammar has no other wording, e.g. a one-object scene whose caption already names the size)."""
    objects = scene_objects(facts)
    out: list[str] = []
    for _ in range(REGENERATION_TRIES * max(n, 1)):
        if len(out) >= n:
            break
        text = caption_for(objects, rng)
        if text != caption and text not in out and holds(text, facts):
            out.append(text)
    return out


def _changed_caption(facts: dict, objects: list[ShapeObject], kind: str, rng: random.Random) -> Rewrite | None:
    changed = objects_to_facts(objects, facts)
    text = caption_for(objects, rng)
    if holds(text, changed) and holds(text, facts) is False:
        return Rewrite(text, kind, changed)
    return None


def negative_rewrite(facts: dict, kind: str, rng: random.Random) -> Rewrite | None:
    """A hard negative with exactly one fact of ``kind`` changed, or None where the scene allows no such change
    (a relation needs two objects of different kinds)."""
    objects = scene_objects(facts)
    if kind in ("color", "shape"):
        k = int(rng.random() * len(objects))
        old = objects[k]
        choices = [c for c in (COLORS if kind == "color" else SHAPES) if c != getattr(old, kind)]
        new = choices[int(rng.random() * len(choices))]
        objects[k] = ShapeObject(new if kind == "shape" else old.shape, new if kind == "color" else old.color, old.size, old.bbox)
        return _changed_caption(facts, objects, kind, rng)
    if kind == "relation":
        pairs = [(i, j) for i in range(len(objects)) for j in range(i + 1, len(objects))
                 if (objects[i].shape, objects[i].color) != (objects[j].shape, objects[j].color)]
        rng.shuffle(pairs)
        for i, j in pairs:  # the two objects trade places: their relation inverts, nothing else changes
            swapped = list(objects)
            swapped[i] = ShapeObject(objects[i].shape, objects[i].color, objects[i].size, objects[j].bbox)
            swapped[j] = ShapeObject(objects[j].shape, objects[j].color, objects[j].size, objects[i].bbox)
            found = _changed_caption(facts, swapped, kind, rng)
            if found is not None:
                return found
        return None
    raise ValueError(f"unknown rewrite kind '{kind}' (known: {', '.join(REWRITE_KINDS)})")
