"""The figures an eval report holds (Agg backend, no screen): R@K bars, retrieval examples, confusion matrices,
per-group accuracy bars and a table of generated captions. Each writes one PNG; the runner names the files."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    _plt().close(fig)


def plot_retrieval(metrics: dict[str, float], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    labels = [f"{d} R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
    values = [metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    ax.bar(labels, values, color=["#4477aa"] * 3 + ["#ee6677"] * 3)
    ax.axhline(metrics["i2t_chance_r1"], color="gray", linestyle="--", linewidth=1, label="chance R@1 (i2t)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_retrieval_examples(examples: Sequence[tuple[Image.Image, str, list[str]]], path: Path) -> None:
    """One row per query image: the image, then its top-5 captions, the true one marked."""
    plt = _plt()
    fig, axes = plt.subplots(len(examples), 2, figsize=(7, 1.6 * len(examples)), dpi=100,
                             gridspec_kw={"width_ratios": [1, 4]}, squeeze=False)
    for row, (image, truth, top) in zip(axes, examples):
        row[0].imshow(image)
        row[0].axis("off")
        row[1].axis("off")
        for k, cap in enumerate(top):
            hit = cap == truth
            row[1].text(0, 0.85 - 0.18 * k, f"{k + 1}. {'✓ ' if hit else ''}{cap}", fontsize=8,
                        color="#228833" if hit else "black", transform=row[1].transAxes)
    _save(fig, path)


def plot_confusion(truth: Sequence[int], pred: Sequence[int], classes: Sequence[str], path: Path) -> None:
    import numpy as np

    plt = _plt()
    m = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(truth, pred):
        m[t, p] += 1
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(classes), 1 + 0.45 * len(classes)), dpi=100)
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=60, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=6)
    _save(fig, path)


def plot_group_accuracy(groups: dict[str, float], chance: dict[str, float], title: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    names = list(groups)
    ax.bar(names, [groups[n] for n in names], color="#4477aa", label="accuracy")
    ax.scatter(names, [chance.get(n, 0.0) for n in names], color="gray", marker="_", s=400, label="chance", zorder=3)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_caption_samples(samples: Sequence[tuple[Image.Image, str, str]], path: Path) -> None:
    """A table of generation samples: image, reference, prediction."""
    plt = _plt()
    fig, axes = plt.subplots(len(samples), 2, figsize=(7, 1.3 * len(samples)), dpi=100,
                             gridspec_kw={"width_ratios": [1, 5]}, squeeze=False)
    for row, (image, ref, pred) in zip(axes, samples):
        row[0].imshow(image)
        row[0].axis("off")
        row[1].axis("off")
        row[1].text(0, 0.6, f"reference:  {ref}", fontsize=8, transform=row[1].transAxes)
        row[1].text(0, 0.25, f"prediction: {pred}", fontsize=8, color="#4477aa", transform=row[1].transAxes)
    _save(fig, path)


def plot_leaderboard(rows: Sequence[dict], path: Path) -> None:
    """One panel per task: a bar per model (its headline metric) with its untrained baseline beside it."""
    plt = _plt()
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(len(tasks), 1, figsize=(6, 2.2 * max(1, len(tasks))), dpi=100, squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        mine = [r for r in rows if r["task"] == task]
        names = [f"{r['family']}:{r['model']}" for r in mine]
        x = range(len(mine))
        ax.bar([i - 0.2 for i in x], [r["value"] for r in mine], width=0.4, color="#4477aa", label="trained")
        measured = [(i, r["baseline"]) for i, r in zip(x, mine) if r["baseline"] is not None]  # evals may skip it
        ax.bar([i + 0.2 for i, _ in measured], [b for _, b in measured], width=0.4, color="#bbbbbb", label="untrained")
        ax.set_xticks(list(x), names, fontsize=7)
        ax.set_title(f"{task} ({mine[0]['metric']})", fontsize=9)
        ax.legend(fontsize=6)
    _save(fig, path)
