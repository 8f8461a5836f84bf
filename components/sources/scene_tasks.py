"""Evaluation items derived from the builtin shapes scenes' facts: VQA questions, NLVR-style statements about a
pair of scenes, and grounding phrases.

The facts (``Scene.facts()`` in ``shapes.py``) travel with every sample of a ``builtin:shapes`` dataset (the
``facts`` column of ``samples.parquet``, the ``facts`` field of each shard sample's json), so any dataset that
carries them supports these tasks; the evaluation stage (``components/evaluation``) consumes what this module
derives. Everything here is a pure function of the facts and the sample keys: the same dataset always gives the
same questions, in the same order, with the same answers.

Each VQA question carries its candidate answers and, for each, an answer-filled *statement* in the grammar the
captions use ("a red circle", "a red circle left of a blue square"): a model that can only score an image against
a text (a dual encoder) answers by picking the best-scoring statement, the CLIP-style zero-shot baseline."""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from vlforge.components.sources.shapes import COLORS, RELATIONS, SHAPES

COUNT_WORDS: tuple[str, ...] = ("one", "two", "three")
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "position", "yes/no")
# colour x shape phrases: the vocabulary an image is probed with for presence ("is there a red circle?")
OBJECT_PHRASES: tuple[str, ...] = tuple(f"a {c} {s}" for c in COLORS for s in SHAPES)
PRESENT_TOP_K = 3  # an object phrase counts as present when it ranks in the image's top 3 (scenes hold 1-3 objects)


@dataclass(frozen=True)
class VQAQuestion:
    """One question about one scene; ``statements[i]`` is ``candidates[i]`` written as a caption-like claim."""

    key: str
    qtype: str
    question: str
    answer: str
    candidates: tuple[str, ...]
    statements: tuple[str, ...]
    # yes/no questions ask about this colour-shape phrase (answered by presence ranking, see PRESENT_TOP_K)
    probe: str | None = None


@dataclass(frozen=True)
class PairStatement:
    """A true/false statement about scene ``left_key`` and scene ``right_key`` (NLVR-style)."""

    left_key: str
    right_key: str
    form: str  # both | either | more
    text: str
    label: bool
    phrase: str | None = None  # the object phrase of the both/either forms


@dataclass(frozen=True)
class GroundingPhrase:
    """Pick the object ``phrase`` describes among the scene's objects (``boxes``, normalised x0,y0,x1,y1)."""

    key: str
    phrase: str
    boxes: tuple[tuple[float, float, float, float], ...] = field(default_factory=tuple)
    target: int = 0


def _pick(key: str, salt: str, n: int) -> int:
    """A deterministic choice in [0, n) from a sample key (no global RNG, so the items never depend on order)."""
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:8], 16) % n


def _kinds(objects: list[dict]) -> Counter:
    return Counter((o["color"], o["shape"]) for o in objects)


def vqa_questions(key: str, facts: dict) -> list[VQAQuestion]:
    """The questions a scene answers unambiguously: colour of a unique shape, shape of a unique colour, the object
    count, the relation of two distinct objects (two-object scenes) and one yes/no presence question."""
    objects = facts["objects"]
    shapes = Counter(o["shape"] for o in objects)
    colors = Counter(o["color"] for o in objects)
    out: list[VQAQuestion] = []
    for o in objects:
        if shapes[o["shape"]] == 1:
            out.append(VQAQuestion(key, "color", f"what colour is the {o['shape']}?", o["color"], tuple(COLORS),
                                   tuple(f"a {c} {o['shape']}" for c in COLORS)))
            break
    for o in objects:
        if colors[o["color"]] == 1:
            out.append(VQAQuestion(key, "shape", f"what shape is the {o['color']} object?", o["shape"], SHAPES,
                                   tuple(f"a {o['color']} {s}" for s in SHAPES)))
            break
    n = len(objects)
    out.append(VQAQuestion(key, "count", "how many objects are there?", COUNT_WORDS[n - 1], COUNT_WORDS,
                           ("one object", "two objects", "three objects")))
    kinds = _kinds(objects)
    if n == 2 and len(kinds) == 2:
        rel = next(r for r in facts["relations"] if r["subject"] == 0)
        a, b = objects[0], objects[1]
        an, bn = f"{a['color']} {a['shape']}", f"{b['color']} {b['shape']}"
        out.append(VQAQuestion(key, "position", f"where is the {an} relative to the {bn}?", rel["relation"], RELATIONS,
                               tuple(f"a {an} {r} a {bn}" for r in RELATIONS)))
    present = sorted(kinds)
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in kinds]
    if _pick(key, "yes/no", 2) == 0:
        color, shape = present[_pick(key, "yes", len(present))]
        answer = "yes"
    else:
        color, shape = absent[_pick(key, "no", len(absent))]
        answer = "no"
    out.append(VQAQuestion(key, "yes/no", f"is there a {color} {shape}?", answer, ("yes", "no"),
                           (f"a {color} {shape}", f"no {color} {shape}"), probe=f"a {color} {shape}"))
    return out


def pair_statements(left_key: str, left: dict, right_key: str, right: dict) -> list[PairStatement]:
    """Three statements about a pair: "both images contain X", "at least one image contains Y" and "the left image
    has more objects than the right image", X and Y drawn (deterministically, from the keys) so that both truth
    values occur: X from the objects of either scene (from those they share, half the time they share one), Y half
    the time from neither scene."""
    lk, rk = _kinds(left["objects"]), _kinds(right["objects"])
    pool = sorted(set(lk) | set(rk))
    shared = sorted(set(lk) & set(rk))
    pair = f"{left_key}|{right_key}"
    # random scenes rarely share an object: take a shared one half the time there is one, so "both" can be true
    both_pool = shared if shared and _pick(pair, "both-shared", 2) == 0 else pool
    color, shape = both_pool[_pick(pair, "both", len(both_pool))]
    both = PairStatement(left_key, right_key, "both", f"both images contain a {color} {shape}",
                         (color, shape) in lk and (color, shape) in rk, f"a {color} {shape}")
    # "either" over a phrase that may be absent from both: half the time take one outside the pair
    if _pick(pair, "either-absent", 2) == 0:
        outside = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in lk and (c, s) not in rk]
        color, shape = outside[_pick(pair, "either", len(outside))]
    else:
        color, shape = pool[_pick(pair, "either", len(pool))]
    either = PairStatement(left_key, right_key, "either", f"at least one image contains a {color} {shape}",
                           (color, shape) in lk or (color, shape) in rk, f"a {color} {shape}")
    more = PairStatement(left_key, right_key, "more", "the left image has more objects than the right image",
                         left["count"] > right["count"])
    return [both, either, more]


def grounding_phrases(key: str, facts: dict) -> list[GroundingPhrase]:
    """For a scene of 2-3 objects, one phrase per object that its colour and shape alone pick out."""
    objects = facts["objects"]
    if len(objects) < 2:
        return []
    kinds = _kinds(objects)
    boxes = tuple(tuple(o["bbox"]) for o in objects)
    return [GroundingPhrase(key, f"a {o['color']} {o['shape']}", boxes, i)  # type: ignore[arg-type]
            for i, o in enumerate(objects) if kinds[(o["color"], o["shape"])] == 1]

