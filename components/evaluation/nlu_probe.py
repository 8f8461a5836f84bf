"""The NLU probe: the survey's analysis of visual extensions on language understanding ("Effect of Visual
Extensions on Natural Language Understanding in Vision-and-Language Models", Iki & Aizawa, EMNLP 2021).

A vision-and-language model's text side is fine-tuned on a text-only classification task, with a constant black
image wherever the model needs an image, and compared with a text-only model trained on the same text (the
``text-mlm`` family in this project: run the probe on both and the leaderboard shows the paper's table at this
scale). The text task here is the dataset's class label predicted from the caption alone; on a ``glue:`` dataset
it is the GLUE task itself, also scored with the task's own metric (``glue_matthews_correlation`` for CoLA,
``glue_accuracy`` and ``glue_f1`` for MRPC and QQP, ``glue_accuracy`` for the others).

Procedure: a copy of the model (the evaluated checkpoint is never changed) gets a linear classifier on
``text_features``; both are fine-tuned end to end with AdamW for ``EPOCHS`` passes over (at most ``MAX_TRAIN``)
train-split captions in a seeded order, then scored on the evaluated split. The runner's untrained-model baseline
goes through the same fine-tuning, so the gap is what pretraining gave the text side."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image
from vlforge.components.models.capabilities import DualEncoder, TextFeatures, capability

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

MAX_TRAIN = 2000
EPOCHS = 3
BATCH = 32
LR = 1e-4
HEAD_LR = 1e-2


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
    return ctx.transform(Image.new("RGB", (size, size))).unsqueeze(0)


def glue_task_metrics(task: str, predictions: list[str], labels: list[str]) -> dict[str, float]:
    """The GLUE task's own metric(s) (``metrics.glue``) as ``glue_<name>``; labels that are class numbers as
    written (``0``/``1``: CoLA, MRPC, QQP) keep their number, so F1 is that of class 1, others are numbered in
    sorted order."""
    from vlforge.components.evaluation.metrics import glue_metrics

    names = sorted(set(labels) | set(predictions))
    number = {n: int(n) for n in names} if all(n.isdigit() for n in names) else {n: k for k, n in enumerate(names)}
    scores = glue_metrics(task, [number[p] for p in predictions], [number[t] for t in labels])
    return {f"glue_{k}": v for k, v in scores.items()}


def run_nlu_probe(ctx: EvalContext) -> TaskOutput:
    from vlforge.components.evaluation.plots import plot_confusion
    from vlforge.components.evaluation.tasks import TaskOutput

    train = [s for s in ctx.train_samples() if s.meta.get("label") and s.caption.strip()][:MAX_TRAIN]
    classes = sorted({s.meta["label"] for s in train})
    features = text_features_fn(ctx)
    black = black_image(ctx)
    model = copy.deepcopy(ctx.model).train()
    with torch.no_grad():
        ids, mask = ctx.tokens([train[0].caption])
        dim = features(model, ids, mask, black).shape[-1]
    gen = torch.Generator().manual_seed(ctx.recipe.seed)
    head = torch.nn.Linear(dim, len(classes))
    with torch.random.fork_rng():
        torch.manual_seed(ctx.recipe.seed)  # dropout during fine-tuning, reproducibly
        head.reset_parameters()
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)  # the probe fine-tunes the whole text side, frozen parts included
        opt = torch.optim.AdamW([{"params": params, "lr": LR}, {"params": head.parameters(), "lr": HEAD_LR}],
                                weight_decay=0.01)
        labels = torch.tensor([classes.index(s.meta["label"]) for s in train])
        for _ in range(EPOCHS):
            order = torch.randperm(len(train), generator=gen).tolist()
            for k in range(0, len(order), BATCH):
                idx = order[k : k + BATCH]
                ids, mask = ctx.tokens([train[i].caption for i in idx])
                logits = head(features(model, ids, mask, black.expand(len(idx), -1, -1, -1)).float())
                loss = F.cross_entropy(logits, labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    model.eval()
    keep = [i for i, s in enumerate(ctx.samples) if s.meta.get("label") in classes]
    preds: list[int] = []
    with torch.no_grad():
        for k in range(0, len(keep), 2 * BATCH):
            idx = keep[k : k + 2 * BATCH]
            ids, mask = ctx.tokens([ctx.samples[i].caption for i in idx])
            preds += head(features(model, ids, mask, black.expand(len(idx), -1, -1, -1)).float()).argmax(dim=1).tolist()
    truth = [ctx.samples[i].meta["label"] for i in keep]
    correct = [classes[p] == t for p, t in zip(preds, truth)]
    metrics = {"nlu_accuracy": sum(correct) / max(1, len(correct)), "nlu_chance": 1.0 / max(1, len(classes)),
               "nlu_train_samples": float(len(train))}
    task = (ctx.manifest.get("source") or {}).get("glue_task")
    if task and truth:
        metrics |= glue_task_metrics(task, [classes[p] for p in preds], truth)
    rows = {"key": [ctx.samples[i].key for i in keep], "label": truth, "prediction": [classes[p] for p in preds]}
    return TaskOutput(metrics, rows, {"nlu_probe_confusion.png": lambda path: plot_confusion(
        [classes.index(t) for t in truth], preds, classes, path)})
