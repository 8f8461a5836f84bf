"""How an eval runs, beside its tasks and split: class names and prompt templates that override the dataset's own
for zero-shot classification (CLIP_benchmark's per-dataset ``classnames`` / ``templates``), whether the untrained
baseline runs, whether the NLU probe also scores the text encoder the model started from, and the device.

    vlforge run eval --model REF --data REF --classnames FILE --templates FILE [--no-baseline] [--device cuda:0]
    vlforge run eval --model REF --data glue-rte --task nlu_probe [--no-text-encoder]

The class names and templates (their contents, not their paths), whether the baseline runs and, for the NLU probe,
whether it scores the text encoder are part of the eval stage's cache key (``components/stages/eval.py``) and so
of the eval's config, which ``vlforge reproduce`` re-runs; the device is not (the same numbers up to float rounding),
it is recorded in the report. The untrained baseline runs by default only where it is cheap: when the evaluated
split has at most ``BASELINE_AUTO_MAX_SAMPLES`` samples; ``--baseline`` asks for it on any split, ``--no-baseline``
skips it."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict
from vlforge.components.sources.class_prompts import check_class_count, read_classnames, read_templates
from vlforge.components.sources.tables import read_parquet

from vlforge.errors import UserError

if TYPE_CHECKING:
    import torch

# the baseline doubles an eval's cost; at or below this many samples that is cheap (the CLI's help and README say 10,000)
BASELINE_AUTO_MAX_SAMPLES = 10_000


class EvalOptions(BaseModel):
    """``classnames``: line i names the dataset's class i; ``baseline`` None: where cheap (see the module);
    ``text_encoder``: the NLU probe also fine-tunes the text encoder the model's text side started from (its
    ``text_init``) and reports the delta (``nlu_probe.py``), doubling the probe's cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    classnames: tuple[str, ...] | None = None
    templates: tuple[str, ...] | None = None
    baseline: bool | None = None
    device: str = "auto"
    text_encoder: bool = True
    classnames_file: str | None = None  # where the names came from, for messages (not keyed: the contents are)

    @classmethod
    def from_files(cls, classnames: str | Path | None = None, templates: str | Path | None = None,
                   baseline: bool | None = None, device: str = "auto", text_encoder: bool = True) -> EvalOptions:
        """Read and check the files (missing, empty, a template without ``{}``, a duplicate) and the device's form."""
        check_device_name(device)
        return cls(classnames=tuple(read_classnames(classnames)) if classnames else None,
                   templates=tuple(read_templates(templates)) if templates else None, baseline=baseline, device=device,
                   classnames_file=str(classnames) if classnames else None, text_encoder=text_encoder)

    def key_config(self, samples: int, tasks: Sequence[str] = ()) -> dict:
        """What of these options goes into the eval's cache key and its catalog config (``text_encoder`` only for
        an eval that runs the NLU probe, the one task it changes)."""
        config: dict = {"baseline": wants_baseline(self.baseline, samples)}
        if self.classnames is not None:
            config["classnames"] = list(self.classnames)
        if self.templates is not None:
            config["templates"] = list(self.templates)
        if not self.text_encoder and "nlu_probe" in tasks:  # only when off: an eval with it on keeps its config
            config["text_encoder"] = False
        return config


def wants_baseline(choice: bool | None, samples: int) -> bool:
    """The untrained baseline runs when asked, or by default when the split has at most the threshold's samples."""
    return choice if choice is not None else samples <= BASELINE_AUTO_MAX_SAMPLES


def check_device_name(device: str) -> None:
    kind, _, index = device.partition(":")
    if device not in ("auto", "cpu", "cuda") and not (kind == "cuda" and index.isdigit()):
        raise UserError(f"--device '{device}' is not one of auto, cpu, cuda, cuda:N")


def resolve_device(device: str) -> torch.device:
    """``auto``: the first GPU when torch sees one, else the CPU; ``cuda[:N]`` must exist here."""
    import torch

    check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device '{device}': torch sees no CUDA GPU on this machine (use --device cpu or auto)")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise UserError(f"--device '{device}': this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device("cuda", index)


def dataset_classes(dataset_dir: Path) -> list[str]:
    """The dataset's classes in class order: its source's class names (``imagefolder:``), else its labels over all
    splits, sorted. ``--classnames`` line i renames class i."""
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    named = (manifest.get("source") or {}).get("classnames")
    if named:
        return list(named)
    return sorted({lbl for lbl in _index_column(dataset_dir, "label") if lbl})


def class_renames(options: EvalOptions, dataset_dir: Path, dataset_name: str) -> dict[str, str] | None:
    """Dataset class -> the name prompts use for it, in class order, or None without ``--classnames``."""
    if options.classnames is None:
        return None
    classes = dataset_classes(dataset_dir)
    check_class_count(options.classnames_file or "--classnames", list(options.classnames), len(classes),
                      f"dataset '{dataset_name}'")
    return dict(zip(classes, options.classnames))


def split_size(dataset_dir: Path, split: str) -> int:
    """Samples in ``split`` (``all``: every sample), from the index alone."""
    splits = _index_column(dataset_dir, "split")
    return len(splits) if split == "all" else sum(1 for s in splits if s == split)


def _index_column(dataset_dir: Path, column: str) -> list:
    """One column of the dataset's ``samples.parquet`` index (every row None where it lacks the column)."""
    path = dataset_dir / "samples.parquet"
    if column in pq.read_schema(path).names:
        return read_parquet(path, columns=[column]).column(column).to_pylist()
    return [None] * pq.ParquetFile(path).metadata.num_rows
