"""Conditioning a frozen causal LM on embeddings that are not words (shared: Frozen and PromptFuse use
it, and VLKD-style prefix captioning could).

A conditioned sequence is a list of *segments* per sample: embeddings with a kind (an image prefix, trainable
prompts, text tokens) and, for text, the token ids and whether they are targets. ``pack`` lays the segments of a
batch out in one ``(B, T, D)`` tensor with a padding mask, per-position kinds and LM labels (``IGNORE_INDEX`` on
everything but the target tokens; ``losses.lm_loss`` shifts them, so position t predicts label t+1). ``run_lm``
runs a ``GPT2LMHeadModel`` on such a batch with explicit position ids (left or right padding) and a 4-D boolean
attention mask: causal, padding keys masked, and optionally some query kinds kept from seeing some key kinds
(PromptFuse's BlindPrompt). ``greedy_generate`` decodes from a left-padded batch.

Also here: ``caption_or_vqa_texts`` (each sample's captioning or VQA input/target ids, VQA in the exact prompt the
evaluation's generation mode uses), per-sample loss logging and self-contained checkpoints of composite models
(``save_composite``: config.json + one safetensors file with the frozen parts included).

Everything here is model-agnostic but for ``run_lm``'s use of the GPT-2 interface (``inputs_embeds``,
``position_ids`` and a 4-D mask, which ``transformers``' mask preparation passes through as given)."""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn
from vlforge.components.losses import lm_loss
from vlforge.components.models.registry import ImageTextBatch
from vlforge.components.sources.scene_tasks import vqa_questions

from vlforge.errors import UserError

IGNORE_INDEX = -100
PAD, TEXT, IMAGE, PROMPT = 0, 1, 2, 3  # per-position kinds


@dataclass
class Segment:
    """Consecutive positions of one kind: ``embeds`` (n, D); for text, ``ids`` (n,) and whether they are targets."""

    embeds: torch.Tensor
    kind: int
    ids: torch.Tensor | None = None
    target: bool = False


@dataclass
class PackedBatch:
    embeds: torch.Tensor  # (B, T, D)
    attention_mask: torch.Tensor  # (B, T) 1 = a real position
    kinds: torch.Tensor  # (B, T) PAD / TEXT / IMAGE / PROMPT
    labels: torch.Tensor  # (B, T) the token at a target position, IGNORE_INDEX elsewhere
    ids: torch.Tensor  # (B, T) the token id at text positions, -1 elsewhere


def text_segment(embedding: nn.Embedding, ids: Sequence[int] | torch.Tensor, target: bool = False) -> Segment:
    ids_t = torch.as_tensor(ids, dtype=torch.long, device=embedding.weight.device)
    return Segment(embedding(ids_t), TEXT, ids_t, target)


def pack(rows: Sequence[Sequence[Segment]], pad_left: bool = False) -> PackedBatch:
    """One padded batch from each sample's segments (right padding for training, left for generation)."""
    lengths = [sum(s.embeds.shape[0] for s in row) for row in rows]
    width = max(lengths)
    first = rows[0][0].embeds
    dim, device, dtype = first.shape[-1], first.device, first.dtype
    bsz = len(rows)
    embeds = first.new_zeros(bsz, width, dim)
    mask = torch.zeros(bsz, width, dtype=torch.long, device=device)
    kinds = torch.full((bsz, width), PAD, dtype=torch.long, device=device)
    labels = torch.full((bsz, width), IGNORE_INDEX, dtype=torch.long, device=device)
    ids = torch.full((bsz, width), -1, dtype=torch.long, device=device)
    for b, row in enumerate(rows):
        pos = width - lengths[b] if pad_left else 0
        for seg in row:
            n = seg.embeds.shape[0]
            embeds[b, pos : pos + n] = seg.embeds.to(dtype)
            mask[b, pos : pos + n] = 1
            kinds[b, pos : pos + n] = seg.kind
            if seg.ids is not None:
                ids[b, pos : pos + n] = seg.ids
                if seg.target:
                    labels[b, pos : pos + n] = seg.ids
            pos += n
    return PackedBatch(embeds, mask, kinds, labels, ids)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real positions of each row (left padding shifts them); padding gets 0."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def attention_mask_4d(
    attention_mask: torch.Tensor, kinds: torch.Tensor, blocked: Mapping[int, Sequence[int]] | None = None
) -> torch.Tensor:
    """(B, 1, T, T) boolean, True = may attend: causal, real keys only, and a query of kind q never sees keys of
    the kinds ``blocked[q]``. Every position sees itself, so no row is empty (padding rows included)."""
    t = attention_mask.shape[1]
    device = attention_mask.device
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    allowed = causal[None] & attention_mask.bool()[:, None, :]
    for q_kind, k_kinds in (blocked or {}).items():
        q_is = (kinds == q_kind)[:, :, None]
        k_is = torch.zeros_like(kinds, dtype=torch.bool)
        for k in k_kinds:
            k_is |= kinds == k
        allowed &= ~(q_is & k_is[:, None, :])
    allowed |= torch.eye(t, dtype=torch.bool, device=device)[None]
    return allowed[:, None]


def run_lm(lm: nn.Module, batch: PackedBatch, blocked: Mapping[int, Sequence[int]] | None = None,
           output_hidden_states: bool = False):
    """The LM's output on a packed batch (logits (B, T, V); hidden states on request)."""
    limit = getattr(getattr(lm, "config", None), "n_positions", None)
    if limit is not None and batch.embeds.shape[1] > limit:
        raise ValueError(f"a conditioned sequence of {batch.embeds.shape[1]} positions exceeds the language model's {limit}")
    return lm(inputs_embeds=batch.embeds, attention_mask=attention_mask_4d(batch.attention_mask, batch.kinds, blocked),
              position_ids=position_ids(batch.attention_mask), output_hidden_states=output_hidden_states,
              use_cache=False)


@torch.no_grad()
def greedy_generate(
    lm: nn.Module, batch: PackedBatch, embedding: nn.Embedding, eos_id: int, max_new_tokens: int,
    blocked: Mapping[int, Sequence[int]] | None = None,
    forward: Callable[[PackedBatch], torch.Tensor] | None = None,
) -> list[list[int]]:
    """Greedy continuation of a left-padded batch until ``eos_id`` or ``max_new_tokens`` (the eos is not returned).
    Recomputes the whole sequence each step (sequences are short; no cache to keep consistent with custom masks).
    A sequence longer than the LM's positions (long few-shot prompts) keeps its most recent positions."""
    forward = forward or (lambda b: run_lm(lm, b, blocked).logits)
    limit = getattr(getattr(lm, "config", None), "n_positions", None)
    out: list[list[int]] = [[] for _ in range(batch.embeds.shape[0])]
    done = [False] * len(out)
    for _ in range(max_new_tokens):
        if limit is not None and batch.embeds.shape[1] > limit:
            batch = PackedBatch(*(t[:, -limit:] for t in (batch.embeds, batch.attention_mask, batch.kinds,
                                                          batch.labels, batch.ids)))
        nxt = forward(batch)[:, -1].argmax(dim=-1)
        for b, tok in enumerate(nxt.tolist()):
            if not done[b]:
                if tok == eos_id:
                    done[b] = True
                else:
                    out[b].append(tok)
        if all(done):
            break
        ones = torch.ones_like(nxt)[:, None]
        batch = PackedBatch(
            torch.cat([batch.embeds, embedding(nxt)[:, None].to(batch.embeds.dtype)], dim=1),
            torch.cat([batch.attention_mask, ones], dim=1),
            torch.cat([batch.kinds, ones * TEXT], dim=1),
            torch.cat([batch.labels, ones * IGNORE_INDEX], dim=1),
            torch.cat([batch.ids, nxt[:, None]], dim=1),
        )
    return out


# ---- captioning and VQA as conditioned text generation (Frozen, PromptFuse) ---------------------------------------
def vqa_prompt(question: str) -> str:
    """The VQA input the evaluation's generation mode uses (``components/evaluation/vqa.py``); train with exactly it."""
    return f"question: {question} answer:"


def token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def caption_or_vqa_texts(
    batch: ImageTextBatch, bos_id: int, eos_id: int, vqa_prob: float, generator: torch.Generator
) -> tuple[list[tuple[list[int], list[int]]], list[bool]]:
    """Each sample's text as ``(input ids, target ids)`` and whether it is a VQA sample. A sample with scene facts
    is, with probability ``vqa_prob``, one of its questions (drawn from ``generator``): input
    ``<bos> question: <q> answer:``, target `` <answer> <eos>``; otherwise (and always without facts) it is
    captioning: input ``<bos>``, target the caption and its ``<eos>`` (the loop's tokenisation, truncated at the
    recipe's ``max_text_length``)."""
    n = len(batch.keys)
    coins = torch.rand(n, generator=generator).tolist()
    picks = torch.randint(0, 1 << 30, (n,), generator=generator).tolist()
    texts, is_vqa = [], []
    for i, (key, facts) in enumerate(zip(batch.keys, batch.facts())):
        questions = vqa_questions(key, facts) if facts and vqa_prob > 0 else []
        if questions and coins[i] < vqa_prob:
            q = questions[picks[i] % len(questions)]
            texts.append(([bos_id, *token_ids(batch.tokenizer, vqa_prompt(q.question))],
                          [*token_ids(batch.tokenizer, " " + q.answer), eos_id]))
            is_vqa.append(True)
        else:
            ids = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
            texts.append(([bos_id], ids[1:] if ids and ids[0] == bos_id else ids))
            is_vqa.append(False)
    return texts, is_vqa


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample mean next-token cross-entropy over the target positions (B,), for logging tasks apart."""
    lg, lb = logits[:, :-1].float(), labels[:, 1:]
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    ce = ce.view(lb.shape)
    valid = (lb != IGNORE_INDEX).float()
    return (ce * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)


def decode(tokenizer: Any, rows: list[list[int]]) -> list[str]:
    return [tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows]


# ---- self-contained checkpoints of composite models (a frozen LM + its conditioning) ------------------------------
WEIGHTS = "model.safetensors"


def save_composite(model: nn.Module, out_dir: Path | str, config: dict[str, Any]) -> None:
    """``config.json`` (the sub-models' configs and settings) and one ``model.safetensors`` with every weight, the
    frozen parts included (tied tensors stored once), so a checkpoint never needs its teachers' directories."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_model(model, str(out / WEIGHTS))


def read_composite_config(model_dir: Path | str, model_type: str, what: str) -> dict[str, Any]:
    path = Path(model_dir)
    if not (path / "config.json").is_file() or not (path / WEIGHTS).is_file():
        raise UserError(f"'{model_dir}' holds no {what} checkpoint (config.json and {WEIGHTS})")
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type") != model_type:
        raise UserError(f"'{model_dir}' holds a '{cfg.get('model_type')}' model, not a {what} one")
    return cfg


def load_composite_weights(model: nn.Module, model_dir: Path | str) -> nn.Module:
    load_model(model, str(Path(model_dir) / WEIGHTS))
    return model


def prefix_lm_losses(lm: nn.Module, batch: PackedBatch, is_vqa: list[bool],
                     blocked: Mapping[int, Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """The captioning / VQA training step's losses on a packed batch: ``loss`` (the LM loss over every target
    token, ``losses.lm_loss``), its detached copy ``lm``, and ``task_losses``' split by task."""
    logits = run_lm(lm, batch, blocked).logits
    loss = lm_loss(logits, batch.labels)
    return {"loss": loss, "lm": loss.detach(), **task_losses(logits, batch.labels, is_vqa)}


def prompt_texts(tokenizer: Any, bos: int, prompts: list[str] | None, n: int) -> list[list[int]]:
    """Generation's text inputs: ``<bos>`` and, given ``prompts``, prompt ``i`` after it, for ``n`` samples."""
    return [[bos, *(token_ids(tokenizer, prompts[i]) if prompts else [])] for i in range(n)]


@torch.no_grad()
def task_losses(logits: torch.Tensor, labels: torch.Tensor, is_vqa: list[bool]) -> dict[str, torch.Tensor]:
    """The LM loss split by task for the log: ``vqa_lm`` over the VQA samples, ``caption_lm`` over the others."""
    per_sample = token_losses(logits.detach(), labels)
    vqa = torch.tensor(is_vqa, device=per_sample.device)
    out = {}
    if vqa.any():
        out["vqa_lm"] = per_sample[vqa].mean()
    if (~vqa).any():
        out["caption_lm"] = per_sample[~vqa].mean()
    return out
