"""builtin:shapes: determinism, faithful captions, geometry, labels, rendering, arguments, atomic generation."""
from __future__ import annotations

import json
import random
import re
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
from vlforge.components.sources.shapes import (
    COLORS,
    INVERSE_RELATION,
    PLURALS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    caption_for,
    generate_shapes,
    make_scene,
    parse_builtin_source,
    render_scene,
)

from vlforge.errors import UserError

SHAPE_WORDS = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
NUMBERS = {"a": 1, "two": 2, "three": 3}
REL_RE = r"(left of|right of|above|below)"
NP_RE = (
    rf"(a|two|three) (?:({'|'.join(SIZES)}) )?({'|'.join(COLORS)}) "
    rf"({'|'.join(sorted(SHAPE_WORDS, key=len, reverse=True))})"
)


def parse_caption(caption: str) -> tuple[list[tuple[int, str | None, str, str]], str | None]:
    """Caption -> ([(count, size or None, colour, shape)], relation or None); fails on anything off-grammar."""
    m = re.fullmatch(rf"{NP_RE} {REL_RE} {NP_RE}", caption)
    if m:
        g = m.groups()
        first, second = (NUMBERS[g[0]], g[1], g[2], SHAPE_WORDS[g[3]]), (NUMBERS[g[5]], g[6], g[7], SHAPE_WORDS[g[8]])
        assert first[0] == second[0] == 1, caption
        return [first, second], g[4]
    parts = re.split(r", | and ", caption)
    mentions = []
    for part in parts:
        m = re.fullmatch(NP_RE, part)
        assert m, f"caption off-grammar: {caption!r}"
        count, size, color, shape_word = m.groups()
        assert (count == "a") == (shape_word in SHAPES), f"number agreement broken: {caption!r}"
        mentions.append((NUMBERS[count], size, color, SHAPE_WORDS[shape_word]))
    return mentions, None


def centre_relation(subject: dict, obj: dict) -> str:
    (sx, sy), (ox, oy) = subject["center"], obj["center"]
    dx, dy = ox - sx, oy - sy
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def facts_roundtrip(scene: Scene) -> dict:
    return json.loads(json.dumps(scene.facts(), separators=(",", ":")))


# ------------------------------------------------------------------------------------------------- determinism


def test_make_scene_depends_only_on_seed_and_index():
    assert make_scene(0, 5) == make_scene(0, 5)
    assert make_scene(0, 5) != make_scene(1, 5)
    assert len({make_scene(0, i).caption for i in range(50)}) > 30
    assert [make_scene(3, i) for i in range(20)] != [make_scene(4, i) for i in range(20)]
    # the index order of calls does not matter
    forward = [make_scene(7, i) for i in range(10)]
    backward = [make_scene(7, i) for i in reversed(range(10))][::-1]
    assert forward == backward


def test_generation_is_byte_identical_and_prefix_stable(tmp_path):
    a = generate_shapes(tmp_path / "a", n=40, seed=11, image_size=64)
    b = generate_shapes(tmp_path / "b", n=40, seed=11, image_size=64)
    short = generate_shapes(tmp_path / "short", n=15, seed=11, image_size=64)
    ta, tb, ts = pq.read_table(a), pq.read_table(b), pq.read_table(short)
    assert ta.equals(tb)
    assert ts.equals(ta.slice(0, 15))
    for row in ta.to_pylist():
        data = (tmp_path / "a" / row["path"]).read_bytes()
        assert data == (tmp_path / "b" / row["path"]).read_bytes()
        if (tmp_path / "short" / row["path"]).exists():
            assert data == (tmp_path / "short" / row["path"]).read_bytes()
    assert len(list((tmp_path / "short" / "images").iterdir())) == 15
    other = pq.read_table(generate_shapes(tmp_path / "c", n=15, seed=12, image_size=64))
    assert other.column("caption").to_pylist() != ts.column("caption").to_pylist()


def test_table_layout(tmp_path):
    table_path = generate_shapes(tmp_path / "out", n=12, seed=3, image_size=48)
    assert table_path == tmp_path / "out" / "samples.parquet"
    table = pq.read_table(table_path)
    assert table.column_names == ["key", "path", "caption", "label", "facts"]
    assert all(str(t) == "string" for t in table.schema.types)
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == [f"shapes-3-{i:06d}" for i in range(12)]
    for i, row in enumerate(rows):
        assert row["path"] == f"images/shapes-3-{i:06d}.png"
        scene = make_scene(3, i)
        assert row["caption"] == scene.caption and row["label"] == scene.label
        assert json.loads(row["facts"]) == facts_roundtrip(scene)
        assert " " not in row["facts"].replace('"left of"', "").replace('"right of"', "")  # compact JSON
        from PIL import Image

        with Image.open(tmp_path / "out" / row["path"]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (48, 48)
    record = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert (record["n"], record["seed"], record["image_size"]) == (12, 3, 48)


def test_two_thousand_images_are_fast(tmp_path):
    start = time.perf_counter()
    table = generate_shapes(tmp_path / "big", n=2000, seed=0)
    elapsed = time.perf_counter() - start
    assert pq.read_metadata(table).num_rows == 2000
    assert elapsed < 10, f"2,000 images took {elapsed:.1f} s"


# ------------------------------------------------------------------------------------------------------ captions


def check_caption_faithful(caption: str, facts: dict) -> None:
    objects = facts["objects"]
    mentions, rel = parse_caption(caption)
    # exactly the drawn (colour, shape) multiset: every object named, nothing absent named
    named = Counter()
    for count, _, color, shape in mentions:
        named[(color, shape)] += count
    assert named == Counter((o["color"], o["shape"]) for o in objects), (caption, objects)
    words = set(re.findall(r"[a-z]+", caption))
    assert {w for w in words if w in COLORS} == {o["color"] for o in objects}
    assert {SHAPE_WORDS[w] for w in words if w in SHAPE_WORDS} == {o["shape"] for o in objects}
    # sizes named belong to the objects they describe
    for count, size, color, shape in mentions:
        group = [o for o in objects if (o["color"], o["shape"]) == (color, shape)]
        if size is not None and count > 1:
            assert all(o["size"] == size for o in group), caption
        if size is not None and count == 1:
            assert any(o["size"] == size for o in group), caption
    if rel is not None:
        assert len(objects) == 2
        first, second = mentions

        def matches(o, m):
            return (o["color"], o["shape"]) == (m[2], m[3]) and m[1] in (None, o["size"])

        subjects = [i for i, o in enumerate(objects) if matches(o, first)]
        assert len(subjects) == 1, f"relation caption is ambiguous: {caption!r}"
        s = subjects[0]
        o = 1 - s
        assert matches(objects[o], second), caption
        stored = {(r["subject"], r["object"]): r["relation"] for r in facts["relations"]}
        assert stored[(s, o)] == rel, (caption, facts)
        assert centre_relation(objects[s], objects[o]) == rel
    elif len(mentions) > 1:
        # a list names groups left to right by each group's leftmost object
        leftmost = [min(o["center"][0] for o in objects if (o["color"], o["shape"]) == (m[2], m[3])) for m in mentions]
        assert leftmost == sorted(leftmost), (caption, objects)
    if len(mentions) == 1 and mentions[0][0] == 1:
        assert len(objects) == 1


def test_captions_are_faithful_to_facts():
    forms = Counter()
    for i in range(500):
        scene = make_scene(0, i)
        facts = facts_roundtrip(scene)
        check_caption_faithful(scene.caption, facts)
        mentions, rel = parse_caption(scene.caption)
        forms[(facts["count"], rel is not None, tuple(m[0] for m in mentions))] += 1
    # the grammar's main forms all occur
    assert forms[(1, False, (1,))] > 0
    assert forms[(2, True, (1, 1))] > 0
    assert sum(v for (c, r, m), v in forms.items() if c == 2 and m == (2,)) > 0
    assert forms[(3, False, (1, 1, 1))] > 0
    assert sum(v for (c, r, m), v in forms.items() if c == 3 and 2 in m) > 0


def test_caption_grammar_on_built_scenes():
    red_circle = ShapeObject("circle", "red", "small", (0.1, 0.4, 0.28, 0.58))
    blue_square = ShapeObject("square", "blue", "large", (0.6, 0.3, 0.94, 0.64))
    high_star = ShapeObject("star", "yellow", "small", (0.4, 0.02, 0.58, 0.2))
    rng = random.Random(0)
    for _ in range(50):
        caption = caption_for([red_circle, blue_square], rng)
        mentions, rel = parse_caption(caption)
        assert rel == ("left of" if mentions[0][2] == "red" else "right of"), caption
        caption = caption_for([high_star, blue_square], rng)
        mentions, rel = parse_caption(caption)
        assert rel in ({"above", "left of"} if mentions[0][2] == "yellow" else {"below", "right of"}), caption
        assert caption_for([red_circle], rng) in {"a small red circle", "a red circle"}
        assert caption_for([blue_square, high_star, red_circle], rng) in {
            "a red circle, a yellow star and a blue square",
            "a small red circle, a yellow star and a blue square",
            "a red circle, a small yellow star and a blue square",
            "a red circle, a yellow star and a large blue square",
            "a small red circle, a small yellow star and a blue square",
            "a small red circle, a yellow star and a large blue square",
            "a red circle, a small yellow star and a large blue square",
            "a small red circle, a small yellow star and a large blue square",
        }
    twin_a = ShapeObject("triangle", "green", "small", (0.1, 0.1, 0.28, 0.28))
    twin_b = ShapeObject("triangle", "green", "small", (0.6, 0.6, 0.78, 0.78))
    twin_c = ShapeObject("triangle", "green", "small", (0.1, 0.6, 0.28, 0.78))
    twins = {caption_for([twin_a, twin_b], rng) for _ in range(40)}
    assert twins == {"two green triangles", "two small green triangles"}
    assert {caption_for([twin_a, twin_b, twin_c], rng) for _ in range(40)} == {
        "three green triangles",
        "three small green triangles",
    }
    crosses = [
        ShapeObject("cross", "gray", "large", (0.5, 0.5, 0.84, 0.84)),
        ShapeObject("cross", "gray", "small", (0.05, 0.6, 0.23, 0.78)),
    ]
    captions = {caption_for(crosses, rng) for _ in range(60)}
    assert "two gray crosses" in captions
    assert "a large gray cross right of a small gray cross" in captions
    assert "a small gray cross left of a large gray cross" in captions
    with pytest.raises(ValueError):
        caption_for([], rng)


def test_relations_cover_every_ordered_pair_consistently():
    for i in range(300):
        facts = facts_roundtrip(make_scene(5, i))
        n = facts["count"]
        assert n == len(facts["objects"]) and 1 <= n <= 3
        pairs = {(r["subject"], r["object"]): r["relation"] for r in facts["relations"]}
        assert len(facts["relations"]) == n * (n - 1) == len(pairs)
        for (s, o), rel in pairs.items():
            assert rel == centre_relation(facts["objects"][s], facts["objects"][o])
            assert pairs[(o, s)] == INVERSE_RELATION[rel]
        assert facts["counts_by_shape"] == {s: sum(ob["shape"] == s for ob in facts["objects"]) for s in SHAPES}
        assert facts["counts_by_color"] == {c: sum(ob["color"] == c for ob in facts["objects"]) for c in COLORS}
        assert len(facts["background"]) == 3 and max(facts["background"]) < 40  # dark


def test_object_count_distribution():
    counts = Counter(len(make_scene(1, i).objects) for i in range(2000))
    assert abs(counts[1] / 2000 - 0.40) < 0.05
    assert abs(counts[2] / 2000 - 0.35) < 0.05
    assert abs(counts[3] / 2000 - 0.25) < 0.05


# ------------------------------------------------------------------------------------------------------ geometry


def test_objects_do_not_overlap_and_stay_inside():
    for i in range(1000):
        objects = make_scene(2, i).objects
        for o in objects:
            x0, y0, x1, y1 = o.bbox
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert x1 - x0 == pytest.approx({"small": 0.18, "large": 0.34}[o.size], abs=2e-4)
        for a in range(len(objects)):
            for b in range(a + 1, len(objects)):
                p, q = objects[a].bbox, objects[b].bbox
                assert p[2] < q[0] or q[2] < p[0] or p[3] < q[1] or q[3] < p[1], (i, p, q)


def test_rendering_stays_inside_boxes():
    size = 96
    for i in range(150):
        scene = make_scene(4, i)
        pixels = render_scene(scene, size).load()
        inside = set()
        for o in scene.objects:
            x0, y0, x1, y1 = (int(v * size) for v in o.bbox)
            inside.update((x, y) for x in range(x0 - 1, x1 + 2) for y in range(y0 - 1, y1 + 2))
        for x in range(size):
            for y in range(size):
                if (x, y) not in inside:
                    assert pixels[x, y] == scene.background, (i, x, y)


def test_centre_pixel_has_the_object_colour():
    seen = set()
    for size in (96, 64):
        for i in range(300):
            scene = make_scene(6, i)
            image = render_scene(scene, size)
            assert image.mode == "RGB" and image.size == (size, size)
            for o in scene.objects:  # every shape here is filled at its centre
                cx, cy = o.center
                assert image.getpixel((int(cx * size), int(cy * size))) == COLORS[o.color], (i, o)
                seen.add(o.shape)
    assert seen == set(SHAPES)


def test_smallest_image_size_renders():
    for i in range(30):
        image = render_scene(make_scene(0, i), 16)
        assert image.size == (16, 16)


def test_colours_are_distinct_from_each_other_and_the_background():
    values = list(COLORS.values())
    for a in range(len(values)):
        for b in range(a + 1, len(values)):
            assert sum(abs(x - y) for x, y in zip(values[a], values[b])) > 80
    for c in values:
        assert max(c) >= 150  # bright against a background whose channels stay below 40


# -------------------------------------------------------------------------------------------------------- labels


def test_label_is_the_largest_objects_shape_leftmost_on_ties():
    for i in range(1000):
        scene = make_scene(8, i)
        largest = max(SIZES.index(o.size) for o in scene.objects)
        candidates = [o for o in scene.objects if SIZES.index(o.size) == largest]
        assert scene.label == min(candidates, key=lambda o: o.center[0]).shape
    small_left = ShapeObject("circle", "red", "small", (0.05, 0.05, 0.23, 0.23))
    large_right = ShapeObject("star", "red", "large", (0.6, 0.6, 0.94, 0.94))
    large_left = ShapeObject("cross", "red", "large", (0.1, 0.5, 0.44, 0.84))
    from vlforge.components.sources.shapes import label_for

    assert label_for([small_left, large_right]) == "star"
    assert label_for([large_right, small_left, large_left]) == "cross"


def test_label_classes_are_balanced():
    labels = Counter(make_scene(0, i).label for i in range(1000))
    assert set(labels) == set(SHAPES)
    for shape in SHAPES:
        assert labels[shape] >= 50, labels


# ----------------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n": 0}, "n"),
        ({"n": -3}, "n"),
        ({"n": "10"}, "n"),
        ({"n": True}, "n"),
        ({"image_size": 15}, "image_size"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": 96.0}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise_user_error(tmp_path, kwargs, name):
    with pytest.raises(UserError) as info:
        generate_shapes(tmp_path / "out", **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(name + " ")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("builtin:shapes", {"name": "shapes", "n": 2000, "seed": 0, "image_size": 96}),
        ("builtin:shapes?n=500&seed=3&image_size=64", {"name": "shapes", "n": 500, "seed": 3, "image_size": 64}),
        ("builtin:shapes?seed=7", {"name": "shapes", "n": 2000, "seed": 7, "image_size": 96}),
        ("builtin:shapes?image_size=16&n=1", {"name": "shapes", "n": 1, "seed": 0, "image_size": 16}),
    ],
)
def test_parse_builtin_source(spec, expected):
    assert parse_builtin_source(spec) == expected


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("builtin:circles", "unknown builtin source 'circles'"),
        ("builtin:", "unknown builtin source ''"),
        ("shapes", "not a builtin source"),
        ("builtin:shapes?n=0", "n must be >= 1"),
        ("builtin:shapes?image_size=8", "image_size must be >= 16"),
        ("builtin:shapes?n=abc", "must be a non-negative integer"),
        ("builtin:shapes?n=-5", "must be a non-negative integer"),
        ("builtin:shapes?n=1.5", "must be a non-negative integer"),
        ("builtin:shapes?size=3", "unknown parameter 'size'"),
        ("builtin:shapes?n=3&n=4", "given twice"),
        ("builtin:shapes?n", "expected key=value"),
        ("builtin:shapes?n=5&", "expected key=value"),
        ("builtin:shapes?n=1\nseed=2", "must be a non-negative integer"),
    ],
)
def test_parse_builtin_source_rejects(spec, fragment):
    with pytest.raises(UserError) as info:
        parse_builtin_source(spec)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- atomic generation


def test_identical_generation_is_reused_and_a_different_one_replaced(tmp_path, monkeypatch):
    from vlforge.components.sources import shapes

    out = tmp_path / "shapes"
    table = generate_shapes(out, n=10, seed=1, image_size=32)
    marker = out / "marker.txt"
    marker.write_text("kept while the generation is identical")
    with monkeypatch.context() as patch:
        patch.setattr(shapes, "render_scene", lambda *a, **k: pytest.fail("an identical generation was re-rendered"))
        assert generate_shapes(out, n=10, seed=1, image_size=32) == table
    assert marker.exists()
    generate_shapes(out, n=12, seed=1, image_size=32)
    assert not marker.exists()
    assert pq.read_metadata(out / "samples.parquet").num_rows == 12
    assert len(list((out / "images").iterdir())) == 12
    # an incomplete copy (an image lost) is rebuilt
    (out / "images" / "shapes-1-000003.png").unlink()
    generate_shapes(out, n=12, seed=1, image_size=32)
    assert (out / "images" / "shapes-1-000003.png").exists()
    # no temporary siblings are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def test_empty_folder_is_filled_and_foreign_folder_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_shapes(empty, n=3)
    assert (empty / "samples.parquet").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="refusing to replace"):
        generate_shapes(foreign, n=3)
    assert (foreign / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        generate_shapes(a_file, n=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "foreign"]


def test_failed_generation_keeps_the_previous_one(tmp_path, monkeypatch):
    from vlforge.components.sources import shapes

    out = tmp_path / "shapes"
    generate_shapes(out, n=5, seed=2, image_size=32)
    before = sorted(p.name for p in (out / "images").iterdir())
    calls = []

    def broken(scene, image_size=96):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("disk full")
        return render_scene(scene, image_size)

    monkeypatch.setattr(shapes, "render_scene", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_shapes(out, n=8, seed=2, image_size=32)
    assert sorted(p.name for p in (out / "images").iterdir()) == before
    assert json.loads((out / "generation.json").read_text())["n"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]
