"""UNIMO without the facts oracle: hard negatives rewritten by the model's own MLM head (only content words change,
never back to the original, deterministically), related-sample retrieval by similarity over a memory of earlier
batches (the most similar earlier sample is found; what it becomes a positive of), and training steps on real
emoji captions without facts whose CMCL loss contrasts the rewrites and the retrieved samples, with the memory
saved in the checkpoint."""
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SPECIALS, wordpiece
from PIL import Image
from vlforge.components.models.registry import ImageTextBatch, get_family
from vlforge.components.models.unimo.family import model_rewrites, prepare_inputs, split_streams
from vlforge.components.models.unimo.memory import RelatedMemory, add_related
from vlforge.components.models.unimo.mlm_rewrites import STOP_WORDS, caption_words, choose_positions, mlm_rewrites

SMALL = {"image_size": 32, "max_text_length": 16}


@pytest.fixture(scope="module")
def emoji_pairs(emoji_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(emoji_dir / "pairs.parquet")


@pytest.fixture(scope="module")
def emoji_tokenizer(tmp_path_factory: pytest.TempPathFactory, emoji_pairs: pd.DataFrame):
    return wordpiece(tmp_path_factory, emoji_pairs["caption"].tolist(), vocab_size=400)


def emoji_batch(pairs: pd.DataFrame, emoji_dir: Path, tokenizer, rows: range, step: int = 0) -> ImageTextBatch:
    """Emoji-noto pairs as the loop builds a batch: no facts in the metadata."""
    from vlforge.components.training.loop import word_id_tensor

    family = get_family("unimo")
    transform = family.image_transform(family.recipe("tiny", SMALL))
    sub = pairs.iloc[list(rows)]
    captions, n = sub["caption"].tolist(), len(sub)
    enc = tokenizer(captions, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    pixels = torch.stack([transform(Image.open(emoji_dir / p)) for p in sub["path"]])
    return ImageTextBatch(pixels, enc["input_ids"], enc["attention_mask"], captions, sub["key"].tolist(),
                          word_ids=word_id_tensor(enc, n), meta=[{} for _ in range(n)], step=step, tokenizer=tokenizer,
                          max_text_length=16)


def joined(batches: list[ImageTextBatch]) -> ImageTextBatch:
    """The batches as one (what one process sees of every worker's samples)."""
    cat = lambda name: torch.cat([getattr(b, name) for b in batches])
    return ImageTextBatch(cat("pixel_values"), cat("input_ids"), cat("attention_mask"), sum((b.captions for b in batches), []),
                          sum((b.keys for b in batches), []), word_ids=cat("word_ids"), meta=sum((b.meta for b in batches), []),
                          step=batches[0].step, tokenizer=batches[0].tokenizer, max_text_length=batches[0].max_text_length)


def tiny(vocab: int, **overrides):
    family = get_family("unimo")
    recipe = family.recipe("tiny", {**SMALL, **overrides})
    torch.manual_seed(0)
    return family, recipe, family.build_model(recipe, vocab, SPECIALS)


def long_caption_rows(pairs: pd.DataFrame, n: int) -> range:
    """``n`` consecutive rows from where the captions are long enough for every level (3+ content words)."""
    words = pairs["caption"].str.split().str.len()
    start = next(i for i in range(len(pairs) - n) if (words.iloc[i:i + n] >= 3).sum() >= n // 2)
    return range(start, start + n)


# ------------------------------------------------------------------------------------------- model rewrites


def test_model_rewrites_change_only_content_words_and_are_deterministic(emoji_pairs, emoji_dir, emoji_tokenizer) -> None:
    _, recipe, model = tiny(len(emoji_tokenizer))
    model.train()
    batch = emoji_batch(emoji_pairs, emoji_dir, emoji_tokenizer, long_caption_rows(emoji_pairs, 16), step=5)
    paired = split_streams(16, recipe.stream_pattern)["paired"]
    seen: list[tuple[bool, bool]] = []  # (grad enabled, training) of each MLM-head call
    hook = model.lm_head.register_forward_hook(lambda *_: seen.append((torch.is_grad_enabled(), model.training)))
    rewrites = model_rewrites(model, batch, recipe, paired)
    hook.remove()
    assert seen and set(seen) == {(False, False)}  # the MLM pass: no grad, eval mode (no dropout)
    assert model.training  # ... and the mode is given back
    assert {r.level for r in rewrites} == {"word", "phrase", "sentence"}
    special = set(SPECIALS.values())
    for r in rewrites:
        i = r.row
        assert i in paired
        original = batch.input_ids[i].tolist()
        changed = [p for p, (a, b) in enumerate(zip(original, r.ids)) if a != b]
        assert changed == list(r.positions)  # every chosen token changed, nothing else did
        n = int(batch.attention_mask[i].sum())
        words = caption_words(original[:n], batch.word_ids[i][:n].tolist(), special, emoji_tokenizer)
        touched = [(positions, content) for positions, content in words if set(positions) & set(changed)]
        assert all(content and set(positions) <= set(changed) for positions, content in touched)  # whole content words
        for positions, _ in touched:
            assert emoji_tokenizer.decode([original[p] for p in positions]).strip().lower() not in STOP_WORDS
        assert len(touched) == 1 if r.level == "word" else len(touched) >= (2 if r.level == "phrase" else 3)
        assert r.text != batch.captions[i] and r.text == emoji_tokenizer.decode(r.ids, skip_special_tokens=True).strip()
        assert not set(r.ids) & {SPECIALS["mask"], SPECIALS["unk"]} - set(original)
    again = model_rewrites(model, batch, recipe, paired)
    assert [(r.ids, r.level) for r in again] == [(r.ids, r.level) for r in rewrites]
    batch.step = 6  # the choices are seeded by the step: another step rewrites other words
    assert [r.positions for r in model_rewrites(model, batch, recipe, paired)] != [r.positions for r in rewrites]


def test_a_rewrite_takes_the_best_prediction_other_than_the_original(emoji_tokenizer) -> None:
    tok = emoji_tokenizer
    enc = tok(["grinning face with big eyes"], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    face, smiling = tok.convert_tokens_to_ids("face"), tok.convert_tokens_to_ids("smiling")
    vocab = len(tok)

    def predict(masked: torch.Tensor, _mask: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        assert (masked[where] == SPECIALS["mask"]).all()
        logits = torch.zeros(int(where.sum()), vocab)
        logits[:, face], logits[:, smiling] = 10.0, 5.0  # the original "face" first, then "smiling"
        logits[:, SPECIALS["pad"]] = 20.0  # never predicted: a special token
        return logits

    words = [tok.decode([t]) for t in ids[0].tolist()]
    position = words.index("face")

    class Pick:  # a "word" rewrite of the word "face"
        def random(self) -> float:
            content = [w for w in words[1:-1] if w not in STOP_WORDS]
            return content.index("face") / len(content)

    out = mlm_rewrites(predict, tok, ids, mask, None, [Pick()], ["word"], SPECIALS["mask"], set(SPECIALS.values()), vocab)
    (rewrite,) = out[0]
    assert rewrite.positions == (position,) and rewrite.ids[position] == smiling
    assert rewrite.text == "grinning smiling with big eyes"


def test_a_rewrite_keeps_the_word_boundaries_of_the_bpe_tokenizer(emoji_pairs, tmp_path: Path) -> None:
    """With the project's BPE (word ends marked ``</w>``), a word-end token is refilled with a word-end token even
    where the head prefers a word-inner piece, which would glue the caption's words together."""
    from vlforge.components.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

    tok = load_tokenizer(train_tokenizer(emoji_pairs["caption"], tmp_path / "bpe", TokenizerConfig(vocab_size=400)))
    vocab, special = len(tok), {t: tok.convert_tokens_to_ids(f"<{t}>") for t in ("pad", "mask", "bos", "eos", "unk")}
    enc = tok(["grinning face"], return_tensors="pt")
    pieces = tok.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    assert pieces[-2] == "face</w>"
    inner = next(i for i, t in enumerate(tok.convert_ids_to_tokens(list(range(vocab))))
                 if t.isalpha() and len(t) > 2 and t not in STOP_WORDS)  # a word-inner piece: no </w>
    end = tok.convert_tokens_to_ids("smiling</w>")

    def predict(masked: torch.Tensor, _mask: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(int(where.sum()), vocab)
        logits[:, inner], logits[:, end] = 10.0, 5.0
        return logits

    class Last:  # a "word" rewrite of the last word, "face"
        def random(self) -> float:
            return 0.99

    (rewrite,) = mlm_rewrites(predict, tok, enc["input_ids"], enc["attention_mask"], None, [Last()], ["word"],
                              special["mask"], set(special.values()), vocab)[0]
    assert rewrite.ids[len(pieces) - 2] == end and rewrite.text == "grinning smiling"


def test_levels_choose_one_word_a_phrase_or_most_of_the_sentence() -> None:
    words = [([1], True), ([2], False), ([3, 4], True), ([5], True), ([6], False), ([7], True)]
    for seed in range(20):
        rng = random.Random(seed)
        word = choose_positions(words, "word", rng)
        assert word in ([1], [3, 4], [5], [7])
        phrase = choose_positions(words, "phrase", rng)
        assert phrase in ([3, 4, 5], [1, 3, 4], [3, 4, 5], [5, 7])
        sentence = choose_positions(words, "sentence", rng)  # 3 of the 4 content words (half, at least 3)
        assert sentence in ([1, 3, 4, 5], [1, 3, 4, 7], [1, 5, 7], [3, 4, 5, 7])
    one = [([1], True), ([2], False)]
    assert choose_positions(one, "phrase", random.Random(0)) is None
    assert choose_positions(one, "sentence", random.Random(0)) is None


# -------------------------------------------------------------------------------------------------- memory


def unit(*xs: float) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(xs, dtype=torch.float), dim=-1)


def test_memory_retrieves_the_most_similar_earlier_sample() -> None:
    memory = RelatedMemory(4, 3)
    earlier = torch.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1), unit(1, 1, 0)])
    memory.push("text", earlier[:2], torch.tensor([10, 11]))
    memory.push("text", earlier[2:], torch.tensor([12, 13]))
    query = torch.stack([unit(0.1, 0.2, 1.0), unit(0.9, 1.0, 0.0)])
    assert memory.retrieve("text", query, 1, torch.tensor([], dtype=torch.long)).nonzero().tolist() == [[0, 2], [1, 3]]
    # a sample in the current batch is not retrieved: the next most similar one is
    assert memory.retrieve("text", query, 1, torch.tensor([13])).nonzero().tolist() == [[0, 2], [1, 1]]
    # first in, first out: a fifth entry replaces the oldest
    memory.push("text", unit(0, 0.1, 1.0)[None], torch.tensor([14]))
    assert memory.keys("text").tolist() == [14, 11, 12, 13]
    assert memory.retrieve("text", query[:1], 1, torch.tensor([], dtype=torch.long)).nonzero().tolist() == [[0, 0]]
    # an empty memory retrieves nothing; k beyond the filled entries gives only those
    empty = RelatedMemory(4, 3)
    assert not empty.retrieve("image", query, 2, torch.tensor([], dtype=torch.long)).any()
    empty.push("image", earlier[:1], torch.tensor([20]))
    assert empty.retrieve("image", query, 3, torch.tensor([], dtype=torch.long)).sum(1).tolist() == [1, 1]


def test_retrieved_samples_join_the_positives_of_their_pair() -> None:
    memory = RelatedMemory(4, 2)
    memory.push("image", torch.stack([unit(1, 0), unit(0, 1)]), torch.tensor([30, 31]))
    memory.push("text", torch.stack([unit(1, 0.1), unit(0.1, 1)]), torch.tensor([31, 32]))
    # batch: two paired samples (keys 1, 2) whose images and captions point at opposite memory entries
    img, txt = torch.stack([unit(1, 0.05), unit(0.05, 1)]), torch.stack([unit(0.1, 1), unit(1, 0.1)])
    pos = torch.eye(2, dtype=torch.bool)
    keys, query = torch.tensor([1, 2]), torch.tensor([True, True])
    img_all, txt_all, pos_all = add_related(memory, img, txt, pos, keys, keys, query, query, 1)
    assert img_all.shape == (4, 2) and txt_all.shape == (4, 2)
    assert torch.equal(img_all[2:], memory.features("image")[:2]) and torch.equal(txt_all[2:], memory.features("text")[:2])
    expected = torch.tensor([
        # captions 1, 2; memory captions of keys 31 (near caption 2), 32 (near caption 1)
        [1, 0, 0, 1],  # image 1: its caption and the memory caption its caption retrieved
        [0, 1, 1, 0],  # image 2
        [1, 0, 0, 0],  # memory image 30 (retrieved by image 1): positive of image 1's caption
        [0, 1, 1, 0],  # memory image 31 (retrieved by image 2): of caption 2, and of memory caption 31 (same sample)
    ], dtype=torch.bool)
    assert torch.equal(pos_all, expected)


def test_recipe_fields_are_checked_and_retrieval_needs_both_memory_and_k() -> None:
    from vlforge.errors import UserError

    family = get_family("unimo")
    for field, value in (("rewrites", "oracle"), ("model_rewrite_levels", ["clause"]), ("memory_size", -1),
                         ("related_k", -1)):
        with pytest.raises(UserError, match=rf"^recipe 'tiny' of family 'unimo': field '{field}[.0-9]*': [^\n]+$"):
            family.recipe("tiny", {field: value})
    assert family.recipe("tiny").rewrites == "model" and family.recipe("base").rewrites == "model"  # no oracle
    for overrides, rows in (({}, 1024), ({"related_k": 0}, 0), ({"memory_size": 0}, 0)):
        _, _, model = tiny(100, **overrides)
        memory = model.related_memory
        assert (0 if memory is None else memory.keys("text").shape[0]) == rows
        assert ("related_memory.text_features" in model.state_dict()) == bool(rows)  # saved with the weights


# ------------------------------------------------------------------------------------- training on emoji


def test_emoji_steps_contrast_rewrites_and_retrieved_samples_and_resume_the_memory(
        emoji_pairs, emoji_dir, emoji_tokenizer, tmp_path: Path) -> None:
    family, recipe, model = tiny(len(emoji_tokenizer), memory_size=32, related_k=2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = emoji_batch(emoji_pairs, emoji_dir, emoji_tokenizer, long_caption_rows(emoji_pairs, 16), step=0)
    inp = prepare_inputs(model, first, recipe)
    n_captions = 8 + 4  # PPIT over 16: 8 paired, 4 text-only
    assert int(inp["text_is_cmcl"].sum()) > n_captions  # the model's rewrites of the paired captions
    assert not inp["cmcl_pos"][:, n_captions:].any()  # ... all negatives
    out = family.training_step(model, first, recipe)
    assert float(out["cmcl_related"]) == 0 and float(out["cmcl_texts"]) == int(inp["text_is_cmcl"].sum())
    out["loss"].backward()
    opt.step()
    assert int((model.related_memory.keys("text") >= 0).sum()) == n_captions
    assert int((model.related_memory.keys("image") >= 0).sum()) == 12  # paired + image-only
    family.save(model, tmp_path / "ckpt", recipe)
    second = emoji_batch(emoji_pairs, emoji_dir, emoji_tokenizer, range(200, 216), step=1)
    model.eval()  # eval mode: the memory is read, not written
    with torch.no_grad():
        at_save = family.training_step(model, second, recipe)
    assert int((model.related_memory.keys("text") >= 0).sum()) == n_captions  # read, not written
    model.train()
    n_second = int(prepare_inputs(model, second, recipe)["text_is_cmcl"].sum())
    out = family.training_step(model, second, recipe)
    # each paired image and caption retrieved 2 related samples (shared ones counted once): more texts and images
    related_texts = float(out["cmcl_texts"]) - n_second
    assert related_texts >= 2 and float(out["cmcl_related"]) - related_texts >= 2
    assert torch.isfinite(out["loss"]) and out["cmcl"] > 0
    out["loss"].backward()
    assert int((model.related_memory.keys("text") >= 0).sum()) == 2 * n_captions  # the second step joined it
    # the memory travels with the checkpoint: a run resumed as the loop resumes retrieves what this one did
    _, _, resumed = tiny(len(emoji_tokenizer), memory_size=32, related_k=2)
    resumed.load_state_dict(family.load(tmp_path / "ckpt").state_dict())
    assert int((resumed.related_memory.keys("text") >= 0).sum()) == n_captions
    resumed.eval()
    with torch.no_grad():
        again = family.training_step(resumed, second, recipe)
    assert float(again["cmcl_related"]) == float(at_save["cmcl_related"]) > 0
    assert torch.allclose(again["loss"], at_save["loss"], atol=1e-6)


MEMORY_WORKER = """
import sys, torch, torch.distributed as dist
from pathlib import Path
import pandas as pd
sys.path.insert(0, sys.argv[1])
from test_unimo_rewrites_model import emoji_batch, tiny
from vlforge.components.tokenizer import load_tokenizer
rank, port, out, tok_dir, emoji_dir = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], Path(sys.argv[6])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
tokenizer, pairs = load_tokenizer(tok_dir), pd.read_parquet(emoji_dir / "pairs.parquet")
family, recipe, model = tiny(len(tokenizer), memory_size=64, related_k=2, dropout=0.0)
model.train()
family.training_step(model, emoji_batch(pairs, emoji_dir, tokenizer, range(300 + 8 * rank, 308 + 8 * rank)), recipe)
model.eval()
with torch.no_grad():
    second = family.training_step(model, emoji_batch(pairs, emoji_dir, tokenizer, range(400 + 8 * rank, 408 + 8 * rank), 1), recipe)
torch.save({"keys": model.related_memory.keys("text").clone(), "image_keys": model.related_memory.keys("image").clone(),
            "cmcl": second["cmcl"], "related": second["cmcl_related"]}, out)
dist.destroy_process_group()
"""


@pytest.mark.slow  # two gloo worker processes: about a minute on 2 cores
def test_two_workers_share_one_memory_of_the_global_batch(emoji_pairs, emoji_dir, emoji_tokenizer, tmp_path: Path) -> None:
    """Under 2 gloo workers every worker pushes the gathered batch: both hold the same memory (so DDP's buffer
    broadcast changes nothing and rank 0's checkpoint is every rank's), and the next step's retrieval and CMCL are
    what one process gives on both workers' samples."""
    import os
    import socket
    import subprocess
    import sys

    emoji_tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "worker.py").write_text(MEMORY_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(Path(__file__).parent), str(r), str(port),
                               str(tmp_path / f"rank{r}.pt"), str(tmp_path / "tok"), str(emoji_dir)], env=env)
             for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["keys"], ranks[1]["keys"]) and torch.equal(ranks[0]["image_keys"], ranks[1]["image_keys"])
    family, recipe, model = tiny(len(emoji_tokenizer), memory_size=64, related_k=2, dropout=0.0)
    model.train()
    both = lambda start, step: [emoji_batch(emoji_pairs, emoji_dir, emoji_tokenizer, range(start + 8 * r, start + 8 + 8 * r), step)
                                for r in range(2)]
    family.training_step(model, joined(both(300, 0)), recipe)
    # the same entries (one process orders the streams over all 16 samples, the workers by rank)
    assert sorted(model.related_memory.keys("text").tolist()) == sorted(ranks[0]["keys"].tolist())
    one = joined(both(400, 1))
    model.eval()
    with torch.no_grad():
        out = family.training_step(model, one, recipe)
    for r in ranks:
        assert float(r["related"]) == float(out["cmcl_related"]) > 0
        assert torch.allclose(r["cmcl"], out["cmcl"], atol=1e-4)
