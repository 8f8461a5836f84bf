"""Reproducing an artifact: re-run the stages that made it and its ancestors, from their recorded configs, into a
scratch catalog (so nothing is a cache hit), and compare content hashes with the originals.

A content hash covers an artifact's files except run records whose bytes legitimately differ between runs
(``train_log.jsonl`` holds wall-clock throughput). On CPU with fixed seeds, data, tokenizer, model and eval
must match exactly; ``vlforge reproduce REF`` reports each artifact's expected and rebuilt hash."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlforge.catalog import Artifact, Catalog
from vlforge.components.models.registry import FAMILY_FILE
from vlforge.components.stages.plan import remap_refs
from vlforge.errors import UserError

RUN_RECORDS = frozenset({"train_log.jsonl"})
# catalog folders a saved recipe names (teachers, towers, init_from): they differ between catalogs, and the artifacts
# behind them are compared on their own rows
_VIEW_PATH = re.compile(r'"[^"]*/views/[0-9a-f]{64}"')


def file_digests(artifact: Artifact, catalog: Catalog | None = None) -> dict[str, str]:
    """Path -> sha256 of an artifact's files, run records aside. With ``catalog``, a model's family file counts
    with the catalog folders it names replaced by a placeholder."""
    out: dict[str, str] = {}
    for f in artifact.files:
        if f.path in RUN_RECORDS:
            continue
        out[f.path] = f.sha256
        if catalog is not None and f.path == FAMILY_FILE:
            text = (catalog.path(artifact.id) / FAMILY_FILE).read_text()
            out[f.path] = hashlib.sha256(_VIEW_PATH.sub('"<catalog artifact>"', text).encode()).hexdigest()
    return out


def content_hash(artifact: Artifact, catalog: Catalog | None = None) -> str:
    h = hashlib.sha256()
    for path, digest in sorted(file_digests(artifact, catalog).items()):
        h.update(f"{path}\0{digest}\n".encode())
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


def _rebuild(art: Artifact, new_ids: dict[str, str], scratch: Catalog, catalog: Catalog,
             ray_address: str | None) -> Artifact:
    """Re-run the stage that made ``art`` (``config["stage"]``; entries from before it was recorded: the stage that
    makes that kind, a dataset with a filter config being the filter's) on the rebuilt parents."""
    from vlforge.components import stages
    from vlforge.components.data.crawl import CrawlConfig
    from vlforge.components.data.filter import FilterConfig
    from vlforge.components.data.shard import ShardConfig
    from vlforge.components.sources.config import SourceConfig
    from vlforge.components.tokenizer import TokenizerConfig

    cfg: dict[str, Any] = {k: v for k, v in art.config.items() if k != "stage"}
    stage = art.config.get("stage") or {"tokenizer": "tokenizer", "model": "train", "eval": "eval"}.get(
        art.kind, "ingest" if "source" in cfg else "filter" if art.kind == "dataset" else "")
    parents = [new_ids[p] for p in art.parents if p in new_ids]
    if stage in ("ingest", "ingest_retry"):  # a retry retries the rebuilt parent, the latest ingest in ``scratch``
        run = stages.run_ingest if stage == "ingest" else stages.run_ingest_retry
        return run(SourceConfig(**cfg["source"]), CrawlConfig(**cfg["crawl"]), ShardConfig(**cfg["shard"]), scratch).artifact
    if stage == "filter":
        config = FilterConfig(**cfg)
        if config.clip_model:  # the scoring model, rebuilt: the second parent
            config = config.model_copy(update={"clip_model": parents[1]})
        return stages.run_filter(parents[0], config, scratch, ray_address).artifact
    if stage == "tokenizer":
        return stages.run_tokenizer(parents[0], TokenizerConfig(**cfg), scratch).artifact
    if stage == "train":  # its teachers, towers and the model it continued are parents, rebuilt already
        step = stages.TrainStep.from_artifact(art, catalog)
        # a weighted mix: its datasets (config "mix") are the first parents, then the tokenizer
        mix = {new_ids[m["dataset"]]: m["weight"] for m in cfg.get("mix", [])}
        data = mix if mix else parents[0]
        return stages.run_train(step.family, step.recipe, remap_refs(step.overrides, new_ids), data,
                                parents[len(mix) if mix else 1], scratch, ray_address).artifact
    if stage == "eval":
        from vlforge.components.evaluation.options import EvalOptions

        options = EvalOptions(classnames=cfg.get("classnames"), templates=cfg.get("templates"),
                              baseline=cfg.get("baseline"), text_encoder=cfg.get("text_encoder", True),
                              device="cpu")  # CPU: the numbers compared exactly
        return stages.run_eval(parents[0], parents[1], cfg["tasks"], cfg["split"], scratch, options=options).artifact
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
            rebuilt = _rebuild(art, new_ids, scratch, catalog, ray_address)
            new_ids[art.id] = rebuilt.id
            want, have = file_digests(art, catalog), file_digests(rebuilt, scratch)
            expected, got = content_hash(art, catalog), content_hash(rebuilt, scratch)
            rows.append({"id": art.id, "kind": art.kind, "name": art.name, "expected": expected, "rebuilt": got,
                         "match": expected == got,
                         "mismatched_files": sorted(p for p in want.keys() | have.keys() if want.get(p) != have.get(p))})
    return rows
