"""The items derived from scene facts: answers, truth values and targets checked against hand-built scenes."""
from vlforge.components.sources.scene_tasks import (
    grounding_phrases,
    pair_statements,
    vqa_questions,
)
from vlforge.components.sources.shapes import make_scene


def facts(*objects: tuple[str, str, tuple[float, float, float, float]]) -> dict:
    objs = [{"shape": s, "color": c, "size": "small", "bbox": list(b),
             "center": [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]} for s, c, b in objects]
    rel = []
    for i, a in enumerate(objs):
        for j, b in enumerate(objs):
            if i != j:
                dx, dy = b["center"][0] - a["center"][0], b["center"][1] - a["center"][1]
                r = ("left of" if dx > 0 else "right of") if abs(dx) >= abs(dy) else ("above" if dy > 0 else "below")
                rel.append({"subject": i, "relation": r, "object": j})
    return {"objects": objs, "count": len(objs), "relations": rel}


TWO = facts(("circle", "red", (0.1, 0.4, 0.3, 0.6)), ("square", "blue", (0.6, 0.4, 0.8, 0.6)))
ONE = facts(("star", "red", (0.4, 0.4, 0.6, 0.6)))


def test_vqa_questions_of_a_two_object_scene() -> None:
    qs = {q.qtype: q for q in vqa_questions("k", TWO)}
    assert qs["color"].question == "what colour is the circle?" and qs["color"].answer == "red"
    assert qs["color"].statements[qs["color"].candidates.index("red")] == "a red circle"
    assert qs["shape"].question == "what shape is the red object?" and qs["shape"].answer == "circle"
    assert qs["count"].answer == "two"
    assert qs["position"].answer == "left of"
    assert "a red circle left of a blue square" in qs["position"].statements
    yn = qs["yes/no"]
    assert yn.answer == ("yes" if yn.probe in ("a red circle", "a blue square") else "no")


def test_ambiguous_questions_are_not_asked() -> None:
    same = facts(("circle", "red", (0.1, 0.1, 0.3, 0.3)), ("circle", "red", (0.6, 0.1, 0.8, 0.3)))
    kinds = {q.qtype for q in vqa_questions("k", same)}
    assert kinds == {"count", "yes/no"}  # no unique shape or colour, no relation between identical objects
    assert {q.qtype for q in vqa_questions("k", ONE)} == {"color", "shape", "count", "yes/no"}


def test_yes_no_answers_are_balanced_and_true() -> None:
    answers = []
    for i in range(200):
        scene = make_scene(0, i)
        present = {f"a {o.color} {o.shape}" for o in scene.objects}
        (yn,) = [q for q in vqa_questions(f"k{i}", scene.facts()) if q.qtype == "yes/no"]
        assert (yn.probe in present) == (yn.answer == "yes")
        answers.append(yn.answer)
    assert 70 < answers.count("yes") < 130


def test_pair_statements_truth() -> None:
    both, either, more = pair_statements("a", TWO, "b", ONE)
    assert more.text == "the left image has more objects than the right image" and more.label is True
    has = lambda f, p: any(f"a {o['color']} {o['shape']}" == p for o in f["objects"])
    assert both.label == (has(TWO, both.phrase) and has(ONE, both.phrase))
    assert either.label == (has(TWO, either.phrase) or has(ONE, either.phrase))
    labels = [st.label for i in range(0, 200, 2)
              for st in pair_statements(f"{i}", make_scene(0, i).facts(), f"{i + 1}", make_scene(0, i + 1).facts())]
    assert 0.25 < sum(labels) / len(labels) < 0.75


def test_grounding_phrases_pick_unique_objects() -> None:
    three = facts(("circle", "red", (0.1, 0.1, 0.3, 0.3)), ("circle", "red", (0.6, 0.1, 0.8, 0.3)),
                  ("star", "green", (0.3, 0.6, 0.5, 0.8)))
    (g,) = grounding_phrases("k", three)
    assert g.phrase == "a green star" and g.target == 2 and len(g.boxes) == 3
    assert grounding_phrases("k", ONE) == []
