"""Class-name and prompt-template files for zero-shot classification, as CLIP_benchmark keeps them per dataset:
read at ingest (``imagefolder:`` with ``--classnames`` / ``--templates``) and stored in the dataset's manifest,
where the zero-shot task takes them (``components/evaluation/classification.py``)."""
from __future__ import annotations

from pathlib import Path

from vlforge.errors import UserError

_SENTINEL = "\x00classname\x00"


def _lines(path: str | Path, what: str) -> tuple[Path, list[str]]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{what} file {path} cannot be read: {e}") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UserError(f"{what} file {path} is empty")
    return path, lines


def read_templates(path: str | Path) -> list[str]:
    """Prompt templates, one a line, each with one ``{}`` where the class name goes; blank lines are skipped."""
    path, lines = _lines(path, "templates")
    templates, numbers = [], []
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        if "{}" not in line:
            raise UserError(f"{path} line {number}: template {line!r} has no {{}} for the class name")
        try:
            filled = line.format(_SENTINEL)
        except (IndexError, KeyError, ValueError):
            filled = ""
        if _SENTINEL not in filled:
            raise UserError(f"{path} line {number}: template {line!r} must have exactly one {{}} and no other braces")
        templates.append(line)
        numbers.append(number)
    _no_duplicates(path, list(zip(numbers, templates)), "template")
    return templates


def read_classnames(path: str | Path) -> list[str]:
    """Class names, one a line, line i (from 0) naming class i; trailing blank lines are ignored, a blank
    line before the last name is an error (it would shift every class index after it)."""
    path, lines = _lines(path, "classnames")
    for number, line in enumerate(lines, start=1):
        if not line:
            raise UserError(f"{path} line {number} is blank: every line up to the last must name a class")
    _no_duplicates(path, list(enumerate(lines, start=1)), "class name")
    return lines


def _no_duplicates(path: Path, numbered: list[tuple[int, str]], what: str) -> None:
    seen: dict[str, int] = {}
    for number, item in numbered:
        if item in seen:
            raise UserError(f"{path} line {number}: {what} {item!r} repeats line {seen[item]}")
        seen[item] = number


def check_class_count(path: str | Path, names: list[str], count: int, where: str, unit: str = "classes") -> None:
    """A classnames file must name as many classes as ``where`` (an image folder at ingest, a dataset at eval)
    has, line i naming class i."""
    if len(names) != count:
        raise UserError(f"classnames file '{path}' names {len(names)} classes but {where} has {count} {unit}")
