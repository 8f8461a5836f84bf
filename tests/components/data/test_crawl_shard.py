"""Crawl with the real img2dataset against loopback servers, then shard; checks outcomes, not calls."""
import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from vlforge.components.data.crawl import CrawlConfig, crawl, failure_reason
from vlforge.components.data.shard import ShardConfig, shard_crawl, split_of
from vlforge.components.sources.tables import load_local_table, load_url_list


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buf, "PNG")
    return buf.getvalue()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/img/"):
            body = png((int(self.path.split("/")[-1]) * 7 % 255, 30, 60))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
        elif self.path.startswith("/html"):
            body = b"<html>not an image</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
        elif self.path.startswith("/noai"):
            body = png((1, 2, 3))
            self.send_response(200)
            self.send_header("X-Robots-Tag", "noai")
        else:
            body = b"missing"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_crawl_url_list_then_shard(server: str, tmp_path: Path) -> None:
    rows = [{"url": f"{server}/img/{i}", "caption": f"image number {i}"} for i in range(40)]
    rows += [{"url": f"{server}/gone/{i}", "caption": "dead"} for i in range(3)]
    rows += [{"url": f"{server}/html", "caption": "html"}, {"url": f"{server}/noai", "caption": "opted out"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    source = load_url_list(tmp_path / "urls.parquet")
    allow = server.split("://", 1)[1]  # a loopback test server: only reachable because it is allow-listed
    result = crawl(source, tmp_path / "crawl", CrawlConfig(image_size=32, processes=1, threads=4, allow_hosts=[allow]))
    assert result.attempted == 45 and result.succeeded == 40
    assert result.failures_by_reason.get("not_found") == 3
    assert sum(result.failures_by_reason.values()) == 5

    cfg = ShardConfig(samples_per_shard=16, validation_fraction=0.25)
    manifest = shard_crawl(result, tmp_path / "ds", cfg, {"kind": "url-list"})
    assert manifest["samples"] == 40
    assert manifest["splits"]["train"]["samples"] + manifest["splits"]["validation"]["samples"] == 40
    assert 2 <= manifest["splits"]["validation"]["samples"] <= 20
    for shard in manifest["shards"]:  # the manifest's hashes and counts are the files'
        data = (tmp_path / "ds" / shard["shard"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        assert sum(1 for _ in wds.WebDataset(str(tmp_path / "ds" / shard["shard"]), shardshuffle=False)) == shard["samples"]
    samples = list(wds.WebDataset([str(tmp_path / "ds" / s["shard"]) for s in manifest["shards"]], shardshuffle=False).decode("pil"))
    assert {s["txt"] for s in samples} == {f"image number {i}" for i in range(40)}
    assert all(s["jpg"].size == (32, 32) for s in samples)
    index = pq.read_table(tmp_path / "ds" / "samples.parquet").to_pylist()
    assert all(split_of(r["key"], cfg) == r["split"] for r in index)  # each sample is in the split its key says
    assert all(r["shard"].startswith(r["split"] + "-") for r in index)
    failures = pq.read_table(tmp_path / "ds" / "failures.parquet").to_pylist()
    reasons = sorted(f["reason"] for f in failures)
    assert reasons.count("not_found") == 3 and "opted_out" in reasons and "not_an_image" in reasons, reasons

    # re-sharding the same crawl gives byte-identical shards (reproducible dataset ids)
    again = shard_crawl(result, tmp_path / "ds2", cfg, {"kind": "url-list"})
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]


def test_local_table_urls_are_recorded_without_the_port(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for i in range(6):
        (tmp_path / "img" / f"{i}.png").write_bytes(png((i * 40, 0, 0)))
    pq.write_table(pa.Table.from_pylist([{"path": f"img/{i}.png", "caption": f"red {i}"} for i in range(6)]), tmp_path / "t.parquet")
    result = crawl(load_local_table(tmp_path / "t.parquet"), tmp_path / "crawl", CrawlConfig(image_size=16, processes=1, threads=2))
    assert result.succeeded == 6
    manifest = shard_crawl(result, tmp_path / "ds", ShardConfig(), {"kind": "local"})
    urls = pq.read_table(tmp_path / "ds" / "samples.parquet").column("url").to_pylist()
    assert sorted(urls) == [f"local:{i:08d}.png" for i in range(6)]
    assert manifest["samples"] == 6


def test_failure_reasons() -> None:
    assert failure_reason("HTTP Error 404: Not Found") == "not_found"
    assert failure_reason("The read operation timed out") == "timeout"
    assert failure_reason("HTTP Error 503: Service Unavailable") == "server_error"
    assert failure_reason("something odd") == "other"


def test_crawl_shards_are_sharded_while_the_crawl_goes_on(server: str, tmp_path: Path) -> None:
    from vlforge.components.data.shard import CrawlSharder

    rows = [{"url": f"{server}/img/{i}", "caption": f"image number {i}"} for i in range(40)]
    rows += [{"url": f"{server}/gone/{i}", "caption": "dead"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    cfg = ShardConfig(samples_per_shard=16, validation_fraction=0.25)
    sharder = CrawlSharder(tmp_path / "ds", cfg)
    handed: list[str] = []

    def on_shard_done(tar: Path, served_from: str | None, rejected: set[str]) -> None:
        assert tar.is_file() and (tar.parent / f"{tar.stem}_stats.json").is_file()  # finished when handed over
        handed.append(tar.stem)
        sharder.add(tar, served_from, rejected)

    crawl_cfg = CrawlConfig(image_size=32, processes=1, threads=4, samples_per_crawl_shard=10,
                            allow_hosts=[server.split("://", 1)[1]])
    result = crawl(load_url_list(tmp_path / "urls.parquet"), tmp_path / "crawl", crawl_cfg, on_shard_done=on_shard_done)
    assert handed == sorted(handed) and len(handed) == 5  # 45 rows, 10 per crawl shard, each handed once, in order
    manifest = sharder.finish(result, {"kind": "url-list"})
    after = shard_crawl(result, tmp_path / "ds-after", cfg, {"kind": "url-list"})  # everything after the crawl
    assert manifest == after and manifest["samples"] == 40
    assert (tmp_path / "ds" / "samples.parquet").read_bytes() == (tmp_path / "ds-after" / "samples.parquet").read_bytes()
    with pytest.raises(ValueError, match="name order"):
        sharder.add(tmp_path / "crawl" / f"{handed[0]}.tar", None, set())


def test_a_failing_shard_callback_stops_the_crawl(server: str, tmp_path: Path) -> None:
    rows = [{"url": f"{server}/img/{i}", "caption": f"image number {i}"} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")

    def on_shard_done(tar: Path, served_from: str | None, rejected: set[str]) -> None:
        raise OSError(28, "No space left on device")

    crawl_cfg = CrawlConfig(image_size=32, processes=1, threads=2, samples_per_crawl_shard=10,
                            allow_hosts=[server.split("://", 1)[1]])
    with pytest.raises(OSError, match="No space left"):
        crawl(load_url_list(tmp_path / "urls.parquet"), tmp_path / "crawl", crawl_cfg, on_shard_done=on_shard_done)
