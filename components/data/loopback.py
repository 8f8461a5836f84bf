"""A loopback HTTP server that serves a fixed set of local files by name.

The ingest stage starts one for the builtin source and for tables of local image paths, so every source goes
through the same img2dataset crawl as a public URL list. Only the names it was given are served (no directory
listing, no path traversal); it binds to 127.0.0.1 on a free port and stops when the context exits."""
from __future__ import annotations

import mimetypes
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote


class _FileTableServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # the stock listen backlog (5) overflows under img2dataset's processes x threads (2 x 16 by default): the kernel
    # drops the extra connection attempts and each one stalls ~1 s for a SYN retransmit (26 of 400 requests, measured)
    request_queue_size = 1024

    def __init__(self, files: Mapping[str, Path]) -> None:
        super().__init__(("127.0.0.1", 0), _FileTableHandler)
        self.files = dict(files)


class _FileTableHandler(BaseHTTPRequestHandler):
    server: _FileTableServer

    def do_GET(self) -> None:
        name = unquote(self.path.lstrip("/").split("?", 1)[0])
        path = self.server.files.get(name)
        if path is None:
            self.send_error(404, "not served")
            return
        try:
            body = path.read_bytes()
        except OSError:
            self.send_error(404, "unreadable")
            return
        self.send_response(200)
        self.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # silence per-request logging
        return


@contextmanager
def serve_files(files: Mapping[str, Path]) -> Iterator[str]:
    """Serve ``files`` (URL name -> local path) on 127.0.0.1; yields the base URL ending in '/'."""
    server = _FileTableServer(files)
    thread = threading.Thread(target=server.serve_forever, name="vlforge-loopback", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def url_for(base_url: str, name: str) -> str:
    return base_url + quote(name)
