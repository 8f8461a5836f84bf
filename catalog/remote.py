"""The catalog's remote blob store: the same content-addressed blobs on shared storage (S3, MinIO, GCS, a mounted
folder: any fsspec URL), so that machines that share nothing else can share artifacts.

Where it sits: a :class:`vlforge.catalog.store.Catalog` opened with ``remote=URL`` owns one. Registration uploads
every blob of a new artifact before the index references it; :meth:`Catalog.path` fetches the blobs missing from
the local cache and checks their sha256; ``vlforge catalog push`` / ``pull`` do the same on demand. The index
(``index.sqlite``) is not shared: each machine keeps its own, and a second machine is given a copy of it.

Layout under the URL::

    sha256/<2 hex>/<64 hex>   one object per distinct file content, never rewritten
    tmp/                      uploads in flight, on stores whose writes are not atomic (a plain folder)

Object stores (S3 and the like) make an object visible only once its PUT (or multipart upload) completes, so blobs
are written straight to their final key there; elsewhere a blob is written under ``tmp/`` and moved into place.
Nothing is ever deleted from the remote (``vlforge catalog gc`` cleans the local cache only).
"""
from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vlforge.errors import UserError

__all__ = ["RemoteBlobStore"]

_CHUNK = 1 << 20
# Stores where a PUT is all-or-nothing, so a blob may be written under its final key directly.
_ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss", "memory"}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class RemoteBlobStore:
    """Blobs under one fsspec URL. Methods raise :class:`UserError` (one line, naming the URL) when the store
    cannot be reached or refuses a request; a missing blob is not an error (:meth:`size` returns None,
    :meth:`download` raises ``FileNotFoundError``)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        if not isinstance(url, str) or not url.strip():
            raise UserError(f"catalog remote {url!r} is not a URL like s3://bucket/prefix")
        self.url = url.strip()
        while self.url.endswith("/") and not self.url.endswith("://"):
            self.url = self.url[:-1]
        self._options = dict(storage_options or {})
        try:
            fs, base = fsspec.core.url_to_fs(self.url, **self._options)
        except (ValueError, ImportError, TypeError) as exc:  # unknown scheme, its package missing, bad options
            raise UserError(f"catalog remote '{self.url}' is not usable: {_one_line(exc)}") from None
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        self._atomic_put = bool(protocols & _ATOMIC_PUT)
        self._base = base.rstrip("/")
        if not self._base and self._atomic_put:
            raise UserError(f"catalog remote '{self.url}' names no bucket: expected e.g. s3://bucket/prefix")
        self._fs, self._pid = fs, os.getpid()

    @property
    def fs(self) -> Any:
        """The fsspec filesystem, made again in a forked child (async clients such as s3fs are not fork-safe)."""
        if self._pid != os.getpid():
            import fsspec

            self._fs, _ = fsspec.core.url_to_fs(self.url, **self._options)
            self._pid = os.getpid()
        return self._fs

    def __repr__(self) -> str:
        return f"RemoteBlobStore({self.url!r})"

    def location(self, sha256: str) -> str:
        """The blob's URL, for messages."""
        return f"{self.url}/sha256/{sha256[:2]}/{sha256}"

    def _key(self, sha256: str) -> str:
        return f"{self._base}/sha256/{sha256[:2]}/{sha256}"

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn the client's exceptions into one-line UserErrors; every remote client raises its own types
        (botocore's connection errors, aiohttp's, OSError subclasses), so anything but a missing key counts."""
        try:
            yield
        except (UserError, FileNotFoundError):
            raise
        except Exception as exc:  # noqa: BLE001 - see docstring
            raise UserError(f"catalog remote '{self.url}': {action} failed: {_one_line(exc)}") from None

    def size(self, sha256: str) -> int | None:
        """The size of the blob's object, or None if the remote does not hold it."""
        with self._errors(f"looking up blob {sha256[:16]}..."):
            try:
                info = self.fs.info(self._key(sha256))
            except FileNotFoundError:
                return None
        return int(info["size"]) if info.get("type", "file") == "file" else None

    def upload(self, source: Path, sha256: str) -> None:
        """Write the local file ``source`` (whose content is ``sha256``) as the blob, whole or not at all."""
        key = self._key(sha256)
        with self._errors(f"uploading blob {sha256[:16]}..."):
            try:
                if self._atomic_put:
                    self.fs.put_file(str(source), key)
                    return
                scratch = f"{self._base}/tmp/{os.getpid()}-{sha256[:12]}-{uuid.uuid4().hex}.part"
                self.fs.makedirs(scratch.rpartition("/")[0], exist_ok=True)
                self.fs.makedirs(key.rpartition("/")[0], exist_ok=True)
                self.fs.put_file(str(source), scratch)
                try:
                    self.fs.mv(scratch, key)
                finally:
                    if self.fs.exists(scratch):
                        self.fs.rm_file(scratch)
            except FileNotFoundError as exc:  # a bucket that does not exist
                raise UserError(f"catalog remote '{self.url}': uploading blob {sha256[:16]}... failed: "
                                f"{_one_line(exc)}") from None

    def download(self, sha256: str, out: IO[bytes]) -> str:
        """Copy the blob's bytes to ``out`` and return their sha256 (the caller compares it); raises
        ``FileNotFoundError`` if the remote does not hold the blob."""
        digest = hashlib.sha256()
        with self._errors(f"downloading blob {sha256[:16]}..."), self.fs.open(self._key(sha256), "rb") as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        return digest.hexdigest()
