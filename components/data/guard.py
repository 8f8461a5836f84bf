"""The crawl's safety guard: which URLs and addresses the crawler may fetch, enforced inside img2dataset's workers.

A URL list is untrusted input. Without a guard it could make the crawler read local files (``file://``), cloud
metadata (169.254.169.254) or internal services — directly, through a redirect from a public host, or through a
hostname that resolves to a private address (now or later: DNS rebinding). img2dataset 1.47 fetches with
``urllib.request.urlopen`` in worker processes and takes no fetch hook, so a pre-check of the URL list cannot see
redirects. Instead ``img2dataset_child`` installs :func:`guarded_opener` as urllib's global opener in every
worker (spawned workers re-import that module), and the opener:

* has no ``file``/``ftp``/``data`` handlers and refuses any scheme but http(s) on *every* request, including each
  redirect hop (urllib re-enters ``OpenerDirector.open`` per hop, so :class:`_SchemeGuard` sees them all);
* resolves the host itself, refuses when any resolved address is not public, connects to a vetted address and
  checks the connected socket's peer address before a byte of the request is sent;
* ignores proxy environment variables (a proxy would hide the real destination);
* caps the body at ``max_bytes`` (Content-Length up front, the stream while reading).

Hosts the user allow-lists (``--allow-host HOST[:PORT]``) and the loopback server the ingest stage starts for
local and builtin sources skip the address check. Refusals carry the phrase ``blocked by policy`` (the crawl maps
it to the ``blocked_by_policy`` outcome); an oversized body says ``exceeds max_bytes`` (``too_large``)."""
from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from vlforge.errors import UserError

POLICY_ENV = "VLFORGE_FETCH_POLICY"
ALLOWED_SCHEMES = ("http", "https")
# Well-known metadata endpoints, refused with their own reason (most are also link-local or private).
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6
}
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedByPolicy(OSError):
    """A fetch the guard refused. An OSError so urllib wraps it as a URLError, which img2dataset records."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"blocked by policy: {what}: {why}")


@dataclass(frozen=True)
class FetchPolicy:
    """What the crawler may fetch. ``allow_hosts`` entries are ``host`` or ``host:port`` (lower-case)."""

    allow_hosts: tuple[str, ...] = ()
    max_bytes: int | None = None
    max_redirects: int = 10

    def allows(self, host: str, port: int | None) -> bool:
        host = _bare_host(host)
        return host in self.allow_hosts or (port is not None and f"{host}:{port}" in self.allow_hosts)

    def to_env(self) -> str:
        return json.dumps({**asdict(self), "allow_hosts": list(self.allow_hosts)})

    @classmethod
    def from_env(cls, text: str) -> FetchPolicy:
        data = json.loads(text)
        return cls(allow_hosts=tuple(data.get("allow_hosts", ())), max_bytes=data.get("max_bytes"),
                   max_redirects=int(data.get("max_redirects", 10)))


def _bare_host(host: str) -> str:
    return host.strip().lower().strip("[]").rstrip(".")


def parse_allow_host(entry: str) -> str:
    """Normalise a ``--allow-host`` entry (``HOST``, ``HOST:PORT``, ``[V6]:PORT``); UserError if malformed."""
    text = entry.strip().lower()
    if not text or "/" in text or "@" in text or " " in text:
        raise UserError(f"--allow-host '{entry}' is not HOST or HOST:PORT")
    if text.startswith("["):  # [v6] or [v6]:port
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            raise UserError(f"--allow-host '{entry}' is not HOST or HOST:PORT")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None  # a bare name, IPv4 or IPv6 address
    if not host:
        raise UserError(f"--allow-host '{entry}' has no host")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"--allow-host '{entry}' has an invalid port '{port}'")
        return f"{_bare_host(host)}:{int(port)}"
    return _bare_host(host)


def address_block_reason(address: str) -> str | None:
    """Why the crawler must not connect to ``address`` (an IP literal), or None when it is a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1 reaches 127.0.0.1
            return address_block_reason(str(ip.ipv4_mapped))
        if ip in NAT64:  # 64:ff9b::a9fe:a9fe reaches 169.254.169.254 through a NAT64 gateway
            return address_block_reason(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
        if ip.sixtofour is not None and address_block_reason(str(ip.sixtofour)):
            return "6to4 address of a non-public IPv4 address"
    if ip in METADATA_ADDRESSES:
        return "cloud metadata address"
    for attr, reason in (("is_loopback", "loopback address"), ("is_link_local", "link-local address"),
                         ("is_unspecified", "unspecified address"), ("is_multicast", "multicast address"),
                         ("is_reserved", "reserved address"), ("is_private", "private address")):
        if getattr(ip, attr):
            return reason
    if not ip.is_global:  # shared address space (100.64/10), documentation ranges, ...
        return "non-public address"
    return None


def check_url_scheme(url: str) -> tuple[str, int | None]:
    """Refuse non-http(s) URLs and URLs without a host; returns (host, port)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise BlockedByPolicy(url[:200], f"scheme '{scheme or '(none)'}' is not http or https")
    try:
        port = parts.port
    except ValueError:
        raise BlockedByPolicy(url[:200], "invalid port") from None
    if not parts.hostname:
        raise BlockedByPolicy(url[:200], "no host")
    return parts.hostname, port or (443 if scheme == "https" else 80)


def resolve_checked(host: str, port: int, policy: FetchPolicy) -> list[tuple]:
    """Resolve ``host`` and return its socket addresses, or raise if the host is not allowed.

    Every address the name resolves to must be public (one private answer is enough to refuse: which one a later
    connect picks is not ours to predict). Numeric tricks (``2130706433``, ``0177.0.0.1``, ``0x7f.1``) resolve to
    the address they spell, so they are judged by that address, not by their text."""
    try:
        infos = socket.getaddrinfo(_bare_host(host), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"name or service not known: {host} ({exc.strerror})") from None
    if policy.allows(host, port):
        return [info[4] for info in infos]
    for info in infos:
        reason = address_block_reason(info[4][0])
        if reason:
            raise BlockedByPolicy(f"{host}:{port}", f"resolves to {info[4][0]}, a {reason}")
    return [info[4] for info in infos]


def check_url(url: str, policy: FetchPolicy) -> None:
    """The guard's whole decision for one URL (scheme, then resolved addresses); raises BlockedByPolicy."""
    host, port = check_url_scheme(url)
    resolve_checked(host, port, policy)


def guarded_connect(address: tuple[str, int], timeout: object = socket._GLOBAL_DEFAULT_TIMEOUT,
                    source_address: object = None, *, policy: FetchPolicy) -> socket.socket:
    """``socket.create_connection`` that connects only to vetted addresses and re-checks the peer it reached."""
    host, port = address
    allowed = policy.allows(host, port)
    last_error: OSError | None = None
    for sockaddr in resolve_checked(host, port, policy):
        family = socket.AF_INET6 if ":" in sockaddr[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)  # type: ignore[arg-type]
            if source_address:
                sock.bind(source_address)  # type: ignore[arg-type]
            sock.connect(sockaddr)  # the vetted address itself, not the name: no second resolution
            peer = sock.getpeername()[0]
            reason = None if allowed else address_block_reason(peer)
            if reason:
                raise BlockedByPolicy(f"{host}:{port}", f"connected peer {peer} is a {reason}")
            return sock
        except BlockedByPolicy:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            last_error = exc
    raise last_error or OSError(f"could not connect to {host}:{port}")


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: object, policy: FetchPolicy, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._create_connection = lambda addr, timeout, src: guarded_connect(addr, timeout, src, policy=policy)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    # HTTPSConnection.connect calls HTTPConnection.connect (our guarded socket) and then wraps it in TLS
    # with server_hostname=self.host, so certificate checks still use the URL's name.
    def __init__(self, *args: object, policy: FetchPolicy, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._create_connection = lambda addr, timeout, src: guarded_connect(addr, timeout, src, policy=policy)


class _SchemeGuard(urllib.request.BaseHandler):
    """Runs first on every ``open`` — the first request and each redirect hop — and refuses non-http(s)."""

    handler_order = 0

    def default_open(self, req: urllib.request.Request) -> None:
        try:
            check_url_scheme(req.full_url)
        except BlockedByPolicy as exc:
            raise urllib.error.URLError(exc) from None
        # let the http(s) handler do the fetch


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__()
        self.policy = policy

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_GuardedHTTPConnection, req, policy=self.policy)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__()
        self.policy = policy

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_GuardedHTTPSConnection, req, context=self._context, policy=self.policy)


class _GuardedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirects (loop detection, ``max_redirections``), with a refused scheme reported as a policy block."""

    def redirect_request(self, req: urllib.request.Request, fp: object, code: int, msg: str, headers: object,
                         newurl: str) -> urllib.request.Request | None:
        try:
            check_url_scheme(urllib.parse.urljoin(req.full_url, newurl))
        except BlockedByPolicy as exc:
            raise urllib.error.URLError(BlockedByPolicy(f"redirect from {req.full_url[:200]}", str(exc))) from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)  # type: ignore[arg-type]


class _BodyLimit(urllib.request.BaseHandler):
    """Refuse bodies over ``max_bytes``: by Content-Length before reading, else by reading at most max+1."""

    handler_order = 900  # before HTTPErrorProcessor: a redirect's small body passes untouched

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def http_response(self, req: urllib.request.Request, response: http.client.HTTPResponse) -> http.client.HTTPResponse:
        limit = self.max_bytes
        length = response.headers.get("Content-Length")
        if length and length.strip().isdigit():
            if int(length) > limit:
                response.close()
                raise urllib.error.URLError(f"body of {int(length)} bytes exceeds max_bytes {limit}")
            return response  # read() as usual, so a short body still raises IncompleteRead (truncated)
        raw_read = response.read

        def bounded_read(amt: int | None = None) -> bytes:
            data = raw_read(limit + 1 if amt is None else min(amt, limit + 1))
            if len(data) > limit:
                response.close()
                raise urllib.error.URLError(f"body exceeds max_bytes {limit}")
            return data

        response.read = bounded_read  # type: ignore[method-assign]
        return response

    https_response = http_response


def guarded_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """An opener with only guarded http(s) handlers (no file/ftp/data, no proxies) and the redirect limit."""
    opener = urllib.request.OpenerDirector()
    redirect = _GuardedRedirectHandler()
    redirect.max_redirections = policy.max_redirects
    handlers: list[urllib.request.BaseHandler] = [
        _SchemeGuard(), _GuardedHTTPHandler(policy), _GuardedHTTPSHandler(policy), urllib.request.UnknownHandler(),
        urllib.request.HTTPDefaultErrorHandler(), redirect, urllib.request.HTTPErrorProcessor(),
    ]
    if policy.max_bytes is not None:
        handlers.append(_BodyLimit(policy.max_bytes))
    for handler in handlers:
        opener.add_handler(handler)
    return opener


def install_from_env() -> FetchPolicy | None:
    """Install the guarded opener as urllib's global opener if ``VLFORGE_FETCH_POLICY`` is set (in the crawl's
    child process and each of img2dataset's workers)."""
    text = os.environ.get(POLICY_ENV)
    if not text:
        return None
    policy = FetchPolicy.from_env(text)
    urllib.request.install_opener(guarded_opener(policy))
    return policy
