"""Every stage on an existing two-node Ray cluster (loopback): the crawl runs as img2dataset's ray distributor
(with the fetch guard installed in each Ray worker: a non-allow-listed internal server sees no request), training
puts one Ray Train worker on each node and records both, and evaluation runs as a Ray task."""
import http.server
import io
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_harness import cli_json, run_cli
from PIL import Image
from ray_cluster import two_node_cluster

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(600)]


class _Server:
    """A loopback HTTP server of PNGs that counts the requests it gets."""

    def __init__(self) -> None:
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests += 1
                buf = io.BytesIO()
                shade = int(self.path.strip("/").split(".")[0] or 0) * 9 % 255
                Image.new("RGB", (40, 40), (shade, 80, 255 - shade)).save(buf, format="PNG")
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(buf.getvalue())))
                self.end_headers()
                self.wfile.write(buf.getvalue())

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def test_ingest_train_eval_on_a_two_node_cluster(tmp_path: Path) -> None:
    home = tmp_path / "home"
    images, internal = _Server(), _Server()
    try:
        urls = [f"http://127.0.0.1:{images.port}/{i}.png" for i in range(24)]
        urls += [f"http://127.0.0.1:{internal.port}/{i}.png" for i in range(6)]  # stands in for an internal service
        table = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": urls, "caption": [f"picture number {i}" for i in range(len(urls))]}), table)
        with two_node_cluster() as cluster:
            ray = ["--ray-address", cluster.address]
            got = cli_json(["run", "ingest", "--source", str(table), "--name", "web",
                            "--allow-host", f"127.0.0.1:{images.port}", *ray], home)
            assert got["samples"] == 24 and got["failures"] == {"blocked_by_policy": 6}, got
            assert internal.requests == 0  # the guard ran inside the Ray workers too

            shapes = cli_json(["run", "ingest", "--source", "builtin:shapes?n=96&image_size=32", "--name", "shapes",
                               "--set", "crawl.image_size=32", *ray], home)
            model = cli_json(["run", "train", "--family", "clip", "--data", "shapes", "--steps", "4",
                              "--set", "num_workers=2", "--set", "batch_size=16", "--set", "image_size=32",
                              "--set", "checkpoint_every=4", *ray], home)["model"]
            shown = cli_json(["catalog", "show", model], home)
            assert shown["metrics"]["worker_nodes"] == "127.0.0.2,127.0.0.3", shown["metrics"]
            report = cli_json(["run", "eval", "--model", model, "--data", shapes["dataset"], "--task", "retrieval", *ray],
                              home)
            assert 0.0 <= report["metrics"]["i2t_r1"] <= 1.0
        assert cluster.stop_result.returncode == 0 and not cluster.left
    finally:
        images.close()
        internal.close()
    # an unreachable cluster is a one-line error before anything starts
    bad = run_cli(["run", "eval", "--model", model, "--data", "shapes", "--ray-address", f"127.0.0.2:{cluster.port}"], home)
    assert bad.returncode == 2 and "is unreachable" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
