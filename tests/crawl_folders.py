"""An img2dataset-style crawl folder written directly (one finished shard: tar, parquet sidecar, stats), for tests
of the shard stage and of what reads its output, without running a crawl. Importable from any test."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from vlforge.components.data.crawl import CrawlResult


def write_crawl_folder(crawl_dir: Path, samples: list[tuple[bytes, str, dict]]) -> CrawlResult:
    """Shard ``00000`` of ``(png bytes, caption, json meta)`` samples, keys ``000000000``...; all succeeded."""
    crawl_dir.mkdir(parents=True)
    with tarfile.open(crawl_dir / "00000.tar", "w") as tar:
        for i, (image, caption, meta) in enumerate(samples):
            for ext, data in (("png", image), ("txt", caption.encode()), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    n = len(samples)
    pq.write_table(pa.table({"key": [f"{i:09d}" for i in range(n)], "status": ["success"] * n}), crawl_dir / "00000.parquet")
    (crawl_dir / "00000_stats.json").write_text("{}")
    return CrawlResult(output_dir=str(crawl_dir), attempted=n, succeeded=n, failures_by_reason={},
                       failures_path=str(crawl_dir / "absent.parquet"))
