"""Cache keys follow the code a stage really runs: its import closure within vlforge (computed, not listed),
plus the family packages whose models it builds or loads. Editing a module re-keys the stages that run it and
leaves every other stage, and every other family's training, a cache hit."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from vlforge.catalog import Catalog
from vlforge.components.stages import keys
from vlforge.components.stages.keys import Layout, code_fingerprint, import_closure, installed_layout
from vlforge.components.tokenizer import TokenizerConfig


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_closure_follows_lazy_relative_and_reexported_imports_only(tmp_path: Path) -> None:
    _write(tmp_path, "vlforge/__init__.py", "")
    _write(tmp_path, "vlforge/entry.py", "import json\n\ndef run():\n    from vlforge import lazy\n")
    _write(tmp_path, "vlforge/lazy.py", "from . import rel\nfrom vlforge.pkg import thing\n")
    _write(tmp_path, "vlforge/rel.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vlforge import typed\n")
    _write(tmp_path, "vlforge/typed.py", "")
    _write(tmp_path, "vlforge/pkg/__init__.py", "from .x import thing\nfrom .y import other\n")
    _write(tmp_path, "vlforge/pkg/x.py", "thing = 1\n")
    _write(tmp_path, "vlforge/pkg/y.py", "other = 2\n")
    _write(tmp_path, "vlforge/unused.py", "")
    _write(tmp_path, "vlforge/cli.py", "from vlforge import unused\n")
    _write(tmp_path, "vlforge/calls_cli.py", "from vlforge import cli\n")
    layout = Layout.of(tmp_path / "vlforge")
    got = {p.relative_to(tmp_path).as_posix() for p in import_closure(["vlforge.entry"], layout)}
    # the function-level import is followed, the relative one too, and a re-exported name only to its own module
    assert got == {"vlforge/__init__.py", "vlforge/entry.py", "vlforge/lazy.py", "vlforge/rel.py",
                   "vlforge/pkg/__init__.py", "vlforge/pkg/x.py"}
    # the CLI only wires and prints: what it imports is not stage code
    assert {p.name for p in import_closure(["vlforge.calls_cli"], layout)} == {"__init__.py", "calls_cli.py"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """A copy of the installed vlforge sources, to edit."""
    base = tmp_path_factory.mktemp("src")
    roots = []
    for prefix, folder in installed_layout().roots:
        dest = base / prefix.replace(".", "_")
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        roots.append((prefix, dest))
    return Layout(tuple(roots))


def _fingerprints(layout: Layout) -> dict[str, str]:
    stage = "vlforge.components.stages."
    return {
        "ingest": code_fingerprint([stage + "ingest"], layout=layout),
        "tokenizer": code_fingerprint([stage + "tokenizer"], layout=layout),
        "train clip": code_fingerprint([stage + "train"], ["clip"], layout=layout),
        "train vl-t5": code_fingerprint([stage + "train"], ["vl-t5"], layout=layout),
        "eval clip": code_fingerprint([stage + "eval", "vlforge.components.evaluation.retrieval"], ["clip"], layout=layout),
    }


def _root(layout: Layout, prefix: str) -> Path:
    return dict(layout.roots)[prefix]


@pytest.mark.parametrize(("edited", "changed"), [
    ("vlforge.components:bpe.py", {"tokenizer", "train clip", "train vl-t5", "eval clip"}),
    ("vlforge.components:models/vlt5/tasks.py", {"train vl-t5"}),
    ("vlforge.components:models/clip/recipes/tiny.yaml", {"train clip", "eval clip"}),
    ("vlforge.components:evaluation/retrieval.py", {"eval clip"}),
    ("vlforge.components:sources/shapes.py", {"ingest", "tokenizer", "train vl-t5"}),  # scene tasks
    ("vlforge.catalog:store.py", set()),
    ("vlforge.flows:pipeline.py", set()),
])
def test_editing_a_module_rekeys_exactly_the_stages_that_run_it(tree: Layout, edited: str, changed: set[str]) -> None:
    prefix, _, rel = edited.partition(":")
    path = _root(tree, prefix) / rel
    before = _fingerprints(tree)
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# edited\n")
        after = _fingerprints(tree)
    finally:
        path.write_bytes(original)
    assert {stage for stage in before if before[stage] != after[stage]} == changed
    assert _fingerprints(tree) == before  # the key is the code's content, not its modification time


def test_an_edited_tokenizer_module_reruns_the_tokenizer_stage_and_not_ingest(tree: Layout, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from vlforge.components.stages import run_tokenizer

    monkeypatch.setenv("VLFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(keys, "installed_layout", lambda: tree)
    catalog = Catalog(tmp_path / "catalog")
    data = tmp_path / "ds"
    data.mkdir()
    captions = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square")] * 3
    pq.write_table(pa.table({"key": [str(i) for i in range(len(captions))], "caption": captions,
                             "split": ["train"] * len(captions)}), data / "samples.parquet")
    dataset = catalog.register(kind="dataset", name="d", files=data, config={})
    cfg = TokenizerConfig(vocab_size=60)
    first = run_tokenizer(dataset.id, cfg, catalog)
    assert not first.cached and run_tokenizer(dataset.id, cfg, catalog).cached
    ingest_before = code_fingerprint(["vlforge.components.stages.ingest"])
    bpe = _root(tree, "vlforge.components") / "bpe.py"
    original = bpe.read_bytes()
    try:
        bpe.write_bytes(original + b"\n# a new merge rule would go here\n")
        again = run_tokenizer(dataset.id, cfg, catalog)
        assert code_fingerprint(["vlforge.components.stages.ingest"]) == ingest_before  # upstream: still a hit
    finally:
        bpe.write_bytes(original)
    assert not again.cached  # re-ran with the edited code
    # the same vocabulary is the same artifact, so what follows it stays a cache hit; a different one would not be
    assert again.artifact.id == first.artifact.id
    assert run_tokenizer(dataset.id, cfg, catalog).cached
