"""VQAv2 questions + annotations as a source: one sample per image with its questions and ten answers each, the
split from the questions' data_subtype, annotations that do not match the questions refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_fixtures import write_vqav2
from vlforge.components.sources.config import SourceConfig
from vlforge.components.sources.vqav2 import load_vqav2
from vlforge.components.stages import resolve_source

from vlforge.errors import UserError


def test_questions_grouped_by_image(emoji_dir: Path, tmp_path: Path) -> None:
    q, a, images = write_vqav2(emoji_dir, tmp_path, n=3)
    rows = load_vqav2(f"{q},{a}", images)
    extras = [json.loads(e) for e in rows.table.column("extra").to_pylist()]
    assert [e["image_id"] for e in extras] == [1000, 1001, 1002] and {e["split"] for e in extras} == {"validation"}
    first = extras[0]["vqa"]
    assert [x["question"] for x in first] == ["what group is this emoji in?", "is this a flag?"]
    assert len(first[0]["answers"]) == 10 and first[1]["answer_type"] == "yes/no"
    assert rows.table.column("source_key").to_pylist()[0] == "COCO_val2014_000000001000.png"
    src = resolve_source(SourceConfig(spec=f"vqav2:{q},{a}", images=str(images)))
    assert src.kind == "vqav2" and src.fingerprint == rows.fingerprint and src.describe["questions"] == 6


def test_annotations_that_do_not_match_the_questions(emoji_dir: Path, tmp_path: Path) -> None:
    q, a, images = write_vqav2(emoji_dir, tmp_path, n=2)
    data = json.loads(a.read_text())
    data["annotations"][0]["question_id"] = 99
    data["annotations"][1]["image_id"] = 7
    a.write_text(json.dumps(data))
    with pytest.raises(UserError) as err:
        load_vqav2(f"{q},{a}", images)
    message = str(err.value)
    assert "do not match questions" in message and "1 questions without an annotation (10000)" in message
    assert "1 annotations of no question (99)" in message and "1 annotations about another image" in message


def test_missing_images_and_bad_specs(emoji_dir: Path, tmp_path: Path) -> None:
    q, a, images = write_vqav2(emoji_dir, tmp_path, n=2)
    (images / "COCO_val2014_000000001001.png").unlink()
    with pytest.raises(UserError, match=r"1 images \(1001\) of 2 are missing under"):
        load_vqav2(f"{q},{a}", images)
    with pytest.raises(UserError, match="must be QUESTIONS.json,ANNOTATIONS.json"):
        resolve_source(SourceConfig(spec=f"vqav2:{q}"))
    with pytest.raises(UserError, match="vqav2 annotations '.*absent.json' does not exist"):
        load_vqav2(f"{q},{tmp_path / 'absent.json'}", images)
