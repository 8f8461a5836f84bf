"""Retry of a crawl's transient failures: which rows of a source to fetch again, and the new dataset that keeps an
earlier dataset's samples and adds the ones the retry recovered.

Where it sits: between the crawl (``crawl.py``) and the shard stage (``shard.py``), for ``vlforge run ingest
--retry-failures`` (``components/stages/ingest_retry.py``). A row is fetched again when the earlier crawl failed it
for a reason in ``TRANSIENT_FAILURE_REASONS`` (a timeout, a connection error, HTTP 5xx or 429, or a crawl shard that
never finished); every other failure stays one. The earlier samples are copied from the earlier dataset's shards
(their bytes, index rows and splits unchanged, nothing downloaded again) and merged with the recovered ones in source
order, the order a crawl writes, so the new dataset is the one an uninterrupted crawl that had met no transient
failure would have written: same keys, splits, shards and bytes."""
from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from vlforge.components.data.crawl import TRANSIENT_FAILURE_REASONS, CrawlResult
from vlforge.components.data.shard import INDEX_COLUMNS, CrawlSharder, ShardConfig, read_tar_groups, sample_key
from vlforge.components.sources.tables import read_parquet
from vlforge.errors import UserError

# the shard stage's own counts (``CrawlSharder.failures``): samples the crawl returned that it left out
_SHARDER_REASONS = ("undecodable", "duplicate")


@dataclass
class RetrySelection:
    """What an earlier dataset keeps and which source rows are fetched again."""

    indices: list[int]  # source rows to fetch again, in source order
    row_of_key: dict[str, int]  # sample key -> its first source row: the order samples go in
    row_of_source_key: dict[str, int]  # source key -> its first source row: the order failures go in
    kept_failures: list[dict] = field(default_factory=list)  # failures.parquet rows that stay failures
    kept_counts: Counter = field(default_factory=Counter)  # the earlier shard stage's counts that stay
    kept_samples: int = 0


def _sample_keys(rows: pa.Table) -> list[str]:
    """Each source row's sample key, as the shard stage derives it (``CrawlSharder.add``)."""
    return [sample_key(sk or url) for sk, url in zip(rows.column("source_key").to_pylist(), rows.column("url").to_pylist())]


def select_retry(dataset_dir: Path, rows: pa.Table, source: str, dataset: str) -> RetrySelection:
    """The rows of ``rows`` (a source's, as ``load_source_rows`` gives them) to fetch again for the crawled dataset in
    ``dataset_dir`` (named ``dataset`` in messages): those it failed for a transient reason, and, where a crawl
    shard never finished (``not_attempted``), those it has no outcome for. Rows whose sample it has (or a
    duplicate's) are kept. Raises UserError if the dataset holds samples the source no longer lists."""
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    kept_keys = set(read_parquet(dataset_dir / "samples.parquet", columns=["key"]).column("key").to_pylist())
    failures = read_parquet(dataset_dir / "failures.parquet").to_pylist() if (dataset_dir / "failures.parquet").is_file() else []
    keys = _sample_keys(rows)
    source_keys = rows.column("source_key").to_pylist()
    row_of_key: dict[str, int] = {}
    row_of_source_key: dict[str, int] = {}
    for i, (key, sk) in enumerate(zip(keys, source_keys)):
        row_of_key.setdefault(key, i)
        row_of_source_key.setdefault(sk, i)
    if missing := len(kept_keys - row_of_key.keys()):
        raise UserError(f"source '{source}' no longer lists {missing} of the samples of dataset {dataset}: it changed "
                        f"since that ingest; ingest it without --retry-failures")

    transient = {f["source_key"] for f in failures if f["reason"] in TRANSIENT_FAILURE_REASONS and f["source_key"] in row_of_source_key}
    failed = {f["source_key"] for f in failures}
    old_counts = Counter(manifest.get("failures_by_reason", {}))
    # rows with no recorded outcome are those of a crawl shard that never finished, and any the shard stage left out
    # as undecodable: with the former present both are fetched again and counted anew
    redo_unrecorded = old_counts.get("not_attempted", 0) > 0
    indices = [i for i, (key, sk) in enumerate(zip(keys, source_keys))
               if key not in kept_keys and (sk in transient or (redo_unrecorded and sk not in failed))]
    sel = RetrySelection(indices, row_of_key, row_of_source_key, kept_samples=len(kept_keys))
    for f in failures:
        if f["source_key"] not in transient:
            sel.kept_failures.append(f)
        elif keys[row_of_source_key[f["source_key"]]] in kept_keys:
            sel.kept_counts["duplicate"] += 1  # a repeat of a row that is a sample: what a crawl without the failure counts
    for reason in _SHARDER_REASONS:
        if not (reason == "undecodable" and redo_unrecorded):
            sel.kept_counts[reason] += old_counts.get(reason, 0)
    return sel


def _split_stream(folder: Path, shards: list[str], index: dict[str, dict], row_of_key: dict[str, int]) -> Iterator[tuple]:
    """(source row, index row, tar members, extra fields) of one split's samples, in shard order."""
    for shard in shards:
        for key, members in read_tar_groups(folder / shard):
            row = index[key]
            base = {c: row[c] for c in INDEX_COLUMNS if c != "shard"}
            extra = {c: v for c, v in row.items() if c not in INDEX_COLUMNS and v is not None}
            yield row_of_key[key], base, members, extra


def _dataset_streams(folder: Path, row_of_key: dict[str, int]) -> list[Iterator[tuple]]:
    """One stream per split of the dataset in ``folder``; a crawl writes each in source order."""
    manifest = json.loads((folder / "manifest.json").read_text())
    index = {r["key"]: r for r in read_parquet(folder / "samples.parquet").to_pylist()}
    return [_split_stream(folder, info["shards"], index, row_of_key) for info in manifest["splits"].values()]


def merge_retry(dataset_dir: Path, selection: RetrySelection, recovered_dir: Path, recovered_counts: Counter,
                retry: CrawlResult, attempted: int, out_dir: Path, config: ShardConfig, source: dict) -> dict:
    """Write into ``out_dir`` the dataset that holds the samples of ``dataset_dir`` and those of ``recovered_dir``
    (the retried rows' crawl, sharded with ``config``; ``recovered_counts`` its shard stage's own counts), in source
    order, with the kept failures and the retry's (``retry``) in ``failures.parquet``. Returns the manifest."""
    sharder = CrawlSharder(out_dir, config)
    sharder.failures.update(+selection.kept_counts + recovered_counts)
    streams = _dataset_streams(dataset_dir, selection.row_of_key) + _dataset_streams(recovered_dir, selection.row_of_key)
    for _row, base, members, extra in heapq.merge(*streams, key=lambda sample: sample[0]):
        sharder.keep(base, members, extra)

    failures = selection.kept_failures + read_parquet(retry.failures_path).to_pylist()
    last = len(selection.row_of_source_key)
    failures.sort(key=lambda f: selection.row_of_source_key.get(f["source_key"], last))
    failures_path = out_dir.parent / "failures.parquet"
    columns = ("url", "source_key", "reason", "error_message")
    pq.write_table(pa.table({c: pa.array([f[c] for f in failures], pa.string()) for c in columns}), failures_path)
    crawl_failures = Counter(f["reason"] for f in failures)
    crawl_failures["not_attempted"] += retry.failures_by_reason.get("not_attempted", 0)
    return sharder.close(attempted, +crawl_failures, failures_path, source)
