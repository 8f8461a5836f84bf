"""The real img2dataset crawl, guarded, against the loopback fault server: every URL ends in exactly one outcome
with the right reason, user limits apply, and the internal (not allow-listed) server sees no connection at all."""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fault_server import fault_servers, framed_images  # noqa: F401 (a fixture)
from vlforge.components.data.crawl import CrawlConfig, crawl, finished_crawl_shards
from vlforge.components.data.shard import ShardConfig, shard_crawl
from vlforge.components.sources.tables import load_url_list

EXPECTED = {  # kind -> (count, outcome)
    "ok": (300, "success"), "flaky": (10, "success"), "missing": (10, "not_found"), "error": (8, "server_error"),
    "slow": (3, "timeout"), "truncated": (10, "truncated"), "html": (10, "not_an_image"), "huge": (2, "too_large"),
    "bigbody": (5, "too_large"), "small": (5, "too_small"), "tall": (4, "too_large"),
    "wide": (4, "bad_aspect_ratio"), "noai": (10, "opted_out"), "loop": (5, "redirect_loop"),
    "to-internal": (10, "blocked_by_policy"),
    # images cut short at their origin, the transfer itself complete (Content-Length = the bytes sent, or chunked):
    # counted as `truncated` like a transfer cut short, whether cv2 would decode them (APNG, multi-page TIFF, MPO and a
    # JPEG without EOI: their first image) or not; the whole images in the same formats are samples
    **{f"whole-{fmt}": (3, "success") for fmt in framed_images()},
    **{f"cut-{fmt}": (3, "truncated") for fmt in framed_images()},
    "cut-png-chunked": (2, "truncated"),
}


def test_every_url_ends_in_one_outcome_and_the_internal_server_is_never_reached(fault_servers, tmp_path: Path) -> None:  # noqa: F811 (the imported fixture)
    s = fault_servers
    rows = [{"url": f"{s.base}/{kind}/{i}", "caption": f"{kind} {i}", "expect": outcome}
            for kind, (n, outcome) in EXPECTED.items() for i in range(n)]
    internal_port = s.internal.rsplit(":", 1)[1]
    rows += [{"url": url, "caption": "internal", "expect": "blocked_by_policy"} for url in (
        f"{s.internal}/direct", f"http://localhost:{internal_port}/by-name", f"http://2130706433:{internal_port}/decimal",
        f"http://0177.0.0.1:{internal_port}/octal", f"http://[::ffff:127.0.0.1]:{internal_port}/mapped",
        "file:///etc/passwd", "http://169.254.169.254/latest/meta-data/")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    expected = {r["url"]: r["expect"] for r in rows}

    cfg = CrawlConfig(image_size=32, processes=2, threads=16, timeout=3, retries=1, min_image_size=16,
                      max_bytes=200_000, max_pixels=40_000_000, samples_per_crawl_shard=100, max_side=300, max_aspect_ratio=5.0, allow_hosts=[s.allow])
    result = crawl(load_url_list(tmp_path / "urls.parquet"), tmp_path / "crawl", cfg)

    assert s.internal_hits == []  # no connection, no request: not directly, by name, by numeric trick or redirect
    assert result.attempted == len(rows) >= 390
    failures = pq.read_table(result.failures_path).to_pylist()
    assert result.succeeded + len(failures) == len(rows)  # exactly one outcome per URL
    got = {f["url"]: f["reason"] for f in failures}
    assert len(got) == len(failures)
    want = {u: e for u, e in expected.items() if e != "success"}
    wrong = {u: (got.get(u), e) for u, e in want.items() if got.get(u) != e}
    assert not wrong, wrong
    assert result.failures_by_reason == {r: sum(1 for e in want.values() if e == r) for r in set(want.values())}
    assert all(s.requests[f"/flaky/{i}"] == 2 for i in range(10))  # retried once, then a sample
    assert all(s.requests[f"/missing/{i}"] == 2 for i in range(10))  # --retries applies to every failure
    # an image cut short fails as a download, as a body cut short of its Content-Length does: same status, retried
    statuses = {r["url"]: r["status"] for part in finished_crawl_shards(tmp_path / "crawl")
                for r in pq.read_table(part, columns=["url", "status"]).to_pylist()}
    assert {statuses[u] for u, e in expected.items() if e == "truncated"} == {"failed_to_download"}
    assert all(s.requests[f"/cut-{fmt}/{i}"] == 2 for fmt in framed_images() for i in range(3))

    manifest = shard_crawl(result, tmp_path / "ds", ShardConfig(samples_per_shard=128), {"kind": "url-list"})
    assert manifest["samples"] == sum(n for n, e in EXPECTED.values() if e == "success")  # not the 'tall' ones
    assert manifest["failures_by_reason"] == result.failures_by_reason
    captions = pq.read_table(tmp_path / "ds" / "samples.parquet", columns=["caption"]).column("caption").to_pylist()
    assert sorted(captions) == sorted(r["caption"] for r in rows if r["expect"] == "success")


@pytest.mark.parametrize("entry", ["http://x", "host:99999"])
def test_bad_allow_host_is_a_config_error(entry: str) -> None:
    with pytest.raises(ValueError, match="--allow-host"):
        CrawlConfig(allow_hosts=[entry])


def test_a_mix_of_a_local_folder_and_a_url_list_crawls_both(fault_servers, tmp_path: Path) -> None:  # noqa: F811 (the imported fixture)
    from PIL import Image
    from vlforge.components.pipeline_config import SourceConfig
    from vlforge.components.stages import load_source_rows

    s = fault_servers
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        Image.new("RGB", (24, 24), (i * 50, 0, 0)).save(tmp_path / "imgs" / f"red_{i}.png")
    pq.write_table(pa.table({"url": [f"{s.base}/ok/{8000 + i}" for i in range(4)], "caption": ["remote"] * 4}),
                   tmp_path / "urls.parquet")
    cfg = SourceConfig(spec="mix", mix=[{"spec": str(tmp_path / "imgs")}, {"spec": str(tmp_path / "urls.parquet")}])
    rows = load_source_rows(cfg, "mix", "mix")
    result = crawl(rows, tmp_path / "crawl", CrawlConfig(image_size=16, processes=1, threads=4, allow_hosts=[s.allow]))
    assert result.succeeded == 8 and result.failures_by_reason == {}
    manifest = shard_crawl(result, tmp_path / "ds", ShardConfig(), {"kind": "mix"})
    urls = sorted(pq.read_table(tmp_path / "ds" / "samples.parquet").column("url").to_pylist())
    assert urls[:4] == [f"{s.base}/ok/{8000 + i}" for i in range(4)] and all(u.startswith("local:m0-") for u in urls[4:])
    assert manifest["samples"] == 8
