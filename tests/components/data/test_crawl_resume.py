"""SIGKILL a crawl mid-shard, run it again on the same folder: every good sample exactly once, finished shards are
not downloaded again, and the dataset is byte-identical to an uninterrupted crawl's."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fault_server import fault_servers  # noqa: F401 (a fixture)
from vlforge.components.data.crawl import CrawlConfig, crawl
from vlforge.components.data.shard import ShardConfig, shard_crawl
from vlforge.components.sources.tables import load_url_list

CRAWL_SCRIPT = """
import sys
from pathlib import Path
from vlforge.components.data.crawl import CrawlConfig, crawl
from vlforge.components.sources.tables import load_url_list
crawl(load_url_list(Path(sys.argv[1])), Path(sys.argv[2]), CrawlConfig.model_validate_json(sys.argv[3]))
"""


@pytest.mark.slow  # three img2dataset crawls and a SIGKILL: about a minute on a busy 2-core machine
def test_killed_crawl_resumes_to_the_uninterrupted_result(fault_servers, tmp_path: Path) -> None:  # noqa: F811 (the imported fixture)
    s = fault_servers
    s.gate.clear()
    # shards 0-2 (rows 0-59) answer at once; shards 3-5 hang on the gate, so the kill lands mid-shard 3
    rows = [{"url": f"{s.base}/ok/{5000 + i}", "caption": f"fast {i}"} for i in range(60)]
    rows += [{"url": f"{s.base}/gated/{i}", "caption": f"gated {i}"} for i in range(60)]
    rows += [{"url": f"{s.base}/missing/{9000 + i}", "caption": f"dead {i}"} for i in (0, 1)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    cfg = CrawlConfig(image_size=16, processes=1, threads=4, timeout=30, samples_per_crawl_shard=20, allow_hosts=[s.allow])
    work = tmp_path / "crawl"

    proc = subprocess.Popen([sys.executable, "-c", CRAWL_SCRIPT, str(tmp_path / "urls.parquet"), str(work),
                             cfg.model_dump_json()], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(work.glob("*_stats.json"))) < 3 or not any(s.requests[f"/gated/{i}"] for i in range(60)):
            assert proc.poll() is None and time.monotonic() < deadline, "the crawl ended or stalled before the kill"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the crawl, img2dataset's child and its workers
        proc.wait()
    assert sorted(p.name for p in work.glob("*_stats.json")) == ["00000_stats.json", "00001_stats.json", "00002_stats.json"]
    assert (work / "00003.tar").exists()  # a half-written shard, which the resume must redo, not trust

    s.gate.set()
    resumed = crawl(load_url_list(tmp_path / "urls.parquet"), work, cfg)
    assert all(s.requests[f"/ok/{5000 + i}"] == 1 for i in range(60))  # finished shards were not fetched again
    fresh = crawl(load_url_list(tmp_path / "urls.parquet"), tmp_path / "fresh", cfg)

    assert resumed.succeeded == fresh.succeeded == 120
    assert resumed.failures_by_reason == fresh.failures_by_reason == {"not_found": 2}
    shard_cfg = ShardConfig(samples_per_shard=32)
    a = shard_crawl(resumed, tmp_path / "ds-resumed", shard_cfg, {"kind": "url-list"})
    b = shard_crawl(fresh, tmp_path / "ds-fresh", shard_cfg, {"kind": "url-list"})
    keys = pq.read_table(tmp_path / "ds-resumed" / "samples.parquet").column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 120 and a["failures_by_reason"] == {"not_found": 2}
    assert [x["sha256"] for x in a["shards"]] == [x["sha256"] for x in b["shards"]]  # same bytes, same dataset id
