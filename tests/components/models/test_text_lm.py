"""text-lm checks (the shared battery covers learning, save/load and recipes): GPT-2 small's size, the causal LM loss
predicts exactly the caption's real tokens, and the checkpoint guards."""
from pathlib import Path

import pytest
import torch
from conftest import SPECIALS, paper_size_model, parameter_count
import torch.nn.functional as F
from vlforge.components.models.registry import ImageTextBatch, get_family
from vlforge.components.models.text_lm import load_gpt2
from vlforge.components.tokenizer import (
    TokenizerConfig,
    load_tokenizer,
    train_tokenizer,
)

from vlforge.errors import UserError

SMALL = {"image_size": 32, "max_text_length": 16, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "dropout": 0.0}
CAPTIONS = ["a red circle left of a blue square", "a green triangle", "two yellow stars above a red circle"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return load_tokenizer(train_tokenizer(CAPTIONS * 20, tmp_path_factory.mktemp("tok") / "tok",
                                          TokenizerConfig(kind="wordpiece", vocab_size=60)))


def caption_batch(tokenizer, length: int = 16) -> ImageTextBatch:
    enc = tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return ImageTextBatch(torch.zeros(3, 3, 32, 32), enc["input_ids"], enc["attention_mask"], CAPTIONS,
                          ["k0", "k1", "k2"], tokenizer=tokenizer, max_text_length=length)


def test_paper_size_is_gpt2_small() -> None:
    # GPT-2 small as released (openai-community/gpt2): 124,439,808 parameters with the LM head tied to the 50,257 x
    # 768 token embeddings (counted once) and 1,024 x 768 positions. Radford et al. 2019, Table 2 lists it as 117M,
    # a figure OpenAI later corrected to 124M.
    model = paper_size_model("text-lm", 49408)
    count = parameter_count(model)
    assert abs(count - 124_439_808) / 124_439_808 < 0.01, count
    assert model.lm_head.weight is model.transformer.wte.weight


def test_loss_is_next_token_ce_on_real_tokens_only(tokenizer) -> None:
    family = get_family("text-lm")
    recipe = family.recipe("tiny", SMALL)
    torch.manual_seed(0)
    model = family.build_model(recipe, len(tokenizer), SPECIALS).eval()
    batch = caption_batch(tokenizer)
    with torch.no_grad():
        loss = family.training_step(model, batch, recipe)["loss"]
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    # by hand: position t predicts token t+1, for every real token after <bos> (the <eos> included)
    terms = []
    for b in range(3):
        n = int(batch.attention_mask[b].sum())
        assert batch.input_ids[b, 0] == SPECIALS["bos"] and batch.input_ids[b, n - 1] == SPECIALS["eos"]
        terms.append(F.cross_entropy(logits[b, : n - 1], batch.input_ids[b, 1:n], reduction="none"))
    assert torch.allclose(loss, torch.cat(terms).mean(), atol=1e-5)
    # padding is neither predicted nor attended to: rewriting the pad ids leaves the loss unchanged
    scribbled = batch.input_ids.masked_fill(batch.attention_mask == 0, 7)
    batch2 = caption_batch(tokenizer)
    batch2.input_ids = scribbled
    with torch.no_grad():
        assert torch.allclose(family.training_step(model, batch2, recipe)["loss"], loss, atol=1e-6)


def test_recipe_and_checkpoint_guards(tmp_path: Path) -> None:
    family = get_family("text-lm")
    with pytest.raises(UserError, match="exceeds n_positions"):
        family.build_model(family.recipe("tiny", {**SMALL, "n_positions": 8}), 60, SPECIALS)
    with pytest.raises(UserError, match="not a multiple of num_heads"):
        family.build_model(family.recipe("tiny", {**SMALL, "num_heads": 3}), 60, SPECIALS)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="not a GPT-2 one"):
        load_gpt2(tmp_path)
    with pytest.raises(UserError, match="no GPT-2 checkpoint"):
        load_gpt2(tmp_path / "missing")


def test_context_qa_rows_read_the_caption_in_front_of_bos(tmp_path: Path) -> None:
    """With context_qa_prob, a scene sample becomes 'caption <bos> question: q answer: a <eos>' (where Frozen puts its
    visual prefix), drawn deterministically from the batch; prob 0 leaves the loop's tokenisation untouched."""
    from vlforge.components.models.masking import batch_generator
    from vlforge.components.models.text_lm.family import context_qa_rows
    from vlforge.components.sources.scene_tasks import vqa_questions
    from vlforge.components.sources.shapes import make_scene, sample_key

    scenes = [make_scene(0, i) for i in range(6)]
    keys = [sample_key(0, i) for i in range(6)]
    texts = [s.caption for s in scenes] + [f"question: {q.question} answer: {q.answer}"
                                           for s, k in zip(scenes, keys) for q in vqa_questions(k, s.facts())]
    tok = load_tokenizer(train_tokenizer(texts * 3, tmp_path / "tok", TokenizerConfig(kind="wordpiece", vocab_size=120)))
    captions = [s.caption for s in scenes]
    enc = tok(captions, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    batch = ImageTextBatch(torch.zeros(6, 3, 32, 32), enc["input_ids"], enc["attention_mask"], captions, keys,
                           meta=[{"facts": s.facts()} for s in scenes], tokenizer=tok, max_text_length=24)
    bos, eos = tok.convert_tokens_to_ids("<bos>"), tok.convert_tokens_to_ids("<eos>")
    rows, n_qa = context_qa_rows(batch, bos, eos, 1.0, batch_generator(keys, 7), 128)
    assert n_qa == 6
    for row, scene, key, caption in zip(rows, scenes, keys, captions):
        cut = row.index(bos)
        assert tok.decode(row[:cut]) == tok.decode(tok(caption, add_special_tokens=False)["input_ids"])
        assert row[-1] == eos and row.count(bos) == 1
        asked = tok.decode(row[cut + 1 : -1])
        assert any(asked == tok.decode(tok(f"question: {q.question} answer: {q.answer}", add_special_tokens=False)["input_ids"])
                   for q in vqa_questions(key, scene.facts())), asked
    assert context_qa_rows(batch, bos, eos, 1.0, batch_generator(keys, 7), 128) == (rows, n_qa)
    plain, none = context_qa_rows(batch, bos, eos, 0.0, batch_generator(keys, 7), 128)
    assert none == 0 and plain == [enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist() for i in range(6)]
    family = get_family("text-lm")
    recipe = family.recipe("tiny", {**SMALL, "context_qa_prob": 1.0})
    model = family.build_model(recipe, len(tok), {"pad": 0, "unk": 1, "mask": 2, "bos": bos, "eos": eos})
    out = family.training_step(model, batch, recipe)
    assert float(out["context_qa_share"]) == 1.0 and torch.isfinite(out["loss"])
