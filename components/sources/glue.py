"""A GLUE task's TSV files (Wang et al., "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language
Understanding", 2018) as a text-only source for the NLU probe (``components/evaluation/nlu_probe.py``), which
scores it with the task's own metric (``metrics.glue``).

    vlforge run ingest --source glue:glue_data/MRPC

The folder is one task as the GLUE download script lays it out: ``train.tsv`` and ``dev.tsv`` (MNLI:
``dev_matched.tsv``), named by the task (``CoLA``, ``SST-2``, ``MRPC``, ``QQP``, ``MNLI``, ``QNLI``, ``RTE``,
``WNLI``, and ``STS-B``, the regression task). ``train`` is the train split, ``dev`` the validation split (GLUE's
test labels are hidden). A row becomes a sample whose caption is the sentence, or the two sentences joined by
`` | `` for a pair task, and whose label is the task's label as written (``0``/``1``, ``entailment``...; for
STS-B the 0-5 similarity ``score`` as written, ``3.800``, which the probe reads back as a number)."""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from vlforge.errors import UserError

PAIR_SEPARATOR = " | "


@dataclass(frozen=True)
class TaskLayout:
    text: tuple[str, ...]  # the sentence column(s): names, or indices for a file without a header
    label: str | int
    header: bool = True
    dev: str = "dev.tsv"
    score: bool = False  # a regression: the label is a similarity score in [0, 5] (STS-B)


LAYOUTS = {
    "cola": TaskLayout((3,), 1, header=False),
    "sst2": TaskLayout(("sentence",), "label"),
    "mrpc": TaskLayout(("#1 String", "#2 String"), "Quality"),
    "qqp": TaskLayout(("question1", "question2"), "is_duplicate"),
    "mnli": TaskLayout(("sentence1", "sentence2"), "gold_label", dev="dev_matched.tsv"),
    "qnli": TaskLayout(("question", "sentence"), "label"),
    "rte": TaskLayout(("sentence1", "sentence2"), "label"),
    "wnli": TaskLayout(("sentence1", "sentence2"), "label"),
    "stsb": TaskLayout(("sentence1", "sentence2"), "score", score=True),
}
STS_RANGE = (0.0, 5.0)


def _read_tsv(path: Path, layout: TaskLayout) -> list[tuple[str, str]]:
    """(text, label) per row; GLUE's TSVs are unquoted, so quotes are text."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if layout.header:
        if not rows:
            raise UserError(f"glue file '{path}' is empty")
        header = rows[0]
        missing = [c for c in (*layout.text, layout.label) if c not in header]
        if missing:
            raise UserError(f"glue file '{path}' has no column {', '.join(map(repr, missing))} "
                            f"(columns: {', '.join(header)})")
        where = [header.index(c) for c in (*layout.text, layout.label)]
        rows = rows[1:]
    else:
        where = [*layout.text, layout.label]
    out = []
    for n, row in enumerate(rows, start=2 if layout.header else 1):
        if len(row) <= max(where):
            raise UserError(f"glue file '{path}' line {n} has {len(row)} fields, fewer than the task's {max(where) + 1}")
        label = row[where[-1]].strip()
        if layout.score:
            _check_score(path, n, label)
        out.append((PAIR_SEPARATOR.join(row[i].strip() for i in where[:-1]), label))
    if not out:
        raise UserError(f"glue file '{path}' has no rows")
    return out


def _check_score(path: Path, line: int, text: str) -> None:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not STS_RANGE[0] <= value <= STS_RANGE[1]:  # nan fails too
        raise UserError(f"glue file '{path}' line {line} has score {text!r}, not a number from "
                        f"{STS_RANGE[0]:g} to {STS_RANGE[1]:g}")


def load_glue(folder: Path, task: str | None = None) -> tuple[pa.Table, dict, str]:
    """``(samples, description, fingerprint)`` of a GLUE task folder: samples with key, split, caption, label.
    The task is ``task`` or the folder's name, in any case, with or without its hyphen (``SST-2``)."""
    if not folder.is_dir():
        raise UserError(f"glue folder '{folder}' does not exist")
    name = (task or folder.name).strip().lower().replace("-", "")
    if name not in LAYOUTS:
        raise UserError(f"glue task '{name}' is not a task the NLU probe fits "
                        f"(one of {', '.join(LAYOUTS)})")
    layout = LAYOUTS[name]
    columns: dict[str, list[str]] = {"key": [], "split": [], "caption": [], "label": []}
    digest = hashlib.sha256(name.encode())
    for split, filename in (("train", "train.tsv"), ("validation", layout.dev)):
        path = folder / filename
        if not path.is_file():
            raise UserError(f"glue folder '{folder}' has no {filename}")
        digest.update(path.read_bytes())
        for n, (text, label) in enumerate(_read_tsv(path, layout)):
            columns["key"].append(f"{filename}:{n}")
            columns["split"].append(split)
            columns["caption"].append(text)
            columns["label"].append(label)
    description = {"kind": "glue", "path": str(folder), "glue_task": name, "rows": len(columns["key"])}
    return pa.table(columns), description, digest.hexdigest()
