"""Reproducing an artifact: re-run the stages that made it and its ancestors, from their recorded configs, into a
scratch catalog (so nothing is a cache hit), and compare content hashes with the originals.

A content hash covers an artifact's files except run records whose bytes legitimately differ between runs
(``train_log.jsonl`` holds wall-clock throughput). On CPU with fixed seeds, data, tokenizer, model and eval
must match exactly; ``vlforge reproduce REF`` reports each artifact's expected and rebuilt hash."""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlforge.catalog import Artifact, Catalog
from vlforge.errors import UserError

RUN_RECORDS = frozenset({"train_log.jsonl"})


def content_hash(artifact: Artifact) -> str:
    h = hashlib.sha256()
    for f in sorted(artifact.files, key=lambda f: f.path):
        if f.path not in RUN_RECORDS:
            h.update(f"{f.path}\0{f.sha256}\n".encode())
    return h.hexdigest()


@contextmanager
def _home(path: Path) -> Iterator[None]:
    old = os.environ.get("VLFORGE_HOME")
    os.environ["VLFORGE_HOME"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("VLFORGE_HOME", None)
        else:
            os.environ["VLFORGE_HOME"] = old


def _rebuild(art: Artifact, new_ids: dict[str, str], scratch: Catalog, ray_address: str | None) -> Artifact:
    from vlforge.components import stages
    from vlforge.components.data.crawl import CrawlConfig
    from vlforge.components.data.shard import ShardConfig
    from vlforge.components.pipeline_config import SourceConfig
    from vlforge.components.tokenizer import TokenizerConfig

    cfg: dict[str, Any] = art.config
    parents = [new_ids[p] for p in art.parents if p in new_ids]
    if art.kind == "dataset":
        return stages.run_ingest(SourceConfig(**cfg["source"]), CrawlConfig(**cfg["crawl"]), ShardConfig(**cfg["shard"]), scratch).artifact
    if art.kind == "tokenizer":
        return stages.run_tokenizer(parents[0], TokenizerConfig(**cfg), scratch).artifact
    if art.kind == "model":
        return stages.run_train(cfg["family"], cfg["recipe"], cfg["values"], parents[0], parents[1], scratch, ray_address).artifact
    if art.kind == "eval":
        return stages.run_eval(parents[0], parents[1], cfg["tasks"], cfg["split"], scratch).artifact
    raise UserError(f"artifact '{art.short_id}' is a {art.kind}: vlforge cannot re-run the stage that made it")


def reproduce(ref: str, catalog: Catalog, ray_address: str | None = None, scratch_dir: Path | None = None) -> list[dict[str, Any]]:
    """Rebuild ``ref`` and its ancestors, parents first; one row per artifact with both hashes and ``match``."""
    target = catalog.get(ref)
    order: list[Artifact] = []
    seen: set[str] = set()

    def visit(art: Artifact) -> None:
        if art.id in seen:
            return
        seen.add(art.id)
        for p in art.parents:
            visit(catalog.get(p))
        order.append(art)

    visit(target)
    rows: list[dict[str, Any]] = []
    new_ids: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="vlforge-reproduce-", dir=scratch_dir) as tmp, _home(Path(tmp)):
        scratch = Catalog(Path(tmp) / "catalog")
        for art in order:
            rebuilt = _rebuild(art, new_ids, scratch, ray_address)
            new_ids[art.id] = rebuilt.id
            expected, got = content_hash(art), content_hash(rebuilt)
            rows.append({"id": art.id, "kind": art.kind, "name": art.name, "expected": expected, "rebuilt": got,
                         "match": expected == got, "mismatched_files": sorted(
                             {f.path for f in art.files} ^ {f.path for f in rebuilt.files}
                             | {f.path for f in art.files for g in rebuilt.files
                                if f.path == g.path and f.sha256 != g.sha256 and f.path not in RUN_RECORDS})})
    return rows
