"""Each GLUE task's own metric, with the key names of Hugging Face ``evaluate``'s ``glue`` metric.

Reference: huggingface/evaluate, ``metrics/glue/glue.py`` (``Glue._compute``, ``simple_accuracy``,
``acc_and_f1``, ``pearson_and_spearman``), which calls scikit-learn's ``matthews_corrcoef`` and ``f1_score``
and SciPy's ``pearsonr`` and ``spearmanr``. Written here with numpy alone (scipy and scikit-learn are not
dependencies of this project); what is matched:

* cola -> ``matthews_correlation``: the multi-class (Gorodkin) form scikit-learn uses, which for two classes is
  the usual (tp*tn - fp*fn) / sqrt(...); 0.0 when either side has a single class (a zero denominator);
* sst2, mnli, mnli_matched, mnli_mismatched, qnli, rte, wnli, hans -> ``accuracy``;
* mrpc, qqp -> ``accuracy`` and ``f1``, F1 of the positive class 1 (``average="binary"``),
  2tp / (2tp + fp + fn), 0.0 where that is 0/0 (scikit-learn's ``zero_division`` default, with a warning there);
* stsb -> ``pearson`` and ``spearmanr``; Spearman is Pearson of the average ranks (ties share the mean of their
  ranks); nan where either side is constant, as SciPy. Inputs are cast to float32 first, as ``evaluate`` does
  with its ``float32`` features for stsb (the classification tasks' inputs are ``int64``).

Task names: the ``evaluate`` config names, plus "mnli-m" / "mnli-mm" for matched / mismatched, "sst-2",
"sts-b" and upper case."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlforge.errors import UserError

ACCURACY_TASKS = frozenset({"sst2", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli", "hans"})
F1_TASKS = frozenset({"mrpc", "qqp"})
TASKS = (*sorted(ACCURACY_TASKS), "cola", "mrpc", "qqp", "stsb")
ALIASES = {"mnli-m": "mnli_matched", "mnli-mm": "mnli_mismatched", "sst-2": "sst2", "sts-b": "stsb"}


def canonical_task(task: str) -> str:
    """The ``evaluate`` config name for ``task``; unknown names are a UserError that lists the known ones."""
    name = task.strip().lower()
    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise UserError(f"unknown GLUE task {task!r}; known: {', '.join(TASKS)} (and {', '.join(ALIASES)})")
    return name


def _labels(x: Sequence, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ValueError(f"{name} must be integer class labels")
    elif a.dtype.kind not in "iub":
        raise ValueError(f"{name} must be integer class labels, got dtype {a.dtype}")
    return a.astype(np.int64)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((predictions == labels).mean())


def matthews_correlation(predictions: np.ndarray, labels: np.ndarray) -> float:
    classes, idx = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    t_idx, p_idx = idx[: len(labels)], idx[len(labels):]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (t_idx, p_idx), 1.0)
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, n = np.trace(confusion), confusion.sum()
    cov_tp = correct * n - np.dot(t_sum, p_sum)
    cov_pp = n * n - np.dot(p_sum, p_sum)
    cov_tt = n * n - np.dot(t_sum, t_sum)
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def binary_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    bad = set(np.unique(np.concatenate([labels, predictions])).tolist()) - {0, 1}
    if bad:
        raise ValueError(f"F1 needs binary labels 0/1, got also {sorted(bad)}")
    tp = float(np.sum((predictions == 1) & (labels == 1)))
    fp = float(np.sum((predictions == 1) & (labels == 0)))
    fn = float(np.sum((predictions == 0) & (labels == 1)))
    denominator = 2 * tp + fp + fn
    return 0.0 if denominator == 0 else 2 * tp / denominator


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        raise ValueError("a correlation needs at least 2 pairs")
    if np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    xm, ym = x - x.mean(), y - y.mean()
    r = np.dot(xm / np.linalg.norm(xm), ym / np.linalg.norm(ym))
    return float(np.clip(r, -1.0, 1.0))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given the mean of the ranks they span."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]  # exclusive
    ranks = np.empty(len(x), dtype=np.float64)
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0  # mean of ranks s+1 .. e
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def glue_metrics(task: str, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """The metric(s) of GLUE ``task`` for ``predictions`` against ``labels`` (class ids; scores for stsb)."""
    name = canonical_task(task)
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("GLUE metrics need at least one example")
    if name == "stsb":
        p = np.asarray(predictions, dtype=np.float32)
        y = np.asarray(labels, dtype=np.float32)
        if p.ndim != 1 or y.ndim != 1:
            raise ValueError("stsb predictions and labels must be one-dimensional scores")
        return {"pearson": pearson(p, y), "spearmanr": spearman(p, y)}
    p, y = _labels(predictions, "predictions"), _labels(labels, "labels")
    if name == "cola":
        return {"matthews_correlation": matthews_correlation(p, y)}
    if name in F1_TASKS:
        return {"accuracy": accuracy(p, y), "f1": binary_f1(p, y)}
    return {"accuracy": accuracy(p, y)}
