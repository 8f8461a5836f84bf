"""`--retry-failures`: ingesting a URL list again fetches only the URLs that failed for a transient reason (HTTP 5xx,
429, a timeout), keeps every earlier sample (its bytes and split), keeps permanent failures (404, not an image),
and registers a new dataset whose shards are those of an uninterrupted crawl that had met no transient failure.
Against the loopback fault server (whose ``flaky``, ``busy-once`` and ``stall-once`` URLs fail on the first request
only), counting its requests per path."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_harness import run_cli
from fault_server import fault_servers  # noqa: F401 (a fixture)
from vlforge.catalog import Catalog
from vlforge.components.data.crawl import TRANSIENT_FAILURE_REASONS, CrawlConfig, crawl, failure_reason
from vlforge.components.data.retry import select_retry
from vlforge.components.data.shard import ShardConfig, read_tar_groups, sample_key, shard_crawl
from vlforge.components.sources.config import SourceConfig
from vlforge.components.sources.tables import load_url_list
from vlforge.components.stages import ingest_retry_plan, run_ingest, run_ingest_retry

from vlforge.errors import UserError

KINDS = {"ok": 6, "flaky": 2, "busy-once": 2, "stall-once": 2, "missing": 2, "html": 1}  # kind -> URLs
TRANSIENT_KINDS = ("flaky", "busy-once", "stall-once")


def members_by_key(folder: Path) -> dict[str, dict[str, bytes]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {key: m for s in manifest["shards"] for key, m in read_tar_groups(folder / s["shard"])}


def test_transient_reasons_are_the_fetch_failures() -> None:
    assert failure_reason("HTTP Error 429: Too Many Requests") == "rate_limited"
    assert failure_reason("HTTP Error 503: Service Unavailable") == "server_error"
    assert failure_reason("The read operation timed out") == "timeout"
    assert failure_reason("<urlopen error [Errno 111] Connection refused>") == "connection_error"
    transient = {failure_reason(m) for m in ("HTTP Error 429: x", "HTTP Error 500: x", "timed out", "connection reset")}
    permanent = {failure_reason(m) for m in ("HTTP Error 404: Not Found", "image decoding error", "truncated image",
                                             "body exceeds max_bytes", "HTTP Error 403: Forbidden")}
    assert transient <= TRANSIENT_FAILURE_REASONS and not permanent & TRANSIENT_FAILURE_REASONS


def test_retry_refetches_only_transient_failures_and_keeps_every_sample(fault_servers, tmp_path: Path, home: Path) -> None:  # noqa: F811 (the imported fixture)
    s = fault_servers
    rows = [{"url": f"{s.base}/{kind}/{7300 + i}", "caption": f"{kind} {i}"} for kind, n in KINDS.items() for i in range(n)]
    rows = rows[::2] + rows[1::2]  # kinds interleaved, so the recovered samples fall between the kept ones
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    src = SourceConfig(spec=str(tmp_path / "urls.parquet"), name="flaky-list")
    cfg = CrawlConfig(image_size=16, processes=1, threads=8, timeout=1, retries=0, samples_per_crawl_shard=5,
                      allow_hosts=[s.allow])
    shard = ShardConfig(samples_per_shard=3, validation_fraction=0.3)
    catalog = Catalog(home / "catalog")

    first = run_ingest(src, cfg, shard, catalog).artifact
    first_dir = catalog.path(first.id)
    first_manifest = json.loads((first_dir / "manifest.json").read_text())
    assert first_manifest["samples"] == KINDS["ok"]
    assert first_manifest["failures_by_reason"] == {"not_an_image": 1, "not_found": 2, "rate_limited": 2,
                                                    "server_error": 2, "timeout": 2}
    before = s.requests.copy()

    # a longer timeout is a fetch setting: the retry still extends the same dataset
    retry_cfg = cfg.model_copy(update={"timeout": 5})
    assert ingest_retry_plan(src, retry_cfg, shard, catalog).retry == 6
    result = run_ingest_retry(src, retry_cfg, shard, catalog)
    second = result.artifact
    assert not result.cached and second.id != first.id and list(second.parents) == [first.id]
    assert second.name == first.name and second.version == first.version + 1
    assert second.metrics["retried"] == 6 and second.metrics["recovered"] == 6
    fetched = {path: n - before[path] for path, n in s.requests.items() if n > before[path]}
    assert fetched == {f"/{kind}/{7300 + i}": 1 for kind in TRANSIENT_KINDS for i in range(KINDS[kind])}

    second_dir = catalog.path(second.id)
    manifest = json.loads((second_dir / "manifest.json").read_text())
    assert manifest["samples"] == 12 and manifest["attempted"] == len(rows)
    assert manifest["failures_by_reason"] == {"not_an_image": 1, "not_found": 2}
    failures = pq.read_table(second_dir / "failures.parquet").to_pylist()
    assert sorted(f["reason"] for f in failures) == ["not_an_image", "not_found", "not_found"]
    old_index = {r["key"]: r for r in pq.read_table(first_dir / "samples.parquet").to_pylist()}
    new_index = {r["key"]: r for r in pq.read_table(second_dir / "samples.parquet").to_pylist()}
    assert old_index.keys() <= new_index.keys()
    assert all(new_index[k]["split"] == r["split"] for k, r in old_index.items())  # splits of kept samples unchanged
    old_members, new_members = members_by_key(first_dir), members_by_key(second_dir)
    assert all(new_members[k] == m for k, m in old_members.items())  # kept samples' bytes reused as they were
    assert sorted(r["caption"] for r in new_index.values()) == sorted(
        r["caption"] for r in rows if r["url"].split("/")[-2] not in ("missing", "html"))

    # what one crawl that had met no transient failure writes (every URL now answers at once)
    fresh = crawl(load_url_list(tmp_path / "urls.parquet"), tmp_path / "fresh", cfg)
    expected = shard_crawl(fresh, tmp_path / "ds-fresh", shard, {})
    assert [(x["shard"], x["sha256"]) for x in manifest["shards"]] == [(x["shard"], x["sha256"]) for x in expected["shards"]]
    assert pq.read_table(second_dir / "samples.parquet").equals(pq.read_table(tmp_path / "ds-fresh" / "samples.parquet"))
    assert manifest["failures_by_reason"] == expected["failures_by_reason"]

    # nothing transient is left: the retry says so and returns the dataset it has
    before = s.requests.copy()
    assert ingest_retry_plan(src, cfg, shard, catalog).retry == 0
    again = run_ingest_retry(src, cfg, shard, catalog)
    assert again.cached and again.artifact.id == second.id and len(catalog.list(kind="dataset")) == 2
    assert s.requests == before
    proc = run_cli(["run", "ingest", "--source", src.spec, "--name", "flaky-list",
                           "--allow-host", s.allow, "--timeout", "1", "--retries", "0", "--set", "crawl.image_size=16",
                           "--set", "crawl.processes=1", "--set", "crawl.threads=8", "--set", "crawl.samples_per_crawl_shard=5",
                           "--set", "shard.samples_per_shard=3", "--set", "shard.validation_fraction=0.3",
                           "--retry-failures", "--json"], home, 300, embedded=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["dataset"] == second.id and out["retried"] == 0 and out["recovered"] == 0 and out["samples"] == 12
    assert "nothing to retry" in proc.stderr


def test_selection_of_rows_without_an_outcome_and_of_repeated_rows(tmp_path: Path) -> None:
    """A crawl shard that never finished (``not_attempted``) leaves rows with no recorded outcome: they are fetched
    again. A repeat of a row that is a sample is not, and its failure counts as the duplicate it would have been."""
    rows = pa.table({"url": [f"http://h/{i}" for i in range(5)], "source_key": ["s0", "s1", "s2", "s3", "s0"]})
    ds = tmp_path / "ds"
    ds.mkdir()
    pq.write_table(pa.table({"key": [sample_key("s0")]}), ds / "samples.parquet")
    pq.write_table(pa.Table.from_pylist([
        {"url": "http://h/1", "source_key": "s1", "reason": "timeout", "error_message": "timed out"},
        {"url": "http://h/2", "source_key": "s2", "reason": "not_found", "error_message": "HTTP Error 404"},
        {"url": "http://h/4", "source_key": "s0", "reason": "server_error", "error_message": "HTTP Error 502"}]),
        ds / "failures.parquet")
    (ds / "manifest.json").write_text(json.dumps({"failures_by_reason": {"not_attempted": 1, "not_found": 1, "server_error": 1,
                                                                          "timeout": 1, "undecodable": 1}}))
    sel = select_retry(ds, rows, "urls.parquet", "urls:1")
    assert sel.indices == [1, 3] and sel.kept_samples == 1
    assert [f["reason"] for f in sel.kept_failures] == ["not_found"] and +sel.kept_counts == {"duplicate": 1}
    with pytest.raises(UserError, match="source 'urls.parquet' no longer lists 1 of the samples of dataset urls:1"):
        select_retry(ds, rows.slice(1, 3), "urls.parquet", "urls:1")  # rows 1-3: s0 gone


def test_retry_of_a_source_never_ingested_is_one_line_and_registers_nothing(tmp_path: Path, home: Path) -> None:
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.png"], "caption": ["a"]}), tmp_path / "never.parquet")
    spec = str(tmp_path / "never.parquet")
    catalog = Catalog(home / "catalog")
    with pytest.raises(UserError, match=f"no dataset was ingested from source '{spec}'"):
        run_ingest_retry(SourceConfig(spec=spec), CrawlConfig(), ShardConfig(), catalog)
    with pytest.raises(UserError, match="not fetched from URLs"):
        ingest_retry_plan(SourceConfig(spec="builtin:shapes?n=8"), CrawlConfig(), ShardConfig(), catalog)
    proc = run_cli(["run", "ingest", "--source", spec, "--retry-failures", "--json"], home, 300, embedded=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and spec in proc.stderr, proc.stderr
    assert catalog.list() == [] and not (home / "work" / "ingest_retry").exists()
