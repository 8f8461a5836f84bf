"""Tokenizer stage: train a subword tokenizer (BPE or WordPiece) on the training captions — merges learned
deterministically by ``components/bpe.py``, encoding by HF ``tokenizers`` — or adopt a local HF tokenizer directory. The result is a directory ``PreTrainedTokenizerFast.from_pretrained`` loads offline.

Special tokens are laid out so that no family mistakes one for another: pad=0, unk=1, mask=2, bos=3, eos=4.
(CLIP's text pooling in ``transformers`` treats ``eos_token_id == 2`` as the legacy "argmax" case, so the end
token must not be id 2.)"""
from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from vlforge.components.bpe import learn_merges
from vlforge.errors import UserError

if TYPE_CHECKING:  # transformers is imported where a tokenizer is made or loaded: configs import this module
    from transformers import PreTrainedTokenizerBase

SPECIAL_TOKENS = ["<pad>", "<unk>", "<mask>", "<bos>", "<eos>"]


class TokenizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field("bpe", pattern="^(bpe|wordpiece|pretrained)$")
    vocab_size: int = Field(2048, ge=len(SPECIAL_TOKENS) + 16)
    min_frequency: int = Field(1, ge=1)
    lowercase: bool = True
    max_length: int = Field(32, ge=4)
    pretrained_dir: str | None = None  # kind=pretrained: a local HF tokenizer directory (never a hub name)


def train_tokenizer(captions: Iterable[str], out_dir: Path, config: TokenizerConfig) -> Path:
    """Train (or adopt) a tokenizer and save it to ``out_dir``; returns ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.kind == "pretrained":
        return _adopt_pretrained(config, out_dir)
    norm = normalizers.Sequence([normalizers.NFKC()] + ([normalizers.Lowercase()] if config.lowercase else []))
    pre = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    captions = [c for c in captions if c and c.strip()]
    if not captions:
        raise UserError("tokenizer: the dataset's training split has no captions to train on")
    # the words exactly as the tokenizer will see them (its own normaliser and pre-tokeniser)
    words = [w for c in captions for w, _ in pre.pre_tokenize_str(norm.normalize_str(c))]
    if config.kind == "bpe":
        vocab, merges = learn_merges(words, config.vocab_size, SPECIAL_TOKENS, config.min_frequency, end_of_word_suffix="</w>")
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", end_of_word_suffix="</w>"))
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
    else:
        vocab, _ = learn_merges(words, config.vocab_size, SPECIAL_TOKENS, config.min_frequency, continuing_prefix="##")
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", continuing_subword_prefix="##"))
        tok.decoder = decoders.WordPiece()
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    bos, eos = tok.token_to_id("<bos>"), tok.token_to_id("<eos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B:1 <eos>:1", special_tokens=[("<bos>", bos), ("<eos>", eos)]
    )
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=config.max_length,
    )
    fast.save_pretrained(out_dir)
    return out_dir


def _adopt_pretrained(config: TokenizerConfig, out_dir: Path) -> Path:
    src = Path(config.pretrained_dir or "")
    if not config.pretrained_dir or not src.is_dir():
        raise UserError(f"tokenizer.pretrained_dir '{config.pretrained_dir}' is not a local directory")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"tokenizer.pretrained_dir '{src}' holds no loadable tokenizer: {str(exc).splitlines()[0]}") from None
    tok.model_max_length = config.max_length
    tok.save_pretrained(out_dir)
    return out_dir


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy a tokenizer directory next to a model checkpoint (so the checkpoint is self-contained)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)
