"""Linear probe: multinomial logistic regression on frozen image features (CLIP, section 3.2).

The features are the family's image embeddings; the probe is fitted on the dataset's train split with L-BFGS and
an L2 penalty chosen, as CLIP does, by a sweep scored on held-out train samples (every fifth one), then refitted on
the whole train split and scored on the evaluated split. Plain torch, so no extra dependency. A probe on an untrained
model's features (the runner's baseline) shows how much of the accuracy the pretraining earned."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from vlforge.components.evaluation.tasks import EvalContext, TaskOutput

MAX_TRAIN = 5000  # samples the probe fits on (the first ones of the train split, which is in a fixed order)
L2 = 1e-3
L2_SWEEP = (1e-2, 1e-3, 1e-4, 1e-5, 0.0)


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = L2, steps: int = 100) -> torch.Tensor:
    """Return (D + 1, C) weights (last row the bias) minimising mean cross-entropy + ``l2`` * ||W||²."""
    torch.manual_seed(0)
    xb = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    w = torch.zeros(xb.shape[1], classes, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xb @ w, y) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (torch.cat([x, torch.ones(len(x), 1)], dim=1) @ w).argmax(dim=1)


def choose_l2(x: torch.Tensor, y: torch.Tensor, classes: int, sweep: tuple[float, ...] = L2_SWEEP) -> float:
    """The penalty of ``sweep`` with the best accuracy on every fifth sample when fitted on the others (ties: the
    stronger penalty); ``L2`` when there are too few samples to hold any out."""
    held = torch.arange(len(x)) % 5 == 4
    if held.sum() == 0 or (~held).sum() == 0:
        return L2
    scores = []
    for l2 in sweep:
        w = fit_logistic_regression(x[~held], y[~held], classes, l2)
        scores.append(float((predict(w, x[held]) == y[held]).float().mean()))
    return sweep[max(range(len(sweep)), key=lambda k: (scores[k], -k))]


def run_linear_probe(ctx: EvalContext) -> TaskOutput:
    from vlforge.components.data.loader import decode_image
    from vlforge.components.evaluation.plots import plot_confusion
    from vlforge.components.evaluation.tasks import TaskOutput

    train = [s for s in ctx.train_samples() if s.meta.get("label")][:MAX_TRAIN]
    classes = sorted({s.meta["label"] for s in train})
    train_x = ctx.embed_images([decode_image(s.image) for s in train])
    train_y = torch.tensor([classes.index(s.meta["label"]) for s in train])
    l2 = choose_l2(train_x, train_y, len(classes))
    w = fit_logistic_regression(train_x, train_y, len(classes), l2)
    keep = [i for i, s in enumerate(ctx.samples) if s.meta.get("label")]
    pred = predict(w, ctx.image_embeddings()[keep]).tolist()
    truth = [ctx.samples[i].meta["label"] for i in keep]
    correct = [classes[p] == t for p, t in zip(pred, truth)]
    metrics = {"probe_top1": sum(correct) / max(1, len(correct)), "probe_chance": 1.0 / len(classes),
               "probe_train_samples": float(len(train)), "probe_l2": l2}
    rows = {"key": [ctx.samples[i].key for i in keep], "label": truth, "prediction": [classes[p] for p in pred]}
    known = [(classes.index(t), p) for t, p in zip(truth, pred) if t in classes]
    return TaskOutput(metrics, rows, {"linear_probe_confusion.png": lambda path: plot_confusion(
        [k[0] for k in known], [k[1] for k in known], classes, path)})
