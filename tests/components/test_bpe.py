import hashlib
import subprocess
import sys

from vlforge.components.bpe import learn_merges
from vlforge.components.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

SPECIALS = ["<pad>", "<unk>"]


def test_merges_follow_counts_then_lexicographic_order() -> None:
    words = ["low"] * 5 + ["lower"] * 2 + ["newest"] * 6 + ["widest"] * 3
    vocab, merges = learn_merges(words, 100, SPECIALS, end_of_word_suffix="</w>")
    # counts: (e,s)=9, (s,t</w>)=9, (w,e)=8, (l,o)=7 ... ties broken by the smaller pair
    assert merges[0] == ("e", "s") and merges[1] == ("es", "t</w>")
    assert vocab["<pad>"] == 0 and vocab["<unk>"] == 1
    assert {"low</w>", "newest</w>", "widest</w>", "lower</w>"} <= set(vocab)  # enough room: every word merges whole
    ids = list(vocab.values())
    assert ids == list(range(len(ids)))


def test_wordpiece_prefix_and_min_frequency() -> None:
    vocab, merges = learn_merges(["ab", "ab", "cd"], 100, SPECIALS, min_frequency=2, continuing_prefix="##")
    assert merges == [("a", "##b")] and "ab" in vocab and "cd" not in vocab and "##d" in vocab


SCRIPT = """
import hashlib, sys
from pathlib import Path
from vlforge.components.tokenizer import TokenizerConfig, train_tokenizer
caps = [f"a {s} {c} {sh} left of a {c2} {sh2}" for s in ["small","large"] for c in ["red","blue","cyan"]
        for sh in ["circle","star"] for c2 in ["gray","orange"] for sh2 in ["cross","diamond"]]
train_tokenizer(caps, Path(sys.argv[1]), TokenizerConfig(vocab_size=80, kind=sys.argv[2]))
print(hashlib.sha256((Path(sys.argv[1]) / "tokenizer.json").read_bytes()).hexdigest())
"""


def test_training_is_identical_across_processes(tmp_path) -> None:
    for kind in ("bpe", "wordpiece"):
        hashes = {subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / f"{kind}{i}"), kind], capture_output=True,
                                 text=True, check=True).stdout.strip() for i in range(2)}
        assert len(hashes) == 1, kind  # HF's own trainers differ run to run (hash-map order of the alphabet)
    tok = load_tokenizer(tmp_path / "bpe0")
    assert tok.unk_token_id not in tok("a small red star left of a gray cross")["input_ids"]


def test_hash_helper_is_not_trivial(tmp_path) -> None:
    train_tokenizer(["one two", "three"], tmp_path / "a", TokenizerConfig(vocab_size=30))
    train_tokenizer(["one two", "four"], tmp_path / "b", TokenizerConfig(vocab_size=30))
    digest = lambda p: hashlib.sha256((p / "tokenizer.json").read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "a") != digest(tmp_path / "b")
