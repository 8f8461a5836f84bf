from pathlib import Path

import pytest
from vlforge.components.tokenizer import (
    TokenizerConfig,
    load_tokenizer,
    train_tokenizer,
)

from vlforge.errors import UserError

CAPTIONS = ["a small red circle left of a blue square", "two green triangles", "a large yellow star above a cyan cross"] * 20


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_trained_tokenizer_round_trips_offline(tmp_path: Path, kind: str) -> None:
    train_tokenizer(CAPTIONS, tmp_path / "tok", TokenizerConfig(kind=kind, vocab_size=200))
    tok = load_tokenizer(tmp_path / "tok")
    assert (tok.pad_token_id, tok.unk_token_id, tok.mask_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3, 4)
    ids = tok("A small red circle")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "asmallredcircle"
    # truncation keeps the end token (CLIP pools at it)
    long = tok(" ".join(CAPTIONS[:5]), truncation=True, max_length=8)["input_ids"]
    assert len(long) == 8 and long[-1] == tok.eos_token_id


def test_adopt_local_pretrained_and_errors(tmp_path: Path) -> None:
    train_tokenizer(CAPTIONS, tmp_path / "src", TokenizerConfig(vocab_size=100))
    train_tokenizer([], tmp_path / "copy", TokenizerConfig(kind="pretrained", pretrained_dir=str(tmp_path / "src")))
    assert load_tokenizer(tmp_path / "copy")("red circle")["input_ids"] == load_tokenizer(tmp_path / "src")("red circle")["input_ids"]
    with pytest.raises(UserError, match="is not a local directory"):
        train_tokenizer([], tmp_path / "x", TokenizerConfig(kind="pretrained", pretrained_dir=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="no captions"):
        train_tokenizer(["", "  "], tmp_path / "y", TokenizerConfig())


def test_task_prompts_and_scene_questions_are_in_the_vocabulary(tmp_path: Path) -> None:
    import json

    from vlforge.components.sources.shapes import make_scene
    from vlforge.components.stages import task_texts

    scenes = [make_scene(0, i) for i in range(80)]
    rows = [{"caption": s.caption, "key": f"k{i}", "facts": json.dumps(s.facts())} for i, s in enumerate(scenes)]
    captions_only = load_tokenizer(train_tokenizer([r["caption"] for r in rows], tmp_path / "a", TokenizerConfig(vocab_size=200)))
    with_tasks = load_tokenizer(train_tokenizer([r["caption"] for r in rows] + task_texts(rows), tmp_path / "b",
                                                TokenizerConfig(vocab_size=200)))
    prompt = "question: how many objects are there? answer: image text match: true"
    unk = captions_only.unk_token_id
    assert unk in captions_only(prompt)["input_ids"]  # a caption-only vocabulary cannot write the prompts
    assert unk not in with_tasks(prompt)["input_ids"]
