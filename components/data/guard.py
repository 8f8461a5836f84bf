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
* caps the body at ``max_bytes`` (Content-Length up front, the stream while reading);
* refuses a body that is an image cut short of its own end although the transfer completed (:func:`image_truncation`:
  each format's end marker or declared sizes, checked on the bytes without decoding pixels).

Hosts the user allow-lists (``--allow-host HOST[:PORT]``) and the loopback server the ingest stage starts for
local and builtin sources skip the address check. Refusals carry the phrase ``blocked by policy`` (the crawl maps
it to the ``blocked_by_policy`` outcome); an oversized body says ``exceeds max_bytes`` (``too_large``), a cut-short
image ``truncated image`` (``truncated``, like a body cut short of its Content-Length: ``IncompleteRead``)."""
from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import socket
import struct
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


class TruncatedImage(OSError):
    """A body whose transfer completed but whose image ends early (raised by ``read``, like ``IncompleteRead``)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"truncated image: {why}")


# Image framing. A transfer can complete (Content-Length met, a chunked body properly ended) and still carry an image
# cut short where it came from. img2dataset decodes with ``cv2.imdecode``, which fails on most such cuts (the row
# then looked like ``not_an_image``) but decodes the first frame of an animated PNG, the first page of a multi-page
# TIFF, the primary image of an MPO / Ultra HDR JPEG and a JPEG that lacks only its EOI marker: those became samples.
# So the guard checks each format's own framing (its end marker or the sizes its headers declare) on the finished
# body: byte parsing, no pixel decoding; the crawl still decodes each image once. Data after a complete image
# (trailing padding or garbage) is accepted; a JPEG without its EOI marker or a GIF without its trailer is not (that is
# what a cut a byte or two early looks like). A body in no format known here (Radiance HDR, OpenEXR, and those cv2 does
# not read at all), or malformed rather than cut short, is left to the decoder (``not_an_image`` if it fails).

_BE16, _BE32 = struct.Struct(">H"), struct.Struct(">I")
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # 0xFF then a marker code: not stuffing (00), RSTn or fill
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RSTn, SOI: markers without a length field
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_HEIF_BRANDS = frozenset([b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"])
_JP2_SIGNATURE = b"\0\0\0\x0cjP  \r\n\x87\n"
_PNM_INT = re.compile(rb"(?:\s|#[^\r\n]*[\r\n])+(\d+)")
_PNM_FLOAT = re.compile(rb"(?:\s|#[^\r\n]*[\r\n])+([-+]?[0-9.]+(?:[eE][-+]?\d+)?)")
_PNM_PARTIAL = re.compile(rb"(?:\s|#[^\r\n]*[\r\n]?)*[-+]?[0-9.eE]*")  # what a header cut mid-way leaves


def image_truncation(data: bytes) -> str | None:
    """Why ``data`` is an image cut short of its own end, or None: complete, or not an image format checked here
    (PNG/APNG, JPEG/MPO, GIF, WebP, TIFF, BMP, AVIF/HEIF, JPEG 2000, PNM/PAM/PFM, Sun raster)."""
    head = bytes(data[:16])
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png(data)
        if head.startswith(b"\xff\xd8\xff"):
            return _jpeg(data)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return _gif(data)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp(data)
        if head[:4] in (b"II*\0", b"MM\0*"):
            return _tiff(data)
        if head[:2] == b"BM":
            return _bmp(data)
        if head[4:8] == b"ftyp" and _heif_brand(data):
            return _boxes(data, "AVIF/HEIF")
        if head[:12] == _JP2_SIGNATURE:
            return _boxes(data, "JPEG 2000")
        if head[:4] == b"\xff\x4f\xff\x51":
            return _j2k(data, 0, len(data))
        if head[:2] in (b"P4", b"P5", b"P6", b"PF", b"Pf") and head[2:3].isspace():
            return _pnm(data)
        if head[:3] == b"P7\n":
            return _pam(data)
        if head[:4] == b"\x59\xa6\x6a\x95":
            return _sun_raster(data)
    except struct.error:  # a header field points outside the body in a way no cut explains: malformed
        return None
    return None


def _png(d: bytes) -> str | None:
    n, p = len(d), 8
    while p + 8 <= n:
        length, kind = struct.unpack_from(">I4s", d, p)
        if length >= 1 << 31:
            return None
        p += 12 + length
        if p > n:
            break
        if kind == b"IEND":
            return None
    return "PNG ends before its IEND chunk"


def _webp(d: bytes) -> str | None:
    return "WebP is shorter than its RIFF header declares" if len(d) < 8 + struct.unpack_from("<I", d, 4)[0] else None


def _jpeg(d: bytes, p: int = 2, nested: bool = False) -> str | None:
    """Markers and segments from ``p`` (after SOI) to EOI, through each scan's entropy-coded data."""
    cut = "JPEG ends before its EOI marker"
    n, mpf = len(d), None
    while True:
        if p + 1 >= n or d[p] != 0xFF or d[p + 1] in (0x00, 0xFF):
            found = _JPEG_MARKER.search(d, p)  # fill or stray bytes before a marker: skip them, as libjpeg does
            if found is None:
                return cut
            p = found.start()
        code = d[p + 1]
        p += 2
        if code == 0xD9:
            return _mpf_truncation(d, mpf) if mpf is not None else None
        if code in _JPEG_STANDALONE:
            continue
        if p + 2 > n:
            return cut
        length = _BE16.unpack_from(d, p)[0]
        if length < 2:
            return None
        if p + length > n:
            return cut
        if code == 0xE2 and mpf is None and not nested and d[p + 2:p + 6] == b"MPF\0":
            mpf = p + 6  # the MP index: a TIFF structure whose offsets count from here
        p += length
        if code == 0xDA:  # a scan: entropy-coded data up to the next marker
            found = _JPEG_MARKER.search(d, p)
            if found is None:
                return cut
            p = found.start()


def _mpf_truncation(d: bytes, base: int) -> str | None:
    """The images an MPO / Ultra HDR JPEG appends after its primary one, listed in its APP2 MP index: each must be
    a whole JPEG (walked to its EOI; the index's sizes are not trusted, some writers get them wrong)."""
    try:
        e = {b"II": "<", b"MM": ">"}[d[base:base + 2]]
        ifd = base + struct.unpack_from(e + "I", d, base + 4)[0]
        for k in range(struct.unpack_from(e + "H", d, ifd)[0]):
            tag, _, count, value = struct.unpack_from(e + "HHII", d, ifd + 2 + 12 * k)
            if tag == 0xB002:  # MP Entry: 16 bytes per image (attributes, size, offset from base, dependencies)
                for i in range(1, count // 16):
                    start = base + struct.unpack_from(e + "I", d, base + value + 16 * i + 8)[0]
                    if start + 2 > len(d):
                        return "JPEG ends before an image its MP index lists"
                    if d[start:start + 2] == b"\xff\xd8" and _jpeg(d, start + 2, nested=True):
                        return "JPEG ends inside an image its MP index lists"
    except (KeyError, struct.error):
        return None
    return None


def _gif(d: bytes) -> str | None:
    cut = "GIF ends before its trailer"
    n = len(d)
    if n < 13:
        return cut
    p = 13 + (3 << ((d[10] & 7) + 1) if d[10] & 0x80 else 0)  # header, screen descriptor, global colour table
    while p < n:
        block = d[p]
        if block == 0x3B:  # trailer
            return None
        if block == 0x21:  # extension: introducer, label, sub-blocks
            p += 2
        elif block == 0x2C:  # image: descriptor, local colour table, LZW minimum code size, sub-blocks
            if p + 10 > n:
                return cut
            p += 11 + (3 << ((d[p + 9] & 7) + 1) if d[p + 9] & 0x80 else 0)
        else:
            return None  # not a block: malformed rather than cut short
        while p < n:  # data sub-blocks, ended by an empty one
            size = d[p]
            p += 1 + size
            if size == 0:
                break
        else:
            return cut
    return cut


def _tiff(d: bytes) -> str | None:
    cut = "TIFF ends before data its directory points to"
    n, e = len(d), "<" if d[0] == 0x49 else ">"
    if n < 8:
        return cut
    ifd, seen = struct.unpack_from(e + "I", d, 4)[0], set()
    while ifd:  # every page's directory (IFD), its out-of-line values and its strips or tiles
        if ifd in seen or len(seen) > 4096:
            return None
        seen.add(ifd)
        if ifd + 2 > n:
            return cut
        count = struct.unpack_from(e + "H", d, ifd)[0]
        end = ifd + 2 + 12 * count
        if end + 4 > n:
            return cut
        arrays = {}
        for k in range(count):
            at = ifd + 2 + 12 * k
            tag, kind, items = struct.unpack_from(e + "HHI", d, at)
            size, at = _TIFF_TYPE_SIZES.get(kind, 0) * items, at + 8
            if size > 4:
                at = struct.unpack_from(e + "I", d, at)[0]
                if at + size > n:
                    return cut
            if tag in (273, 279, 324, 325) and kind in (3, 4):  # Strip/Tile Offsets and ByteCounts
                arrays[tag] = struct.unpack_from(f"{e}{items}{'H' if kind == 3 else 'I'}", d, at)
        for offsets, counts in ((273, 279), (324, 325)):
            if arrays.get(offsets) and arrays.get(counts):
                if max(o + c for o, c in zip(arrays[offsets], arrays[counts])) > n:
                    return cut
        ifd = struct.unpack_from(e + "I", d, end)[0]
    return None


def _bmp(d: bytes) -> str | None:
    n = len(d)
    if n < 18:
        return None  # too short to tell a BMP from any body starting with "BM"
    offset, header = struct.unpack_from("<I I", d, 10)
    if header not in (12, 16, 40, 52, 56, 64, 108, 124):
        return None
    if n < 14 + min(header, 40):
        return "BMP ends inside its header"
    if header == 12:
        width, height, planes, bits = struct.unpack_from("<HhHH", d, 18)
        compression = size = 0
    else:
        width, height, planes, bits, compression, size = struct.unpack_from("<iiHHII", d, 18)
    if planes != 1 or width <= 0 or height == 0 or bits not in (1, 2, 4, 8, 16, 24, 32, 64):
        return None
    if compression in (0, 3, 6) and not (header == 64 and compression == 3):  # uncompressed rows, 4-byte aligned
        need = offset + (width * bits + 31) // 32 * 4 * abs(height)
    elif size:  # RLE / embedded JPEG or PNG: the header's image size
        need = offset + size
    else:
        return None
    return "BMP ends before its pixel data does" if n < need else None


def _heif_brand(d: bytes) -> bool:
    size = _BE32.unpack_from(d, 0)[0]
    return any(d[i:i + 4] in _HEIF_BRANDS for i in range(8, min(size, len(d), 64) - 3, 4) if i != 12)


def _boxes(d: bytes, what: str) -> str | None:
    """ISOBMFF (AVIF/HEIF) or JP2 top-level boxes: each must fit in the body, and the box holding the image data
    must be there (HEIF: ``mdat``, or ``idat`` inside ``meta``; JP2: ``jp2c``, whose codestream is walked too)."""
    cut = f"{what} ends inside a box"
    n, p, data_box = len(d), 0, False
    while p < n:
        if p + 8 > n:
            return cut
        size, kind = struct.unpack_from(">I4s", d, p)
        head = 8
        if size == 1:
            if p + 16 > n:
                return cut
            size, head = struct.unpack_from(">Q", d, p + 8)[0], 16
        elif size == 0:  # the last box runs to the end of the file
            size = n - p
        if size < head:
            return None
        if p + size > n:
            return cut
        if kind == b"jp2c":
            why = _j2k(d, p + head, p + size)
            if why:
                return why
        data_box = data_box or kind in (b"mdat", b"jp2c") or (kind == b"meta" and b"idat" in d[p + head:p + size])
        p += size
    return None if data_box else f"{what} ends before its image data"


def _j2k(d: bytes, p: int, end: int) -> str | None:
    """A JPEG 2000 codestream in ``d[p:end]``: main header segments, then tile-parts (SOT, length Psot) to EOC."""
    cut = "JPEG 2000 codestream ends before its EOC marker"
    if d[p:p + 2] != b"\xff\x4f":
        return None
    p += 2
    while True:
        if p + 4 > end:
            return cut
        marker, length = struct.unpack_from(">HH", d, p)
        if marker == 0xFF90:
            break
        if marker >> 8 != 0xFF:
            return None
        p += 2 + length
    while True:
        if p + 2 > end:
            return cut
        marker = _BE16.unpack_from(d, p)[0]
        if marker == 0xFFD9:
            return None
        if marker != 0xFF90:
            return None
        if p + 10 > end:
            return cut
        psot = _BE32.unpack_from(d, p + 6)[0]
        if psot == 0:  # the last tile-part runs to EOC (packet data never holds FF followed by D9)
            return None if d.find(b"\xff\xd9", p + 10, end) >= 0 else cut
        p += psot


def _pnm(d: bytes) -> str | None:
    """Binary PBM/PGM/PPM (P4-P6) and PFM (PF, Pf): a text header, one whitespace byte, then raw samples."""
    cut = "PNM ends before its pixel data does"
    kind, p, values = d[1:2], 2, []
    tokens = [_PNM_INT, _PNM_INT] + ([] if kind == b"4" else [_PNM_FLOAT if kind in (b"F", b"f") else _PNM_INT])
    for token in tokens:
        found = token.match(d, p)
        if found is None:  # cut short if only blanks, comments or the start of a number follow
            return cut if _PNM_PARTIAL.fullmatch(d, p) else None
        values.append(found.group(1))
        p = found.end()
    width, height = int(values[0]), int(values[1])
    if width <= 0 or height <= 0:
        return None
    if kind == b"4":
        need = (width + 7) // 8 * height
    elif kind in (b"F", b"f"):
        need = width * height * (3 if kind == b"F" else 1) * 4
    else:
        maxval = int(values[2])
        if not 0 < maxval < 65536:
            return None
        need = width * height * (3 if kind == b"6" else 1) * (2 if maxval > 255 else 1)
    return cut if len(d) < p + 1 + need else None


def _pam(d: bytes) -> str | None:
    end = d.find(b"ENDHDR\n", 0, 4096)
    if end < 0:
        return "PAM ends inside its header" if len(d) < 4096 else None
    fields = {}
    for line in bytes(d[3:end]).splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and not parts[0].startswith(b"#"):
            fields[parts[0]] = parts[1]
    try:
        width, height, depth, maxval = (int(fields[k]) for k in (b"WIDTH", b"HEIGHT", b"DEPTH", b"MAXVAL"))
    except (KeyError, ValueError):
        return None
    need = width * height * depth * (2 if maxval > 255 else 1)
    return "PAM ends before its pixel data does" if len(d) < end + 7 + need else None


def _sun_raster(d: bytes) -> str | None:
    if len(d) < 32:
        return "Sun raster ends inside its header"
    width, height, depth, length, kind, _, map_length = struct.unpack_from(">7I", d, 4)
    if depth not in (1, 8, 24, 32):
        return None
    if kind == 2:  # run-length encoded: the header's byte length
        need = 32 + map_length + length
    elif kind in (0, 1, 3):
        need = 32 + map_length + (width * depth + 15) // 16 * 2 * height
    else:
        return None
    return "Sun raster ends before its pixel data does" if len(d) < need else None


class _ImageFraming(urllib.request.BaseHandler):
    """Refuse a successful response whose body, read whole (img2dataset reads each body with one ``read()``), is an
    image cut short (:func:`image_truncation`): the download fails, and is retried, just as a body cut short of its
    Content-Length fails with IncompleteRead."""

    handler_order = 950  # after _BodyLimit (900): wraps its bounded read

    def http_response(self, req: urllib.request.Request,
                      response: http.client.HTTPResponse) -> http.client.HTTPResponse:
        if not 200 <= response.status < 300:
            return response
        raw_read = response.read

        def checked_read(amt: int | None = None) -> bytes:
            data = raw_read(amt)
            if amt is None or amt < 0:
                why = image_truncation(data)
                if why:
                    response.close()
                    raise TruncatedImage(why)
            return data

        response.read = checked_read  # type: ignore[method-assign]
        return response

    https_response = http_response


def guarded_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """An opener with only guarded http(s) handlers (no file/ftp/data, no proxies), the redirect limit, the body limit
    and the image framing check."""
    opener = urllib.request.OpenerDirector()
    redirect = _GuardedRedirectHandler()
    redirect.max_redirections = policy.max_redirects
    handlers: list[urllib.request.BaseHandler] = [
        _SchemeGuard(), _GuardedHTTPHandler(policy), _GuardedHTTPSHandler(policy), urllib.request.UnknownHandler(),
        urllib.request.HTTPDefaultErrorHandler(), redirect, urllib.request.HTTPErrorProcessor(), _ImageFraming(),
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
