"""The crawl guard's decisions, judged without sending traffic to any non-loopback address.

Only name resolution of numeric literals happens here (no packets); the loopback tests use servers started here."""
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from vlforge.components.data.crawl import failure_reason
from vlforge.components.data.guard import (
    BlockedByPolicy,
    FetchPolicy,
    address_block_reason,
    check_url,
    guarded_opener,
    parse_allow_host,
)

from vlforge.errors import UserError

REFUSED = [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("10.1.2.3", "private"), ("172.16.0.1", "private"),
    ("192.168.1.1", "private"), ("169.254.169.254", "metadata"), ("169.254.1.1", "link-local"),
    ("100.100.100.200", "metadata"), ("100.64.0.1", "non-public"), ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"), ("240.0.0.1", "reserved"), ("::1", "loopback"), ("fe80::1", "link-local"),
    ("fc00::1", "private"), ("fd00:ec2::254", "metadata"), ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "metadata"), ("64:ff9b::a9fe:a9fe", "metadata"), ("2002:7f00:1::", "6to4"),
    ("fe80::1%eth0", "link-local"), ("::", "unspecified"),
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    reason = address_block_reason(address)
    assert reason is not None and why in reason, (address, reason)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert address_block_reason(address) is None


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost/", "http://2130706433/", "http://0177.0.0.1/", "http://0x7f.0.0.1/",
    "http://0x7f000001/", "http://127.1/", "http://[::1]/", "http://[::ffff:7f00:1]/", "http://169.254.169.254/latest/",
    "http://2852039166/", "http://0251.0376.0251.0376/", "http://[0:0:0:0:0:ffff:a9fe:a9fe]/", "http://10.0.0.1:8080/x",
])
def test_urls_reaching_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(BlockedByPolicy, match="blocked by policy"):
        check_url(url, FetchPolicy())


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1:25/", "data:,hi",
                                 "jar:http://x/y", "//no-scheme/x", "http:///no-host"])
def test_other_schemes_and_hostless_urls_are_refused(url: str) -> None:
    with pytest.raises(BlockedByPolicy):
        check_url(url, FetchPolicy())


def test_allow_list_is_per_host_and_port() -> None:
    policy = FetchPolicy(allow_hosts=(parse_allow_host("127.0.0.1:8080"), parse_allow_host("Intranet.Local")))
    check_url("http://127.0.0.1:8080/a", policy)
    with pytest.raises(BlockedByPolicy):
        check_url("http://127.0.0.1:8081/a", policy)  # the same host on another port is still internal
    with pytest.raises(BlockedByPolicy):
        check_url("http://2130706433:8080/a", policy)  # the allow-list names hosts, it does not whitelist addresses
    assert policy.allows("intranet.local", 443) and policy.allows("INTRANET.local.", None)


@pytest.mark.parametrize(("entry", "normal"), [("example.com", "example.com"), ("Example.COM:8080", "example.com:8080"),
                                               ("[::1]:81", "::1:81"), ("::1", "::1"), ("127.0.0.1:9", "127.0.0.1:9")])
def test_parse_allow_host(entry: str, normal: str) -> None:
    assert parse_allow_host(entry) == normal


@pytest.mark.parametrize("entry", ["", "http://x/", "host:0", "host:99999", "host:port", "user@host", "[::1]x"])
def test_parse_allow_host_rejects_malformed(entry: str) -> None:
    with pytest.raises(UserError, match="--allow-host"):
        parse_allow_host(entry)


class _Counting(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.connections = 0

    def verify_request(self, request: socket.socket, client_address: tuple) -> bool:
        self.connections += 1  # counts accepted TCP connections, before any request line is read
        return True


def test_opener_checks_every_redirect_hop_and_never_connects_to_the_internal_server() -> None:
    class Internal(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"secret")

        def log_message(self, *a: object) -> None:
            pass

    internal = _Counting(Internal)
    target = f"http://127.0.0.1:{internal.server_address[1]}/secret"

    class Public(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            location = {"/to-internal": target, "/to-file": "file:///etc/passwd", "/ok": None}[self.path]
            self.send_response(302 if location else 200)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a: object) -> None:
            pass

    public = _Counting(Public)
    for srv in (internal, public):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{public.server_address[1]}"
    try:
        opener = guarded_opener(FetchPolicy(allow_hosts=(f"127.0.0.1:{public.server_address[1]}",)))
        assert opener.open(base + "/ok", timeout=5).read() == b"ok"
        with pytest.raises(urllib.error.URLError, match="blocked by policy"):
            opener.open(base + "/to-internal", timeout=5)
        with pytest.raises(urllib.error.URLError) as refused:  # urllib itself refuses a redirect to file://
            opener.open(base + "/to-file", timeout=5)
        assert failure_reason(str(refused.value)) == "blocked_by_policy"
        with pytest.raises(urllib.error.URLError, match="blocked by policy"):
            opener.open(target, timeout=5)
        assert internal.connections == 0
        assert public.connections == 3
        # an opener without the guard would have followed the redirect: the test server is really reachable
        assert urllib.request.build_opener().open(base + "/to-internal", timeout=5).read() == b"secret"
    finally:
        internal.shutdown()
        public.shutdown()


def test_body_limit() -> None:
    class Big(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            if self.path == "/declared":
                self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b"x" * 5000)

        def log_message(self, *a: object) -> None:
            pass

    srv = _Counting(Big)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        opener = guarded_opener(FetchPolicy(allow_hosts=(f"127.0.0.1:{srv.server_address[1]}",), max_bytes=1000))
        with pytest.raises(urllib.error.URLError, match="exceeds max_bytes"):
            opener.open(base + "/declared", timeout=5)
        with pytest.raises(urllib.error.URLError, match="exceeds max_bytes"):
            opener.open(base + "/streamed", timeout=5).read()
        roomy = guarded_opener(FetchPolicy(allow_hosts=(f"127.0.0.1:{srv.server_address[1]}",), max_bytes=10_000))
        assert len(roomy.open(base + "/streamed", timeout=5).read()) == 5000
    finally:
        srv.shutdown()
