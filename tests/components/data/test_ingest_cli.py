"""`vlforge run ingest` end to end (Prefect + img2dataset) on a faulty URL list: the JSON contract, the limit
options, the card in the artifact, a cache hit on repeat; and bad options as one-line errors with exit 2."""
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_harness import cli_json, run_cli
from fault_server import fault_servers  # noqa: F401 (a fixture)
from vlforge.catalog import Catalog

def vlforge(args: list[str], home: Path, embedded: bool = False) -> subprocess.CompletedProcess:
    return run_cli(args, home, 600, embedded)


@pytest.mark.slow
def test_ingest_json_reports_samples_and_failures_by_reason(fault_servers, tmp_path: Path) -> None:  # noqa: F811 (the imported fixture)
    s = fault_servers
    rows = [{"url": f"{s.base}/ok/{7000 + i}", "caption": f"picture {i}"} for i in range(24)]
    rows += [{"url": f"{s.base}/missing/{7000 + i}", "caption": "gone"} for i in range(3)]
    rows += [{"url": f"{s.base}/to-internal/{7000 + i}", "caption": "sneaky"} for i in range(2)]
    rows += [{"url": f"{s.base}/small/{7000 + i}", "caption": "tiny"} for i in range(2)]
    rows += [{"url": f"{s.base}/bigbody/7000", "caption": "heavy"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    home = tmp_path / "home"
    args = ["run", "ingest", "--source", str(tmp_path / "urls.parquet"), "--name", "faulty", "--allow-host", s.allow,
            "--timeout", "5", "--retries", "0", "--max-bytes", "200000", "--min-side", "16",
            "--set", "crawl.image_size=32", "--set", "crawl.processes=1", "--json"]
    proc = vlforge(args, home, embedded=True)  # the embedded server: its store is read below
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["samples"] == 24 and out["cached"] == {"dataset": False}
    assert out["failures"] == {"blocked_by_policy": 2, "not_found": 3, "too_large": 1, "too_small": 2}
    assert s.internal_hits == []
    catalog = Catalog(home / "catalog")
    files = {f.path for f in catalog.get(out["dataset"]).files}
    assert {"README.md", "card_grid.png", "card_captions.png", "card_image_sizes.png", "failures.parquet"} <= files
    assert "| blocked_by_policy | 2 |" in (catalog.path(out["dataset"]) / "README.md").read_text()

    again = json.loads(vlforge(args, home, embedded=True).stdout)
    assert again == out | {"cached": {"dataset": True}}
    with sqlite3.connect(home / "prefect" / "prefect.db") as db:  # the embedded Prefect server's own store
        cards = db.execute("SELECT key, type, data FROM artifact WHERE key = 'dataset-card-faulty'").fetchall()
    assert len(cards) == 2 and {c[1] for c in cards} == {"markdown"}  # one per run, under one stable key
    assert all("| blocked_by_policy | 2 |" in c[2] for c in cards)


@pytest.mark.parametrize(("extra", "message"), [
    (["--allow-host", "http://bad/"], "--allow-host 'http://bad/' is not HOST or HOST:PORT"),
    (["--timeout", "0"], "field 'crawl.timeout'"),
    (["--max-bytes", "-1"], "field 'crawl.max_bytes'"),
])
def test_bad_crawl_options_are_one_line_errors(extra: list[str], message: str, tmp_path: Path) -> None:
    proc = vlforge(["run", "ingest", "--source", "builtin:shapes?n=10", *extra, "--json"], tmp_path / "home")
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "home" / "catalog").exists() or not Catalog(tmp_path / "home" / "catalog").list()


def test_ingest_mixes_sources_by_weight(tmp_path: Path) -> None:
    from PIL import Image

    for folder, colour, n in (("reds", (200, 0, 0), 12), ("blues", (0, 0, 200), 12)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            Image.new("RGB", (40, 40), colour).save(tmp_path / folder / f"{folder}-{i}.png")
            (tmp_path / folder / f"{folder}-{i}.txt").write_text(f"a {folder[:-1]} square number {i}")
    got = cli_json(["run", "ingest", "--source", "mix", "--mix", f"{tmp_path / 'reds'}=3", "--mix",
                    f"{tmp_path / 'blues'}=1", "--name", "mixed", "--set", "crawl.image_size=32"], tmp_path / "home")
    assert got["samples"] == 16  # all 12 of the weight-3 part, and 4 of the other
    bad = run_cli(["run", "ingest", "--source", "mix", "--mix", f"{tmp_path / 'reds'}=-1"], tmp_path / "home")
    assert bad.returncode == 2 and "is not SOURCE=WEIGHT with a positive weight" in bad.stderr
