"""NLVR2 as the fusion-encoder papers measure it: fine-tuned (ViLT, Kim et al. 2021, section 4.3, the "pair" setting
of UNITER, Chen et al. 2020; VLMo, Bao et al. 2022). A statement about two photographs becomes two image-text pairs,
(left image, statement) and (right image, statement); each goes through the model's fusion encoder
(``fused_features``), the two pooled vectors are concatenated, and ViLT's NLVR2 head (Linear 2D->2D, LayerNorm,
GELU, Linear 2D->2) classifies the statement true or false. Model and head are trained with cross-entropy on the
train split's statements and scored on the evaluated split with NLVR2's accuracy and consistency
(``nlvr2.nlvr2_metrics``, here prefixed ``nlvr2_finetune_`` so the zero-shot ``nlvr2`` task's numbers stay apart).

Procedure, in the style of the NLU probe: a copy of the model (the evaluated checkpoint is never changed), a seeded
statement order and seeded dropout, AdamW with the head at ten times the encoder's learning rate (as ViLT), for
``EPOCHS`` passes over at most ``MAX_TRAIN`` train statements. The runner's untrained-model baseline goes through the
same fine-tuning, so the gap is what pretraining gave the fused representation.

Scale, honestly: NLVR2 has 86k train statements, and ViLT fine-tunes on all of them for 10 epochs at batch 128 with
its ViT-B/32 encoder at 384 px; this task fine-tunes on at most 2,000 statements for 3 epochs at batch 16, at the
model's own (tiny, in this project's recipes) size. It is a transfer probe of the fused representation at this
project's scale, not a reproduction of the papers' numbers (ViLT-B/32: 75.7% dev accuracy); compare it with its
untrained baseline and with the majority rate (``nlvr2_finetune_majority``), not with the papers' tables. An
untrained tiny model's pooled vectors are nearly the same for every pair (cosine ~0.9997 at the tiny recipes'
initialisation): on 16-32 statements its fine-tuning stayed at the majority rate for 40 steps (ViLT), so on
small train splits the baseline says little."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from vlforge.components.data.loader import decode_image
from vlforge.components.evaluation.nlvr2 import nlvr2_metrics, statements_in
from vlforge.components.models.capabilities import FusedFeatures, capability

from vlforge.errors import UserError

if TYPE_CHECKING:
    from PIL import Image
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

MAX_TRAIN = 2000  # statements
EPOCHS = 3
BATCH = 16  # statements, two image-text pairs each
LR = 1e-4  # ViLT's NLVR2 learning rate
HEAD_LR = 1e-3  # ViLT: the new head learns ten times faster
PREFIX = "nlvr2_finetune_"


class PairHead(nn.Module):
    """ViLT's NLVR2 classifier on the two pooled vectors, concatenated: logits (B, 2), class 1 = true."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(), nn.Linear(2 * dim, 2))

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([left, right], dim=-1))


def _pair_features(ctx: EvalContext, fused: FusedFeatures, model: nn.Module, images: list[Image.Image],
                   statements: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(left, right) pooled vectors, (B, D) each, of ``images`` = [left images..., right images...]."""
    ids, mask = ctx.tokens(statements)
    both = fused.fused_features(model, ctx.pixels(images), ids.repeat(2, 1), mask.repeat(2, 1)).float()
    return both[: len(statements)], both[len(statements) :]


def run_nlvr2_finetune(ctx: EvalContext) -> TaskOutput:
    from vlforge.components.evaluation.tasks import TaskOutput

    fused = capability(ctx.family, FusedFeatures)
    items = statements_in(ctx.samples, "the evaluated split")
    if not items:
        raise UserError("task 'nlvr2_finetune' found no statements in the evaluated split")
    train_samples = ctx.train_samples()
    train = statements_in(train_samples, "the train split")[:MAX_TRAIN]
    if not train:
        raise UserError("task 'nlvr2_finetune' found no statements in the train split to fine-tune on")

    model = copy.deepcopy(ctx.model).train()
    with torch.no_grad():
        a, b, st = train[0]
        left, _ = _pair_features(ctx, fused, model, [decode_image(train_samples[i].image) for i in (a, b)],
                                 [st["sentence"]])
    gen = torch.Generator().manual_seed(ctx.recipe.seed)
    labels = torch.tensor([int(st["label"]) for _, _, st in train])
    right_count = 0
    with torch.random.fork_rng():
        torch.manual_seed(ctx.recipe.seed)  # the head's initialisation and dropout, reproducibly
        head = PairHead(left.shape[-1]).to(ctx.device)  # initialised on the CPU: the same start on every device
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)  # the whole model fine-tunes, parts frozen in pretraining included
        opt = torch.optim.AdamW([{"params": params, "lr": LR}, {"params": head.parameters(), "lr": HEAD_LR}],
                                weight_decay=0.01)
        for _ in range(EPOCHS):
            order = torch.randperm(len(train), generator=gen).tolist()
            right_count = 0
            for k in range(0, len(order), BATCH):
                idx = order[k : k + BATCH]
                images = [decode_image(train_samples[train[i][side]].image) for side in (0, 1) for i in idx]
                logits = head(*_pair_features(ctx, fused, model, images, [train[i][2]["sentence"] for i in idx]))
                target = labels[idx].to(logits.device)
                loss = F.cross_entropy(logits, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                right_count += int((logits.argmax(dim=1) == target).sum())
    model.eval()
    head.eval()

    probs: list[float] = []
    pictures = ctx.images()
    with torch.no_grad():
        for k in range(0, len(items), 2 * BATCH):
            chunk = items[k : k + 2 * BATCH]
            images = [pictures[item[side]] for side in (0, 1) for item in chunk]
            logits = head(*_pair_features(ctx, fused, model, images, [st["sentence"] for _, _, st in chunk]))
            probs += logits.softmax(dim=1)[:, 1].cpu().tolist()
    predictions = [p > 0.5 for p in probs]
    truth = [st["label"] for _, _, st in items]
    identifiers = [st["identifier"] for _, _, st in items]
    metrics = {PREFIX + k.removeprefix("nlvr2_"): v for k, v in nlvr2_metrics(identifiers, truth, predictions).items()}
    metrics[PREFIX + "train_statements"] = float(len(train))
    metrics[PREFIX + "train_accuracy"] = right_count / len(train)  # over the last epoch, as it trained
    rows = {"identifier": identifiers, "left_key": [ctx.samples[a].key for a, _, _ in items],
            "right_key": [ctx.samples[b].key for _, b, _ in items], "statement": [st["sentence"] for _, _, st in items],
            "label": truth, "probability_true": probs, "prediction": predictions}
    return TaskOutput(metrics, rows)
