"""What the family tests share: the special-token ids every tiny model is built with, real WordPiece tokenizers
trained on builtin-scene texts (``tokenizer``: 100 scenes' captions and their VQA prompts; ``scene_tokenizer``: the
family battery's 300 scenes; ``wordpiece`` for a module's own texts), the paper-size models built on the meta
device, and the one-thread setting for modules of tiny models. Test modules import the plain names from here
(``from conftest import SPECIALS``); pytest finds the fixtures itself."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from vlforge.components.models.registry import get_family, special_token_ids

# the ids ``components/tokenizer.py`` gives its specials (asserted against a trained tokenizer by ``scene_tokenizer``)
SPECIALS = {"pad": 0, "unk": 1, "mask": 2, "bos": 3, "eos": 4}


def scene_texts(n: int, questions: Literal["plain", "prompted"] | None = "plain") -> list[str]:
    """Builtin scenes 0..n-1 of seed 0: each caption, then its scene questions with their answers, as
    ``"<question> <answer>"`` (``plain``) or as the VQA prompt ``"question: <q> answer: <a>"`` (``prompted``)."""
    from vlforge.components.sources.scene_tasks import vqa_questions
    from vlforge.components.sources.shapes import make_scene, sample_key

    texts = []
    for i in range(n):
        scene = make_scene(0, i)
        texts.append(scene.caption)
        if questions is not None:
            prefix = "question: " if questions == "prompted" else ""
            middle = " answer:" if questions == "prompted" else ""
            texts += [f"{prefix}{q.question}{middle} {q.answer}" for q in vqa_questions(sample_key(0, i), scene.facts())]
    return texts


def wordpiece(tmp_path_factory: pytest.TempPathFactory, texts: Iterable[str], vocab_size: int = 160) -> Any:
    """A WordPiece tokenizer trained with the project's own tokenizer stage code on ``texts``."""
    from vlforge.components.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

    return load_tokenizer(train_tokenizer(list(texts), tmp_path_factory.mktemp("tok") / "tok",
                                          TokenizerConfig(kind="wordpiece", vocab_size=vocab_size)))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """100 scenes' captions and VQA prompts (the prefix-LM families train on exactly those prompts)."""
    return wordpiece(tmp_path_factory, scene_texts(100, "prompted"))


@pytest.fixture(scope="module")
def scene_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A real WordPiece tokenizer trained on builtin-scene captions and the scene-task words (questions, answers)."""
    tokenizer = wordpiece(tmp_path_factory, scene_texts(300))
    assert special_token_ids(tokenizer) == SPECIALS
    return tokenizer


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster than two fighting other processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def paper_size_model(name: str, vocab_size: int, recipe: str = "base", overrides: dict[str, Any] | None = None,
                     special_ids: dict[str, int] | None = None) -> torch.nn.Module:
    """Family ``name``'s model of ``recipe`` built on the meta device (shapes only, no memory), for parameter counts."""
    family = get_family(name)
    with torch.device("meta"):
        return family.build_model(family.recipe(recipe, overrides), vocab_size, SPECIALS if special_ids is None else special_ids)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_untrained(name: str, overrides: dict[str, Any], vocab_size: int, out: Path, recipe: str = "tiny") -> Path:
    """An untrained model of family ``name`` (seed 1) saved to ``out`` as the catalog saves one (no tokenizer beside
    it): the teachers and language models other families load."""
    family = get_family(name)
    config = family.recipe(recipe, overrides)
    torch.manual_seed(1)
    family.save(family.build_model(config, vocab_size, SPECIALS), out, config)
    return out


def train_steps(family: Any, model: torch.nn.Module, batch: Any, recipe: Any, steps: int, lr: float,
                params: Iterable[torch.nn.Parameter] | None = None) -> tuple[list[float], dict[str, torch.Tensor]]:
    """``steps`` AdamW steps on one batch as the training loop takes them (``batch.step`` set, the family's
    ``after_optimizer_step`` after each update), over ``params`` (default: the trainable parameters). The losses
    and the last step's outputs."""
    opt = torch.optim.AdamW(list(params) if params is not None else [p for p in model.parameters() if p.requires_grad], lr=lr)
    losses: list[float] = []
    out: dict[str, torch.Tensor] = {}
    for step in range(steps):
        batch.step = step
        out = family.training_step(model, batch, recipe)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        family.after_optimizer_step(model, recipe)
        losses.append(float(out["loss"].detach()))
    return losses, out
