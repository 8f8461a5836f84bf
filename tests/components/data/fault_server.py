"""A loopback fault-injecting image server and an 'internal service' that must never be reached.

A test helper the crawl tests import .

Paths on the fault server (``<kind>/<i>``): ok (a 48x48 PNG), flaky (500 on the first request, then ok), missing
(404), error (500), slow (answers after 8 s), truncated (a JPEG cut short of its Content-Length), whole-<fmt> and
cut-<fmt> for each format of ``framed_images`` (the image; the image cut short by ``cut_short``, with a Content-Length
that matches the cut body, so the transfer completes), cut-png-chunked (the cut PNG, chunked), html, huge (a
50-megapixel PNG of one colour: a few hundred kB on the wire), bigbody (an image body over the test's max_bytes),
small (8x8), tall (100x400), wide (200x20), noai (ok but ``X-Robots-Tag: noai``), loop (redirects to itself), to-internal (redirects to the
internal server), gated (ok once the test sets ``Servers.gate``: lets the resume test hold a crawl mid-shard),
stall-once (answers after 3 s on the first request, then ok at once), busy-once (429 on the first request, then ok)."""
from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image


def png(size: tuple[int, int], color: tuple[int, int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(buf, "PNG")
    return buf.getvalue()


def noise(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def _encode(frames: list[Image.Image], fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    if len(frames) > 1:
        kw.update(save_all=True, append_images=frames[1:])
    frames[0].save(buf, fmt, **kw)
    return buf.getvalue()


def framed_images(seed: int = 0) -> dict[str, bytes]:
    """Small noisy images (64x64, so the compressed data is not trivial) in each format whose framing the guard
    checks, multi-image ones included: APNG, multi-page TIFF and MPO are the cuts cv2 decodes (their first image)."""
    frames = [noise(seed + k) for k in range(3)]
    return {
        "png": _encode(frames[:1], "PNG"),
        "apng": _encode(frames, "PNG", duration=50),
        "gif": _encode([f.quantize(64) for f in frames], "GIF", duration=50, loop=0),
        "webp": _encode(frames[:1], "WEBP", quality=80),
        "tiff": _encode(frames, "TIFF"),
        "bmp": _encode(frames[:1], "BMP"),
        "mpo": _encode(frames[:2], "MPO"),
        "jpeg": _encode(frames[:1], "JPEG", quality=90),
    }


def cut_short(fmt: str, body: bytes) -> bytes:
    """``body`` cut short the way a broken origin serves it: multi-image formats inside their last image, a JPEG
    just before its EOI marker, a GIF just before its trailer, the others part-way through their data."""
    if fmt == "jpeg":
        return body[:-2]
    if fmt == "gif":
        return body[:-1]
    keep = {"apng": 0.9, "tiff": 0.9, "mpo": 0.9, "png": 0.6, "webp": 0.6, "bmp": 0.6}[fmt]
    return body[: int(len(body) * keep)]


def jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@dataclass
class Servers:
    base: str  # the fault server, http://127.0.0.1:PORT
    allow: str  # its allow-list entry, 127.0.0.1:PORT
    internal: str  # the internal service's base URL
    internal_hits: list = field(default_factory=list)  # accepted connections and requests on the internal server
    requests: Counter = field(default_factory=Counter)
    gate: threading.Event = field(default_factory=threading.Event)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type, hits: list | None = None) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.hits = hits

    def verify_request(self, request: object, client_address: tuple) -> bool:
        if self.hits is not None:
            self.hits.append(("connect", client_address))
        return True


@pytest.fixture(scope="session")
def fault_servers() -> Iterator[Servers]:
    huge = png((7072, 7072), (200, 10, 10), mode="L")  # 50.0 MP, compresses to ~50 kB
    big_body = png((40, 40), (1, 2, 3)) + b"\0" * 300_000  # a valid PNG followed by padding: 300 kB on the wire
    small = png((8, 8), (9, 9, 9))
    tall, wide = png((100, 400), (9, 90, 9)), png((200, 20), (90, 9, 9))
    images = framed_images()
    whole = {f"whole-{fmt}": body for fmt, body in images.items()}
    cut = {f"cut-{fmt}": cut_short(fmt, body) for fmt, body in images.items()}
    state = Servers(base="", allow="", internal="")
    lock = threading.Lock()

    class Internal(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.internal_hits.append(("request", self.path))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            body = png((40, 40), (0, 0, 0))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    class Faults(BaseHTTPRequestHandler):
        def reply(self, code: int, body: bytes, ctype: str = "image/png", length: int | None = None, **headers: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            self.end_headers()
            self.wfile.write(body)

        def chunked(self, body: bytes, ctype: str) -> None:
            """``body`` in 1000-byte chunks and a proper last chunk: the transfer completes."""
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for at in range(0, len(body), 1000):
                part = body[at:at + 1000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True

        def do_GET(self) -> None:
            kind, _, arg = self.path.strip("/").partition("/")
            i = int(arg.split("?")[0] or 0) if arg.split("?")[0].isdigit() else 0
            with lock:
                state.requests[self.path] += 1
                seen = state.requests[self.path]
            if kind in ("stall-once", "busy-once") and seen == 1:  # transient on the first request only
                if kind == "busy-once":
                    self.reply(429, b"slow down", "text/plain", Retry_After="1")
                    return
                time.sleep(3)
                try:
                    self.reply(200, png((48, 48), (i % 251, 1, 2)))
                except OSError:  # the crawler gave up waiting and closed the connection
                    pass
            elif kind in ("ok", "gated") or (kind in ("flaky", "stall-once", "busy-once") and seen > 1):
                if kind == "gated" and not state.gate.wait(60):
                    return
                self.reply(200, png((48, 48), (i % 251, (i * 7) % 253, (i * 13) % 255)))
            elif kind in ("error", "flaky"):
                self.reply(500, b"boom", "text/plain")
            elif kind == "slow":
                time.sleep(8)
                self.reply(200, png((48, 48), (5, 5, 5)))
            elif kind == "truncated":
                body = jpeg(i)
                self.reply(200, body[: len(body) // 2], "image/jpeg", length=len(body))
                self.close_connection = True
            elif kind in whole:
                self.reply(200, whole[kind], "image/" + kind.split("-", 1)[1])
            elif kind in cut:  # Content-Length is the cut body's: no IncompleteRead
                self.reply(200, cut[kind], "image/" + kind.split("-", 1)[1])
            elif kind == "cut-png-chunked":
                self.chunked(cut["cut-png"], "image/png")
            elif kind == "html":
                self.reply(200, b"<html><body>not an image</body></html>", "text/html")
            elif kind == "huge":
                self.reply(200, huge)
            elif kind == "bigbody":
                self.reply(200, big_body)
            elif kind == "small":
                self.reply(200, small)
            elif kind == "tall":
                self.reply(200, tall)
            elif kind == "wide":
                self.reply(200, wide)
            elif kind == "noai":
                self.reply(200, png((48, 48), (3, 2, 1)), X_Robots_Tag="noai")
            elif kind == "loop":
                self.reply(302, b"", "text/plain", Location=self.path)
            elif kind == "to-internal":
                self.reply(302, b"", "text/plain", Location=f"{state.internal}/secret/{i}")
            else:
                self.reply(404, b"missing", "text/plain")

        def log_message(self, *a: object) -> None:
            pass

    internal = _Server(Internal, state.internal_hits)
    faults = _Server(Faults)
    for srv in (internal, faults):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    state.base = f"http://127.0.0.1:{faults.server_address[1]}"
    state.allow = f"127.0.0.1:{faults.server_address[1]}"
    state.internal = f"http://127.0.0.1:{internal.server_address[1]}"
    yield state
    for srv in (internal, faults):
        srv.shutdown()
        srv.server_close()
