"""The NLU probe: the survey's analysis of visual extensions on language understanding ("Effect of Visual
Extensions on Natural Language Understanding in Vision-and-Language Models", Iki & Aizawa, EMNLP 2021).

A vision-and-language model's text side is fine-tuned on a text-only task (classification; STS-B's regression),
with a constant black image wherever the model needs an image, and compared with a text-only model trained on the
same text (the ``text-mlm`` family in this project: run the probe on both and the leaderboard shows the paper's
table at this scale). The text task here is the dataset's class label predicted from the caption alone; on a ``glue:`` dataset
it is the GLUE task itself, also scored with the task's own metric (``glue_matthews_correlation`` for CoLA,
``glue_accuracy`` and ``glue_f1`` for MRPC and QQP, ``glue_accuracy`` for the others, each with ``glue_score``,
GLUE's mean of the task's metrics). STS-B is GLUE's regression: one output regressed on the 0-5 similarity score
with a mean squared error, scored by ``glue_pearson`` and ``glue_spearmanr`` (``glue_score``, their mean, is the
headline there, as the task has no accuracy) and ``nlu_mse``.

Procedure: a copy of the model (the evaluated checkpoint is never changed) gets a linear head (a classifier, or
one output for STS-B) on ``text_features``; both are fine-tuned end to end with AdamW for ``EPOCHS`` passes over
(at most ``MAX_TRAIN``) train-split captions in a seeded order, then scored on the evaluated split. The runner's untrained-model baseline
goes through the same fine-tuning, so the gap is what pretraining gave the text side."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image
from vlforge.components.models.capabilities import DualEncoder, TextFeatures, capability

from vlforge.errors import UserError

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

MAX_TRAIN = 2000
EPOCHS = 3
BATCH = 32
LR = 1e-4
HEAD_LR = 1e-2
REGRESSION_TASKS = frozenset({"stsb"})  # GLUE's regression: one output, MSE loss, Pearson/Spearman


def text_features_fn(ctx: EvalContext):
    """The family's ``text_features`` or, for a dual encoder, its text embedding."""
    if isinstance(ctx.family, TextFeatures):
        own = ctx.family
        return lambda model, ids, mask, pixels: own.text_features(model, ids, mask, pixels)
    encoder = capability(ctx.family, DualEncoder)
    return lambda model, ids, mask, pixels: encoder.encode_texts(model, ids, mask)


def black_image(ctx: EvalContext) -> torch.Tensor:
    """The constant black image (1, 3, S, S), normalised as the model's inputs are."""
    size = ctx.recipe.image_size
    return ctx.pixels([Image.new("RGB", (size, size))])


def glue_task_metrics(task: str, predictions: list, labels: list) -> dict[str, float]:
    """The GLUE task's own metric(s) (``metrics.glue``) as ``glue_<name>``, and ``glue_score``, GLUE's score of
    the task: the unweighted mean of its metrics (Wang et al. 2018, section 4; STS-B: Pearson and Spearman).
    Classification labels that are class numbers as written (``0``/``1``: CoLA, MRPC, QQP) keep their number, so
    F1 is that of class 1, others are numbered in sorted order; STS-B's are scores, compared as numbers."""
    from vlforge.components.evaluation.metrics import glue_metrics

    if task in REGRESSION_TASKS:
        scores = glue_metrics(task, [float(p) for p in predictions], [float(t) for t in labels])
    else:
        names = sorted(set(labels) | set(predictions))
        number = {n: int(n) for n in names} if all(n.isdigit() for n in names) else {n: k for k, n in enumerate(names)}
        scores = glue_metrics(task, [number[p] for p in predictions], [number[t] for t in labels])
    return {f"glue_{k}": v for k, v in scores.items()} | {"glue_score": sum(scores.values()) / len(scores)}


def fine_tune_text_side(ctx: EvalContext, texts: list[str], targets: torch.Tensor, outputs: int,
                        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        head_bias: torch.Tensor | None = None) -> Callable[[list[str]], torch.Tensor]:
    """Fine-tune a copy of the model's text side with a linear head of ``outputs`` units on ``texts`` ->
    ``targets`` (seeded order and dropout), the head's bias starting at ``head_bias`` where given; returns the
    fine-tuned predictor, texts -> (N, outputs) head outputs."""
    features = text_features_fn(ctx)
    black = black_image(ctx)
    model = copy.deepcopy(ctx.model).train()
    with torch.no_grad():
        ids, mask = ctx.tokens(texts[:1])
        dim = features(model, ids, mask, black).shape[-1]
    gen = torch.Generator().manual_seed(ctx.recipe.seed)
    head = torch.nn.Linear(dim, outputs)
    with torch.random.fork_rng():
        torch.manual_seed(ctx.recipe.seed)  # dropout during fine-tuning, reproducibly
        head.reset_parameters()
        if head_bias is not None:
            with torch.no_grad():
                head.bias.copy_(head_bias)
        head.to(ctx.device)  # initialised on the CPU, so the head starts the same on every device
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)  # the probe fine-tunes the whole text side, frozen parts included
        opt = torch.optim.AdamW([{"params": params, "lr": LR}, {"params": head.parameters(), "lr": HEAD_LR}],
                                weight_decay=0.01)
        for _ in range(EPOCHS):
            order = torch.randperm(len(texts), generator=gen).tolist()
            for k in range(0, len(order), BATCH):
                idx = order[k : k + BATCH]
                ids, mask = ctx.tokens([texts[i] for i in idx])
                out = head(features(model, ids, mask, black.expand(len(idx), -1, -1, -1)).float())
                loss = loss_fn(out, targets[idx].to(out.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    model.eval()

    @torch.no_grad()
    def predict(batch_texts: list[str]) -> torch.Tensor:
        out = [torch.empty(0, outputs)]
        for k in range(0, len(batch_texts), 2 * BATCH):
            chunk = batch_texts[k : k + 2 * BATCH]
            ids, mask = ctx.tokens(chunk)
            out.append(head(features(model, ids, mask, black.expand(len(chunk), -1, -1, -1)).float()).cpu())
        return torch.cat(out)

    return predict


def _score(label: str) -> float | None:
    try:
        return float(label)
    except ValueError:
        return None


def run_nlu_probe(ctx: EvalContext) -> TaskOutput:
    task = (ctx.manifest.get("source") or {}).get("glue_task")
    if task in REGRESSION_TASKS:
        return run_nlu_regression(ctx, task)
    from vlforge.components.evaluation.plots import plot_confusion
    from vlforge.components.evaluation.tasks import TaskOutput

    train = [s for s in ctx.train_samples() if s.meta.get("label") and s.caption.strip()][:MAX_TRAIN]
    classes = sorted({s.meta["label"] for s in train})
    labels = torch.tensor([classes.index(s.meta["label"]) for s in train])
    predict = fine_tune_text_side(ctx, [s.caption for s in train], labels, len(classes), F.cross_entropy)
    keep = [i for i, s in enumerate(ctx.samples) if s.meta.get("label") in classes]
    preds = predict([ctx.samples[i].caption for i in keep]).argmax(dim=1).tolist()
    truth = [ctx.samples[i].meta["label"] for i in keep]
    correct = [classes[p] == t for p, t in zip(preds, truth)]
    metrics = {"nlu_accuracy": sum(correct) / max(1, len(correct)), "nlu_chance": 1.0 / max(1, len(classes)),
               "nlu_train_samples": float(len(train))}
    if task and truth:
        metrics |= glue_task_metrics(task, [classes[p] for p in preds], truth)
    rows = {"key": [ctx.samples[i].key for i in keep], "label": truth, "prediction": [classes[p] for p in preds]}
    return TaskOutput(metrics, rows, {"nlu_probe_confusion.png": lambda path: plot_confusion(
        [classes.index(t) for t in truth], preds, classes, path)})


def run_nlu_regression(ctx: EvalContext, task: str) -> TaskOutput:
    """STS-B as GLUE defines it: one output (its bias starting at the train scores' mean) regressed on the
    similarity score with a mean squared error, scored by
    Pearson and Spearman correlation (``glue_pearson``, ``glue_spearmanr``; ``glue_score`` their mean, the
    headline) and ``nlu_mse``. Samples whose label is not a number are left out; a correlation that is undefined
    (constant predictions) counts 0.0."""
    from vlforge.components.evaluation.tasks import TaskOutput

    train = [s for s in ctx.train_samples() if _score(s.meta.get("label") or "") is not None and s.caption.strip()]
    train = train[:MAX_TRAIN]
    if len(train) < 2:
        raise UserError(f"glue task '{task}' needs at least 2 scored train samples for the NLU probe, found {len(train)}")
    targets = torch.tensor([_score(s.meta["label"]) for s in train], dtype=torch.float32)
    # the bias starts at the train scores' mean: the few steps go to the variation, which the correlations score,
    # not to climbing from 0 to the mean offset (at HEAD_LR that alone takes some 250 steps)
    predict = fine_tune_text_side(ctx, [s.caption for s in train], targets, 1,
                                  lambda out, y: F.mse_loss(out.squeeze(1), y), head_bias=targets.mean().view(1))
    keep = [i for i, s in enumerate(ctx.samples) if _score(s.meta.get("label") or "") is not None]
    preds = predict([ctx.samples[i].caption for i in keep]).squeeze(1).tolist()
    truth = [float(_score(ctx.samples[i].meta["label"])) for i in keep]
    metrics = {"nlu_train_samples": float(len(train))}
    if len(truth) >= 2:
        # a constant prediction has no correlation (nan in SciPy): it counts 0.0, as the catalog keeps finite numbers
        metrics |= {k: 0.0 if math.isnan(v) else v for k, v in glue_task_metrics(task, preds, truth).items()}
        metrics["nlu_mse"] = sum((p - t) ** 2 for p, t in zip(preds, truth)) / len(truth)
    rows = {"key": [ctx.samples[i].key for i in keep], "label": truth, "prediction": preds}
    return TaskOutput(metrics, rows)
