"""A real S3-compatible server for tests: moto's server in a subprocess on 127.0.0.1 (a free port), and how to
point s3fs, boto3 and vlforge's settings at it. Importable from any test (``pythonpath = ["tests"]``)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

ACCESS_KEY = "vlforge-test"
SECRET_KEY = "vlforge-test-secret"
REGION = "us-east-1"


@dataclass(frozen=True)
class MotoS3:
    endpoint: str
    """``http://127.0.0.1:PORT``"""

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """s3fs options (what :class:`vlforge.catalog.Catalog` takes as ``storage_options``)."""
        return {"endpoint_url": self.endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY,
                "client_kwargs": {"region_name": REGION}, **extra}

    def env(self) -> dict[str, str]:
        """The environment that points vlforge's settings (catalog remote and Ray storage) at this server."""
        return {"VLFORGE_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
                "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"]))}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_s3_server(timeout: float = 60.0) -> Iterator[MotoS3]:
    """Start ``python -m moto.server`` on a free loopback port, wait until it answers, stop it on exit."""
    last_error = ""
    for _attempt in range(3):  # another process may take the port between picking and binding it
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                    break
            except OSError as exc:
                last_error = str(exc)
                time.sleep(0.2)
        if proc.poll() is None and time.monotonic() < deadline:
            try:
                yield MotoS3(endpoint=f"http://127.0.0.1:{port}")
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            return
        proc.kill()
        proc.wait()
    raise RuntimeError(f"moto's S3 server did not start: {last_error}")
