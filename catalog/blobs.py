"""The catalog's content-addressed blob store: each distinct file content once, read-only, under its sha256.

Where it sits: the files half of :class:`vlforge.catalog.store.Catalog` (the index half is
:mod:`vlforge.catalog.index`). It knows nothing of artifacts, names or versions: it stores, fetches, uploads and
checks blobs by hash, and materialises a folder of hard links for a list of ``(path, sha256)`` pairs.

Layout under the catalog root::

    blobs/sha256/<2 hex>/<64 hex>   one read-only (0o444) file per distinct content
    tmp/                            blobs being written (same filesystem as blobs/, so the final rename is atomic)
    views/<id>/                     read-only folder of one artifact's files, made on demand

Every blob enters through one path (:meth:`BlobStore._install`): bytes go to a scratch file under ``tmp/`` named
``<host>.<pid>-...`` (so :func:`vlforge.catalog.maintenance.gc` can tell a dead writer's leftovers from a live
one's), are hashed on the way, fsynced, made read-only and renamed over the final name only if they hash to the
expected sha256. Readers therefore never see a partial or wrong blob. With a remote
(:class:`vlforge.catalog.remote.RemoteBlobStore`) the local folder is a cache of it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from vlforge.errors import UserError

if TYPE_CHECKING:
    from vlforge.catalog.remote import RemoteBlobStore

__all__ = ["BlobStore", "CheckRow", "SourceFile", "hash_file", "is_pickle", "remove_tree", "scratch_owner"]

CheckRow = tuple[str, str, int, int, int]
"""``(path relative to the catalog root, sha256, size, mtime_ns, inode)``: a file as last seen intact."""

_CHUNK = 1 << 20
_PICKLE_PROTOCOLS = {2, 3, 4, 5}
_REMOTE_WORKERS = 8  # concurrent transfers to or from the remote


@dataclass(frozen=True)
class SourceFile:
    """A file to store: its place in the artifact, where its bytes are now, and their hash."""

    relpath: str
    source: Path
    sha256: str
    size: int


def hash_file(path: Path) -> tuple[str, int]:
    """Return the hex sha256 and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def is_pickle(path: Path) -> bool:
    """Whether ``path`` holds a pickle stream (protocol 2+) or a ``torch.save`` zip archive (which wraps one).

    Loading either runs arbitrary code, so the catalog refuses them: checkpoints are safetensors."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS:
        return True
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                return any(member.endswith(".pkl") for member in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) directory tree; ignore it if it is already gone."""
    if path.exists():
        for dirpath, _dirnames, _filenames in os.walk(path):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(path, ignore_errors=True)


def scratch_owner() -> str:
    """``<host>.<pid>``: names scratch files so gc can tell a live writer's from a dead one's."""
    return f"{socket.gethostname().replace('-', '_').replace('.', '_')}.{os.getpid()}"


def _copy_hashing(source: Path) -> Callable[[IO[bytes]], str]:
    """A filler for :meth:`BlobStore._install` that copies ``source`` and returns the sha256 of what it copied."""

    def fill(out: IO[bytes]) -> str:
        digest = hashlib.sha256()
        with source.open("rb") as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        return digest.hexdigest()

    return fill


class BlobStore:
    """The ``blobs/``, ``tmp/`` and ``views/`` folders under one catalog root, and optionally a remote."""

    def __init__(self, root: Path, remote: RemoteBlobStore | None = None) -> None:
        self.root = root
        self.remote = remote
        self.blobs = root / "blobs" / "sha256"
        self.tmp = root / "tmp"
        self.views = root / "views"
        for folder in (self.blobs, self.tmp, self.views):
            folder.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the blob of content ``sha256`` lives locally (whether or not it is there)."""
        return self.blobs / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        """Whether the local store holds the blob of content ``sha256``."""
        return self.path(sha256).is_file()

    def relative(self, path: Path) -> str:
        """``path`` relative to the catalog root, as ``file_checks`` rows and messages name it."""
        return path.relative_to(self.root).as_posix()

    def check_row(self, path: Path, sha256: str) -> CheckRow:
        """A ``file_checks`` row saying that ``path`` as it stands now holds content ``sha256``."""
        st = path.stat()
        return (self.relative(path), sha256, st.st_size, st.st_mtime_ns, st.st_ino)

    def stored(self) -> list[Path]:
        """Every blob file in the local store, sorted."""
        return sorted(blob for blob in self.blobs.glob("*/*") if blob.is_file())

    def scratch(self) -> list[Path]:
        """Scratch files under ``tmp/`` and half-built views, live writers' included, sorted."""
        return sorted([*self.tmp.iterdir(), *self.views.glob(".building-*")])

    # ------------------------------------------------------------------ writing blobs

    def _install(self, sha256: str, fill: Callable[[IO[bytes]], str],
                 mismatch: Callable[[str], UserError]) -> CheckRow:
        """Write one blob atomically: ``fill`` writes its bytes to a scratch file and returns their sha256; the
        file is fsynced, made read-only and renamed over the final name only if that is ``sha256`` (else
        ``mismatch(actual)`` is raised). Returns the blob's ``file_checks`` row."""
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix=f"{scratch_owner()}-{sha256[:12]}-", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                actual = fill(out)
                out.flush()
                os.fsync(out.fileno())
            if actual != sha256:
                raise mismatch(actual)
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
            return self.check_row(final, sha256)
        finally:
            tmp.unlink(missing_ok=True)

    def store(self, source: SourceFile, what: str) -> CheckRow | None:
        """Copy one source file into the store unless a blob of its size is already there (re-hashing it on the
        way). Returns the ``file_checks`` row of the blob it wrote, or None if it wrote nothing."""
        try:
            if self.path(source.sha256).stat().st_size == source.size:
                return None
        except FileNotFoundError:
            pass
        return self._install(source.sha256, _copy_hashing(source.source), lambda _actual: UserError(
            f"cannot register {what}: '{source.source}' changed while it was being registered"))

    def fetch(self, sha256: str, relpath: str, label: str) -> CheckRow:
        """Download one blob from the remote into the local store, checking its hash. ``relpath`` and ``label``
        (the artifact holding it) name it in errors. Returns its ``file_checks`` row."""
        assert self.remote is not None
        remote = self.remote
        where = remote.location(sha256)

        def fill(out: IO[bytes]) -> str:
            try:
                return remote.download(sha256, out)
            except FileNotFoundError:
                raise UserError(f"{label} is damaged: file {relpath!r} is missing from the local catalog and "
                                f"from the remote ({where})") from None

        return self._install(sha256, fill, lambda actual: UserError(
            f"{label} is corrupt on the remote: file {relpath!r} has sha256 {actual[:16]}..., the catalog "
            f"recorded {sha256[:16]}... ({where})"))

    def fetch_missing(self, files: Sequence[tuple[str, str, int]], label: str) -> tuple[list[CheckRow], int]:
        """Fetch from the remote (if there is one) every blob of ``files`` (``(relpath, sha256, size)``) that the
        local store lacks. Returns the fetched blobs' ``file_checks`` rows and the bytes fetched."""
        missing = list({sha256: (relpath, sha256, size) for relpath, sha256, size in files
                        if not self.has(sha256)}.values())
        if self.remote is None or not missing:
            return [], 0
        with ThreadPoolExecutor(max_workers=_REMOTE_WORKERS) as pool:
            rows = list(pool.map(lambda item: self.fetch(item[1], item[0], label), missing))
        return rows, sum(size for _relpath, _sha256, size in missing)

    def upload_sources(self, sources: Sequence[SourceFile], what: str, verified: set[str]) -> list[CheckRow]:
        """Upload the blob of every source the remote does not hold yet, from the local store (storing it there
        first when it is missing). A local blob that was already there, and not among the ``verified`` hashes
        just written, is re-hashed before it leaves the machine. Returns the rows of blobs stored on the way."""
        assert self.remote is not None
        remote = self.remote

        def upload(source: SourceFile) -> CheckRow | None:
            if remote.size(source.sha256) == source.size:
                return None
            row = self.store(source, what)
            blob = self.path(source.sha256)
            if row is None and source.sha256 not in verified and hash_file(blob)[0] != source.sha256:
                raise UserError(f"cannot register {what}: the catalog's copy of {source.relpath!r} "
                                f"({self.relative(blob)}) is corrupt; run 'vlforge catalog verify'")
            remote.upload(blob, source.sha256)
            return row

        unique = list({source.sha256: source for source in sources}.values())
        with ThreadPoolExecutor(max_workers=_REMOTE_WORKERS) as pool:
            return [row for row in pool.map(upload, unique) if row is not None]

    def remote_lacks(self, sizes: dict[str, int]) -> list[str]:
        """Of ``{sha256: size}``, the hashes the remote does not hold at that size, in the given order."""
        assert self.remote is not None
        with ThreadPoolExecutor(max_workers=_REMOTE_WORKERS) as pool:
            found = list(pool.map(self.remote.size, sizes))
        return [sha256 for sha256, size in zip(sizes, found) if size != sizes[sha256]]

    def upload(self, hashes: Sequence[str]) -> None:
        """Upload the local blobs of ``hashes`` to the remote (the caller has checked them)."""
        assert self.remote is not None
        remote = self.remote
        with ThreadPoolExecutor(max_workers=_REMOTE_WORKERS) as pool:
            list(pool.map(lambda sha256: remote.upload(self.path(sha256), sha256), hashes))

    # ------------------------------------------------------------------ checking

    def check(self, pairs: Sequence[tuple[str, str, Path]], known: dict[str, tuple[Any, ...]],
              label: str) -> list[CheckRow]:
        """Raise :class:`UserError` if any file of ``pairs`` (``(relpath in the artifact, sha256, file)``) is
        missing or no longer holds its content. A file whose ``(sha256, size, mtime_ns, inode)`` equals its entry
        in ``known`` (keyed by :meth:`relative` path) is trusted without reading it; any other is re-hashed.
        Returns the fresh ``file_checks`` rows of the files re-hashed and found intact."""
        fresh: list[CheckRow] = []
        for relpath, sha256, path in pairs:
            rel = self.relative(path)
            try:
                st = path.stat()
            except FileNotFoundError:
                raise UserError(f"{label} is damaged: file {relpath!r} is missing from the catalog ({rel}); run "
                                f"'vlforge catalog verify'") from None
            if known.get(rel) == (sha256, st.st_size, st.st_mtime_ns, st.st_ino):
                continue
            actual, _size = hash_file(path)
            if actual != sha256:
                raise UserError(f"{label} is corrupt: file {relpath!r} has sha256 {actual[:16]}..., the catalog "
                                f"recorded {sha256[:16]}... ({rel}); run 'vlforge catalog verify'")
            fresh.append(self.check_row(path, sha256))
        return fresh

    # ------------------------------------------------------------------ views

    def view(self, artifact_id: str) -> Path:
        """Where the view of ``artifact_id`` lives (whether or not it is built)."""
        return self.views / artifact_id

    def view_files(self, artifact_id: str, files: Sequence[tuple[str, str]]) -> list[tuple[str, str, Path]]:
        """``(relpath, sha256, file to check)`` for each of a built view's ``files``: a hard link shares its
        blob's inode, so the blob stands for it; a copy stands for itself."""
        view = self.view(artifact_id)
        pairs: list[tuple[str, str, Path]] = []
        for relpath, sha256 in files:
            target, blob = view / relpath, self.path(sha256)
            try:
                same = os.path.samefile(target, blob)
            except OSError:
                same = False
            pairs.append((relpath, sha256, blob if same else target))
        return pairs

    def build_view(self, artifact_id: str, files: Sequence[tuple[str, str]]) -> Path:
        """Materialise ``views/<artifact_id>/`` holding ``files`` (``(relpath, sha256)``) as hard links to their
        blobs (read-only copies where linking fails). Built under a temporary name and renamed into place, so it
        appears complete or not at all; when several callers race, all return the same valid folder."""
        final = self.view(artifact_id)
        building = self.views / f".building-{scratch_owner()}-{artifact_id[:12]}-{uuid.uuid4().hex}"
        try:
            building.mkdir()
            for relpath, sha256 in files:
                target = building / relpath
                target.parent.mkdir(parents=True, exist_ok=True)
                blob = self.path(sha256)
                try:
                    os.link(blob, target)
                except OSError:
                    shutil.copyfile(blob, target)
                    os.chmod(target, 0o444)
            for dirpath, _dirnames, _filenames in os.walk(building, topdown=False):
                os.chmod(dirpath, 0o555)
            try:
                os.rename(building, final)
            except OSError:
                if not final.is_dir():
                    raise
        finally:
            remove_tree(building)
        return final
