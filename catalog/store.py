"""The artifact catalog: a content-addressed, immutable store of everything the pipeline produces, with lineage.

Where it sits in the DAG: every stage (crawl/shard -> dataset, tokenizer training, pretraining -> model,
evaluation -> eval) registers its outputs here, naming the artifacts it consumed as ``parents``. Downstream
stages, the CLI and reports find their inputs by reference (``clip@latest``, ``clip:3``, an id prefix), and a
stage can skip work when :meth:`Catalog.find_by_cache_key` already knows its cache key.

Layout under the root folder (the caller passes ``$VLFORGE_HOME/catalog``)::

    blobs/sha256/<2 hex>/<64 hex>   each distinct file content stored once, read-only (0o444)
    tmp/                            scratch space for blobs being written (same filesystem as blobs/)
    index.sqlite                    artifacts, files, parents (ordered edges), aliases, tags, cache keys and
                                    file_checks (size/mtime/inode of each file last seen intact) (WAL mode)
    views/<id>/                     read-only materialised directory of one artifact's files, made on demand

Guarantees:

* An artifact's **id** is the sha256 of the canonical JSON of its kind, name, family, file hashes, config,
  parents and metrics (not its timestamp, code version or package versions), so registering the same content
  twice returns the existing entry instead of making a new version.
* Blobs are written to a temporary file and ``os.replace``-d into place, so no partial blob ever sits under its
  final name. The index rows for one registration (version assignment, files, parents, the ``latest`` alias)
  go in in a single ``BEGIN IMMEDIATE`` transaction, so concurrent processes never lose or duplicate a
  version, and a process killed mid-registration leaves nothing visible (at worst orphaned blobs, harmless).
* Views appear atomically: they are built in a temporary folder and renamed into place.
* Loading checks content: :meth:`Catalog.path` re-hashes any file whose size, mtime or inode differ from when it
  was last seen intact and raises :class:`UserError` on a mismatch, so a blob changed on disk is never handed
  to a stage. Nothing in the catalog is a pickle: registration refuses pickle streams and ``torch.save``
  archives (checkpoints are safetensors).
* Scratch files are named ``<host>.<pid>-...`` so :func:`vlforge.catalog.maintenance.gc` can tell a dead
  writer's leftovers from a live one's; gc and the final step of registration share the index's write lock.

With a **remote** (``Catalog(root, remote="s3://bucket/prefix")``, see :mod:`vlforge.catalog.remote`) the local
``blobs/`` folder becomes a cache of the remote's: registration uploads every blob an artifact needs before the
index references it, :meth:`Catalog.path` fetches missing blobs (checking their sha256 before they enter the
cache), and :meth:`Catalog.push` / :meth:`Catalog.pull` copy an artifact's blobs either way on demand. The index
stays local to each machine; another machine works from a copy of it (:meth:`Catalog.backup_index`).

Every mistake a caller can make (unknown or ambiguous reference, missing file, bad name, non-JSON config)
raises :class:`vlforge.errors.UserError` with a one-line message naming the input.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import socket
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict

from vlforge.errors import UserError

__all__ = [
    "Artifact",
    "Query",
    "Catalog",
    "FileEntry",
    "detect_code_version",
    "packages_snapshot",
]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{4,64}")
_KIND = re.compile(r"[a-z][a-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_LATEST = "latest"
_CHUNK = 1 << 20
_BUSY_TIMEOUT_S = 30.0
_SCHEMA_VERSION = 2
_PICKLE_PROTOCOLS = {2, 3, 4, 5}
_REMOTE_WORKERS = 8  # concurrent transfers to or from the remote

_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- registration order across the whole catalog
    id           TEXT    NOT NULL UNIQUE,
    kind         TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    family       TEXT,
    config       TEXT    NOT NULL,                   -- canonical JSON
    metrics      TEXT    NOT NULL,                   -- canonical JSON
    cache_key    TEXT,
    code_version TEXT,
    packages     TEXT    NOT NULL,                   -- canonical JSON
    created_at   TEXT    NOT NULL,
    UNIQUE (name, version)
);
CREATE INDEX IF NOT EXISTS artifacts_by_kind ON artifacts (kind);
CREATE TABLE IF NOT EXISTS files (
    artifact_id TEXT    NOT NULL REFERENCES artifacts (id),
    path        TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    PRIMARY KEY (artifact_id, path)
);
CREATE TABLE IF NOT EXISTS parents (
    child_id  TEXT    NOT NULL REFERENCES artifacts (id),
    position  INTEGER NOT NULL,
    parent_id TEXT    NOT NULL REFERENCES artifacts (id),
    PRIMARY KEY (child_id, position)
);
CREATE INDEX IF NOT EXISTS parents_by_parent ON parents (parent_id);
CREATE TABLE IF NOT EXISTS aliases (
    name        TEXT NOT NULL,
    alias       TEXT NOT NULL,
    artifact_id TEXT NOT NULL REFERENCES artifacts (id),
    PRIMARY KEY (name, alias)
);
CREATE INDEX IF NOT EXISTS aliases_by_artifact ON aliases (artifact_id);
CREATE TABLE IF NOT EXISTS cache_keys (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    cache_key   TEXT NOT NULL,
    artifact_id TEXT NOT NULL REFERENCES artifacts (id),
    UNIQUE (cache_key, artifact_id)
);
-- schema 2: search indexes, tags, and the stat cache that lets path() detect changed blobs without re-hashing
CREATE INDEX IF NOT EXISTS artifacts_by_name ON artifacts (name, version);
CREATE INDEX IF NOT EXISTS artifacts_by_family ON artifacts (family);
CREATE INDEX IF NOT EXISTS artifacts_by_created ON artifacts (created_at);
CREATE INDEX IF NOT EXISTS files_by_sha ON files (sha256);
CREATE INDEX IF NOT EXISTS aliases_by_alias ON aliases (alias);
CREATE TABLE IF NOT EXISTS tags (
    artifact_id TEXT NOT NULL REFERENCES artifacts (id),
    tag         TEXT NOT NULL,
    PRIMARY KEY (artifact_id, tag)
);
CREATE INDEX IF NOT EXISTS tags_by_tag ON tags (tag);
CREATE TABLE IF NOT EXISTS file_checks (
    path     TEXT    PRIMARY KEY,   -- relative to the catalog root: blobs/sha256/.. or views/<id>/..
    sha256   TEXT    NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode    INTEGER NOT NULL
);
"""


_METRIC_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def _metric_path(metric: str) -> str:
    """The JSON path of a metric key inside ``artifacts.metrics``, refusing keys that are not plain names."""
    if not _METRIC_KEY.fullmatch(metric):
        raise UserError(f"invalid metric name {metric!r}: expected letters, digits, '_', '.' or '-'")
    return f'$."{metric}"'


@dataclass(frozen=True)
class Query:
    """Filters and order for :meth:`Catalog.search` / :meth:`Catalog.count`; every field narrows the result.

    ``text`` matches a substring of the name, family or kind, or a prefix of the id; ``since`` is an ISO-8601
    time (compared with ``created_at``, UTC); ``metric_above`` keeps artifacts whose numeric metric is strictly
    greater; ``sort_metric`` orders by a metric (artifacts without it last), highest first unless
    ``ascending``."""

    kind: str | None = None
    family: str | None = None
    name: str | None = None
    text: str | None = None
    tag: str | None = None
    alias: str | None = None
    since: str | None = None
    metric_above: tuple[tuple[str, float], ...] = ()
    sort_metric: str | None = None
    ascending: bool = False

    def sql(self) -> tuple[str, list[Any], str]:
        """``(where, params, order by)`` over ``artifacts a``."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("a.kind", self.kind), ("a.family", self.family), ("a.name", self.name)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.text:
            escaped = self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            # id prefix: hex sorts below 'g', so [prefix, prefix + 'g') is exactly the ids with that prefix
            prefix = self.text.lower() if _HEX_PREFIX.fullmatch(self.text.lower()) else "-"
            clauses.append("(a.name LIKE ? ESCAPE '\\' OR a.family LIKE ? ESCAPE '\\' OR a.kind = ?"
                           " OR (a.id >= ? AND a.id < ?))")
            params.extend([f"%{escaped}%", f"%{escaped}%", self.text, prefix, prefix + "g"])
        if self.tag:
            clauses.append("a.id IN (SELECT artifact_id FROM tags WHERE tag = ?)")
            params.append(self.tag)
        if self.alias:
            clauses.append("a.id IN (SELECT artifact_id FROM aliases WHERE alias = ?)")
            params.append(self.alias)
        if self.since:
            try:
                moment = datetime.fromisoformat(self.since)
            except ValueError:
                raise UserError(f"invalid time {self.since!r}: expected ISO-8601 like 2026-11-27 or "
                                f"2026-11-27T04:00") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            clauses.append("a.created_at >= ?")
            params.append(moment.astimezone(timezone.utc).isoformat(timespec="microseconds"))
        for metric, threshold in self.metric_above:
            path = _metric_path(metric)
            clauses.append("json_type(a.metrics, ?) IN ('integer', 'real') AND json_extract(a.metrics, ?) > ?")
            params.extend([path, path, float(threshold)])
        order = "a.seq DESC"
        if self.sort_metric:
            path = _metric_path(self.sort_metric).replace("'", "''")
            direction = "ASC" if self.ascending else "DESC"
            order = (f"json_type(a.metrics, '{path}') NOT IN ('integer', 'real') OR json_type(a.metrics, '{path}')"
                     f" IS NULL, json_extract(a.metrics, '{path}') {direction}, a.seq DESC")
        return " AND ".join(clauses) or "1", params, order


class FileEntry(BaseModel):
    """One file of an artifact: where it sits inside the artifact and which blob holds its bytes."""

    model_config = ConfigDict(frozen=True)

    path: str
    """Relative POSIX path inside the artifact, e.g. ``shards/00000.tar``."""
    sha256: str
    """Hex sha256 of the content; the blob lives at ``blobs/sha256/<sha256[:2]>/<sha256>``."""
    size: int
    """Size in bytes."""


class Artifact(BaseModel):
    """A registered, immutable catalog entry. Instances are snapshots: ``aliases`` is as of the read."""

    model_config = ConfigDict(frozen=True)

    id: str
    """64-hex sha256 of the canonical JSON of kind, name, family, files, config, parents and metrics."""
    kind: str
    """``dataset``, ``tokenizer``, ``model``, ``eval`` or any other lowercase identifier."""
    name: str
    version: int
    """1, 2, ... per name, in registration order."""
    family: str | None
    files: list[FileEntry]
    """Sorted by path."""
    config: dict[str, Any]
    parents: list[str]
    """Ids of the artifacts this one was made from, in the order the stage gave them."""
    metrics: dict[str, int | float | str]
    cache_key: str | None
    """The producing stage's cache key (inputs + config + code), if it gave one."""
    code_version: str | None
    """Git commit of the code that made it (``+dirty`` when the tree had changes), if known."""
    packages: dict[str, str]
    """Package -> version of the environment that made it."""
    created_at: str
    """ISO-8601 UTC timestamp of the registration."""
    aliases: list[str]
    """Aliases (``latest``, ``production``, ...) pointing at this artifact when it was read, sorted."""
    tags: list[str] = []
    """Free labels (``baseline``, ``paper``, ...) attached to this artifact when it was read, sorted."""

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of :attr:`id`, enough to use as a reference in practice."""
        return self.id[:12]


@dataclass(frozen=True)
class _Source:
    """A file to register: its place in the artifact, where its bytes are now, and their hash."""

    relpath: str
    source: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class _Pending:
    """Everything about a registration that is known before the index transaction."""

    id: str
    kind: str
    name: str
    family: str | None
    files: tuple[_Source, ...]
    config_json: str
    metrics_json: str
    parents: tuple[str, ...]
    cache_key: str | None
    code_version: str | None
    packages_json: str


def _canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _json_problem(value: Any, where: str) -> str | None:
    """Describe the first part of ``value`` that strict JSON cannot represent faithfully, or return None."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r}, which JSON cannot represent"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has a non-string key {key!r}"
            problem = _json_problem(item, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            problem = _json_problem(item, f"{where}[{index}]")
            if problem:
                return problem
        return None
    return f"{where} is a {type(value).__name__}, which is not JSON-serialisable"


def _hash_file(path: Path) -> tuple[str, int]:
    """Return the hex sha256 and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _is_pickle(path: Path) -> bool:
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


def _check_relpath(relpath: Any, what: str) -> str:
    """Return ``relpath`` if it is a normalised relative POSIX path inside the artifact, else raise."""
    if not isinstance(relpath, str) or not relpath:
        raise UserError(f"cannot register {what}: file path {relpath!r} in the files mapping is not a non-empty "
                        f"string")
    pure = PurePosixPath(relpath)
    if pure.is_absolute() or str(pure) != relpath or any(part in ("..", ".") for part in pure.parts) \
            or "\\" in relpath:
        raise UserError(f"cannot register {what}: file path {relpath!r} in the files mapping is not a normalised "
                        f"relative POSIX path")
    return relpath


def _make_tree_writable(path: Path) -> None:
    """Give the owner write access to every directory under ``path`` so it can be removed."""
    for dirpath, _dirnames, _filenames in os.walk(path):
        os.chmod(dirpath, 0o755)


def _remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) directory tree; ignore it if it is already gone."""
    if path.exists():
        _make_tree_writable(path)
        shutil.rmtree(path, ignore_errors=True)


def _scratch_owner() -> str:
    """``<host>.<pid>``: names scratch files so :meth:`Catalog.gc` can tell a live writer's from a dead one's."""
    return f"{socket.gethostname().replace('-', '_').replace('.', '_')}.{os.getpid()}"


def detect_code_version(repo_dir: Path) -> str | None:
    """Return ``git rev-parse HEAD`` of ``repo_dir``, with ``+dirty`` appended when ``git status --porcelain``
    reports changes (untracked files included); None if it is not a git checkout or git fails in any way."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=repo_dir, capture_output=True, text=True,
                                check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if not head:
        return None
    return f"{head}+dirty" if status.strip() else head


def packages_snapshot(names: Iterable[str]) -> dict[str, str]:
    """Return ``{distribution: installed version}`` for each of ``names`` that is installed, in the given order
    (names that are not installed are skipped)."""
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


class Catalog:
    """The artifact catalog rooted at one folder; see the module docstring for layout and guarantees.

    Instances hold no open connection (each operation opens its own), so one instance may be shared between
    threads, and any number of processes may use the same root at once.
    """

    def __init__(self, root: Path | str, *, remote: str | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        """Open the catalog at ``root``, creating the folder layout and the index if they are missing. With
        ``remote`` (an fsspec URL such as ``s3://bucket/prefix``; ``storage_options`` go to its filesystem, e.g.
        ``{"endpoint_url": ..., "key": ..., "secret": ...}`` for s3fs) blobs are also kept there. Opening
        contacts no remote: an unreachable one is reported by the first operation that needs it."""
        from vlforge.catalog.remote import RemoteBlobStore

        self.root = Path(root)
        self.remote = RemoteBlobStore(remote, storage_options) if remote else None
        self._blobs = self.root / "blobs" / "sha256"
        self._tmp = self.root / "tmp"
        self._views = self.root / "views"
        self._db = self.root / "index.sqlite"
        for folder in (self._blobs, self._tmp, self._views):
            folder.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            if conn.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
                with self._transaction(conn):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    # ------------------------------------------------------------------ connections

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection in autocommit mode (transactions are explicit), closed on exit."""
        conn = sqlite3.connect(self._db, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn
        except sqlite3.DatabaseError as exc:
            # Exactly DatabaseError ("file is not a database", "malformed"): the index file itself is damaged,
            # which a user can cause (a truncated copy, a stray write). Subclasses (locked, integrity) are bugs.
            if type(exc) is sqlite3.DatabaseError:
                raise UserError(f"catalog index '{self._db}' is corrupt ({exc}); restore it from a backup") \
                    from None
            raise
        finally:
            conn.close()

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` (take the write lock now) ... ``COMMIT``, or ``ROLLBACK`` on any exception."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # ------------------------------------------------------------------ registration

    def register(
        self,
        *,
        kind: str,
        name: str,
        files: Path | str | Mapping[str, Path | str],
        config: dict[str, Any],
        parents: Sequence[str] = (),
        metrics: Mapping[str, int | float | str] | None = None,
        family: str | None = None,
        cache_key: str | None = None,
        code_version: str | None = None,
        packages: Mapping[str, str] | None = None,
    ) -> Artifact:
        """Register the outputs of a stage and return the catalog entry.

        ``files`` is either a directory (every regular file under it, recursively; symlinks to files are
        followed, symlinked directories are not) or a mapping ``relative posix path -> source file``; an empty
        mapping registers an artifact with no files (e.g. an evaluation that is all metrics). ``parents`` are
        references to the artifacts this one was made from; each must resolve. Registering content that is
        already catalogued (same id) returns the existing entry unchanged, except that a new ``cache_key`` is
        remembered for :meth:`find_by_cache_key`. Otherwise the artifact gets the next version of ``name`` and
        ``name@latest`` moves to it. Raises :class:`UserError` for bad names, unknown parents, missing or
        unreadable files, or config/metrics that are not strict JSON.
        """
        what = f"{kind!r} artifact {name!r}"
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise UserError(f"cannot register {what}: kind must be a lowercase identifier like 'model'")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UserError(f"cannot register {what}: name must match [A-Za-z0-9][A-Za-z0-9_.-]*")
        if family is not None and not isinstance(family, str):
            raise UserError(f"cannot register {what}: family {family!r} is not a string")
        if cache_key is not None and not isinstance(cache_key, str):
            raise UserError(f"cannot register {what}: cache_key {cache_key!r} is not a string")
        if code_version is not None and not isinstance(code_version, str):
            raise UserError(f"cannot register {what}: code_version {code_version!r} is not a string")
        if not isinstance(config, Mapping):
            raise UserError(f"cannot register {what}: config is a {type(config).__name__}, not a dict")
        metrics = dict(metrics or {})
        packages = dict(packages or {})
        problem = _json_problem(config, "config")
        for key, value in metrics.items():
            if problem:
                break
            if not isinstance(key, str):
                problem = f"metrics has a non-string key {key!r}"
            elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
                problem = f"metrics[{key!r}] is a {type(value).__name__}, not a number or string"
            else:
                problem = _json_problem(value, f"metrics[{key!r}]")
        for key, value in packages.items():
            if problem:
                break
            if not isinstance(key, str) or not isinstance(value, str):
                problem = f"packages entry {key!r}: {value!r} is not a string -> string pair"
        if problem:
            raise UserError(f"cannot register {what}: {problem}")
        if isinstance(parents, str):
            raise UserError(f"cannot register {what}: parents must be a list of references, not the string "
                            f"{parents!r}")

        parent_ids = tuple(self.resolve(ref) for ref in parents)
        sources = self._collect(files, what)
        config_json = _canonical_json(config)
        metrics_json = _canonical_json(metrics)
        identity = {
            "kind": kind,
            "name": name,
            "family": family,
            "files": {source.relpath: source.sha256 for source in sources},
            "config": json.loads(config_json),
            "parents": list(parent_ids),
            "metrics": json.loads(metrics_json),
        }
        artifact_id = hashlib.sha256(_canonical_json(identity).encode("utf-8")).hexdigest()
        pending = _Pending(
            id=artifact_id, kind=kind, name=name, family=family, files=sources, config_json=config_json,
            metrics_json=metrics_json, parents=parent_ids, cache_key=cache_key, code_version=code_version,
            packages_json=_canonical_json(packages),
        )

        checks: list[tuple[str, str, int, int, int]] = []
        if not self._exists(artifact_id):
            for source in sources:
                if (row := self._store_blob(source, what)) is not None:
                    checks.append(row)
        if self.remote is not None:
            # every blob is on the remote before the index can name the artifact
            checks.extend(self._upload_sources(sources, what, verified={row[1] for row in checks}))
        for _attempt in range(5):
            missing = self._commit(pending, checks)
            if not missing:
                return self.get(artifact_id)
            # `gc` removed a blob we stored (it was unreferenced until our commit): store it again and retry.
            checks = [row for source in missing if (row := self._store_blob(source, what)) is not None]
        raise RuntimeError(f"registration of {what} kept losing its blobs to a concurrent gc")

    def _collect(self, files: Path | str | Mapping[str, Path | str], what: str) -> tuple[_Source, ...]:
        """Turn the ``files`` argument into hashed sources sorted by relative path, checking every file."""
        pairs: list[tuple[str, Path]] = []
        if isinstance(files, Mapping):
            for relpath, source in files.items():
                pairs.append((_check_relpath(relpath, what), Path(source)))
            paths = {relpath for relpath, _ in pairs}
            for relpath in paths:
                for parent in PurePosixPath(relpath).parents:
                    if str(parent) in paths:
                        raise UserError(f"cannot register {what}: file path {str(parent)!r} is also a folder "
                                        f"in {relpath!r}")
        elif isinstance(files, (str, os.PathLike)):
            folder = Path(files)
            if not folder.is_dir():
                raise UserError(f"cannot register {what}: files folder '{folder}' does not exist or is not "
                                f"a folder")
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames.sort()
                for filename in filenames:
                    source = Path(dirpath) / filename
                    if source.is_file():
                        pairs.append((source.relative_to(folder).as_posix(), source))
            if not pairs:
                raise UserError(f"cannot register {what}: files folder '{folder}' contains no files")
        else:
            raise UserError(f"cannot register {what}: files must be a folder or a mapping, not a "
                            f"{type(files).__name__}")

        sources: list[_Source] = []
        for relpath, source in sorted(pairs):
            if not source.is_file():
                raise UserError(f"cannot register {what}: source file '{source}' for {relpath!r} does not exist "
                                f"or is not a regular file")
            try:
                if _is_pickle(source):
                    raise UserError(f"cannot register {what}: {relpath!r} is a Python pickle (torch.save or "
                                    f"pickle.dump); the catalog holds only data that loads without running code, "
                                    f"save tensors with safetensors instead")
                sha256, size = _hash_file(source)
            except OSError as exc:
                raise UserError(f"cannot register {what}: cannot read '{source}': {exc.strerror or exc}") from exc
            sources.append(_Source(relpath=relpath, source=source, sha256=sha256, size=size))
        return tuple(sources)

    def _blob_path(self, sha256: str) -> Path:
        return self._blobs / sha256[:2] / sha256

    def _store_blob(self, source: _Source, what: str) -> tuple[str, str, int, int, int] | None:
        """Copy one source file into the blob store unless an intact blob is already there.

        The copy goes to a temporary file under ``tmp/`` (same filesystem), is re-hashed while copying, fsynced,
        made read-only and then renamed over the final name, so readers only ever see complete blobs.
        Returns the ``file_checks`` row of the blob it wrote (None if an intact-looking blob was there)."""
        final = self._blob_path(source.sha256)
        try:
            if final.stat().st_size == source.size:
                return None
        except FileNotFoundError:
            pass
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=f"{_scratch_owner()}-{source.sha256[:12]}-",
                                        suffix=".part")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, source.source.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != source.sha256:
                raise UserError(f"cannot register {what}: '{source.source}' changed while it was being "
                                f"registered")
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
            return self._check_row(final, source.sha256)
        finally:
            tmp.unlink(missing_ok=True)

    def _upload_sources(self, sources: Sequence[_Source], what: str,
                        verified: set[str]) -> list[tuple[str, str, int, int, int]]:
        """Upload the blob of every source the remote does not hold yet, from the local blob store (storing it
        there first when it is missing). A local blob that was already there, and not among the ``verified``
        hashes just written, is re-hashed before it leaves the machine. Returns the ``file_checks`` rows of blobs
        stored locally on the way."""
        assert self.remote is not None
        remote = self.remote

        def upload(source: _Source) -> tuple[str, str, int, int, int] | None:
            if remote.size(source.sha256) == source.size:
                return None
            row = self._store_blob(source, what)
            blob = self._blob_path(source.sha256)
            if row is None and source.sha256 not in verified and _hash_file(blob)[0] != source.sha256:
                raise UserError(f"cannot register {what}: the catalog's copy of {source.relpath!r} "
                                f"({blob.relative_to(self.root).as_posix()}) is corrupt; run 'vlforge catalog verify'")
            remote.upload(blob, source.sha256)
            return row

        unique = list({source.sha256: source for source in sources}.values())
        with ThreadPoolExecutor(max_workers=_REMOTE_WORKERS) as pool:
            return [row for row in pool.map(upload, unique) if row is not None]

    def _fetch_blob(self, artifact: Artifact, entry: FileEntry) -> tuple[str, str, int, int, int]:
        """Download one blob from the remote into the local store: to a scratch file under ``tmp/``, hashed on the
        way, renamed into place only if it holds what the index recorded. Returns its ``file_checks`` row."""
        assert self.remote is not None
        label = f"artifact {artifact.name}:{artifact.version} ({artifact.short_id})"
        where = self.remote.location(entry.sha256)
        final = self._blob_path(entry.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=f"{_scratch_owner()}-{entry.sha256[:12]}-",
                                        suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    actual = self.remote.download(entry.sha256, out)
                except FileNotFoundError:
                    raise UserError(f"{label} is damaged: file {entry.path!r} is missing from the local catalog "
                                    f"and from the remote ({where})") from None
                out.flush()
                os.fsync(out.fileno())
            if actual != entry.sha256:
                raise UserError(f"{label} is corrupt on the remote: file {entry.path!r} has sha256 "
                                f"{actual[:16]}..., the catalog recorded {entry.sha256[:16]}... ({where})")
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
            return self._check_row(final, entry.sha256)
        finally:
            tmp.unlink(missing_ok=True)

    def _fetch_missing(self, artifact: Artifact) -> tuple[int, int]:
        """Fetch every blob of ``artifact`` that the local store lacks from the remote (if there is one).
        Returns ``(blobs fetched, bytes)``."""
        missing = list({entry.sha256: entry for entry in artifact.files
                        if not self._blob_path(entry.sha256).is_file()}.values())
        if self.remote is None or not missing:
            return 0, 0
        with ThreadPoolExecutor(max_workers=_REMOTE_WORKERS) as pool:
            rows = list(pool.map(lambda entry: self._fetch_blob(artifact, entry), missing))
        with self._connect() as conn, self._transaction(conn):
            conn.executemany("INSERT OR REPLACE INTO file_checks (path, sha256, size, mtime_ns, inode)"
                             " VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows), sum(entry.size for entry in missing)

    def _check_row(self, path: Path, sha256: str) -> tuple[str, str, int, int, int]:
        """A ``file_checks`` row saying that ``path`` as it stands now holds content ``sha256``."""
        st = path.stat()
        return (path.relative_to(self.root).as_posix(), sha256, st.st_size, st.st_mtime_ns, st.st_ino)

    def _exists(self, artifact_id: str) -> bool:
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM artifacts WHERE id = ?", (artifact_id,)).fetchone() is not None

    def _commit(self, pending: _Pending, checks: Sequence[tuple[str, str, int, int, int]] = ()) -> list[_Source]:
        """Insert a prepared registration in one ``BEGIN IMMEDIATE`` transaction (all or nothing).

        :meth:`gc` deletes unreferenced blobs while holding the same write lock, so checking under the lock
        that every blob is present makes "blob stored, then referenced" atomic against it. Returns the sources
        whose blobs are missing (nothing inserted then), or an empty list once committed."""
        with self._connect() as conn, self._transaction(conn):
            if not conn.execute("SELECT 1 FROM artifacts WHERE id = ?", (pending.id,)).fetchone():
                missing = [source for source in pending.files if not self._blob_path(source.sha256).is_file()]
                if missing:
                    return missing
            self._insert(conn, pending)
            conn.executemany("INSERT OR REPLACE INTO file_checks (path, sha256, size, mtime_ns, inode)"
                             " VALUES (?, ?, ?, ?, ?)", checks)
        return []

    def _insert(self, conn: sqlite3.Connection, pending: _Pending) -> None:
        """The statements of one registration, run inside :meth:`_commit`'s transaction.

        If the id is already there (another process won the race, or a plain re-registration) only the cache
        key is recorded. Otherwise the next version of the name is taken, the rows are inserted and
        ``name@latest`` moves to the new artifact."""
        exists = conn.execute("SELECT 1 FROM artifacts WHERE id = ?", (pending.id,)).fetchone() is not None
        if not exists:
            row = conn.execute("SELECT kind FROM artifacts WHERE name = ? LIMIT 1", (pending.name,)).fetchone()
            if row is not None and row[0] != pending.kind:
                raise UserError(f"cannot register {pending.kind!r} artifact {pending.name!r}: the name is already "
                                f"used by kind {row[0]!r}")
            for parent_id in pending.parents:
                if conn.execute("SELECT 1 FROM artifacts WHERE id = ?", (parent_id,)).fetchone() is None:
                    raise UserError(f"cannot register {pending.kind!r} artifact {pending.name!r}: parent "
                                    f"{parent_id!r} is not in the catalog")
            version = conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM artifacts WHERE name = ?",
                                   (pending.name,)).fetchone()[0]
            created_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
            conn.execute(
                "INSERT INTO artifacts (id, kind, name, version, family, config, metrics, cache_key, code_version,"
                " packages, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pending.id, pending.kind, pending.name, version, pending.family, pending.config_json,
                 pending.metrics_json, pending.cache_key, pending.code_version, pending.packages_json, created_at),
            )
            conn.executemany(
                "INSERT INTO files (artifact_id, path, sha256, size) VALUES (?, ?, ?, ?)",
                [(pending.id, source.relpath, source.sha256, source.size) for source in pending.files],
            )
            conn.executemany(
                "INSERT INTO parents (child_id, position, parent_id) VALUES (?, ?, ?)",
                [(pending.id, position, parent_id) for position, parent_id in enumerate(pending.parents)],
            )
            self._point_alias(conn, pending.name, _LATEST, pending.id)
        if pending.cache_key is not None:
            conn.execute("INSERT OR IGNORE INTO cache_keys (cache_key, artifact_id) VALUES (?, ?)",
                         (pending.cache_key, pending.id))

    @staticmethod
    def _point_alias(conn: sqlite3.Connection, name: str, alias: str, artifact_id: str) -> None:
        conn.execute(
            "INSERT INTO aliases (name, alias, artifact_id) VALUES (?, ?, ?)"
            " ON CONFLICT (name, alias) DO UPDATE SET artifact_id = excluded.artifact_id",
            (name, alias, artifact_id),
        )

    # ------------------------------------------------------------------ lookup

    def resolve(self, ref: str) -> str:
        """Return the full id that ``ref`` names. Tried in order: a full 64-hex id; ``name@alias``;
        ``name:version``; a hex prefix of at least 4 digits matching exactly one id; a bare name (its
        ``latest``). Raises :class:`UserError` if nothing matches or a prefix is ambiguous."""
        with self._connect() as conn:
            return self._resolve(conn, ref)

    def _resolve(self, conn: sqlite3.Connection, ref: str) -> str:
        if not isinstance(ref, str) or not ref:
            raise UserError(f"invalid artifact reference {ref!r}: expected an id, prefix, name, name@alias or "
                            f"name:version")
        lowered = ref.lower()
        if _HEX64.fullmatch(lowered):
            if conn.execute("SELECT 1 FROM artifacts WHERE id = ?", (lowered,)).fetchone():
                return lowered
        if "@" in ref:
            name, _, alias = ref.partition("@")
            row = conn.execute("SELECT artifact_id FROM aliases WHERE name = ? AND alias = ?",
                               (name, alias)).fetchone()
            if row is None:
                raise UserError(f"unknown artifact reference {ref!r}: name {name!r} has no alias {alias!r}")
            return str(row[0])
        name, colon, version = ref.rpartition(":")
        if colon and version.isdigit():
            row = conn.execute("SELECT id FROM artifacts WHERE name = ? AND version = ?",
                               (name, int(version))).fetchone()
            if row is None:
                raise UserError(f"unknown artifact reference {ref!r}: name {name!r} has no version {int(version)}")
            return str(row[0])
        if _HEX_PREFIX.fullmatch(lowered):
            # Hex digits sort below 'g', so [prefix, prefix + 'g') is exactly the ids starting with prefix.
            rows = conn.execute("SELECT id FROM artifacts WHERE id >= ? AND id < ? LIMIT 2",
                                (lowered, lowered + "g")).fetchall()
            if len(rows) == 1:
                return str(rows[0][0])
            if rows:
                count = conn.execute("SELECT COUNT(*) FROM artifacts WHERE id >= ? AND id < ?",
                                     (lowered, lowered + "g")).fetchone()[0]
                raise UserError(f"ambiguous artifact reference {ref!r}: the prefix matches {count} ids; give more "
                                f"digits")
        row = conn.execute("SELECT artifact_id FROM aliases WHERE name = ? AND alias = ?",
                           (ref, _LATEST)).fetchone()
        if row is not None:
            return str(row[0])
        raise UserError(f"unknown artifact reference {ref!r}: no id, prefix or name matches")

    def exists(self, artifact_id: str) -> bool:
        """Whether a full artifact id is registered (no reference resolution)."""
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM artifacts WHERE id = ?", (artifact_id,)).fetchone() is not None

    def get(self, ref: str) -> Artifact:
        """Return the artifact that ``ref`` names (see :meth:`resolve`)."""
        with self._connect() as conn:
            artifact_id = self._resolve(conn, ref)
            return self._load(conn, "a.id = ?", (artifact_id,))[0]

    def list(self, kind: str | None = None, name: str | None = None) -> list[Artifact]:
        """All artifacts, optionally only those of one kind and/or name, newest registration first."""
        clauses: list[str] = []
        params: list[Any] = []
        if kind is not None:
            clauses.append("a.kind = ?")
            params.append(kind)
        if name is not None:
            clauses.append("a.name = ?")
            params.append(name)
        with self._connect() as conn:
            return self._load(conn, " AND ".join(clauses) or "1", tuple(params))

    def search(self, query: Query | None = None, *, limit: int | None = None, offset: int = 0) -> list[Artifact]:
        """The artifacts matching ``query``, ordered by its sort (newest registration first by default), at
        most ``limit`` of them after skipping ``offset``. Filtering, sorting and paging happen in SQLite, so a
        page costs about the same at 100,000 entries as at 100."""
        where, params, order = (query or Query()).sql()
        sql = f"SELECT a.id FROM artifacts a WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        with self._connect() as conn:
            ids = [row[0] for row in conn.execute(sql, params)]
            by_id = {artifact.id: artifact for artifact in self._load_ids(conn, ids)}
        return [by_id[artifact_id] for artifact_id in ids]

    def count(self, query: Query | None = None) -> int:
        """How many artifacts match ``query``."""
        where, params, _order = (query or Query()).sql()
        with self._connect() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM artifacts a WHERE {where}", params).fetchone()[0])

    def facets(self) -> dict[str, list[str]]:
        """The distinct kinds, families, tags and aliases in the catalog (for filter menus), each sorted."""
        with self._connect() as conn:
            return {
                "kind": [r[0] for r in conn.execute("SELECT DISTINCT kind FROM artifacts ORDER BY kind")],
                "family": [r[0] for r in conn.execute(
                    "SELECT DISTINCT family FROM artifacts WHERE family IS NOT NULL ORDER BY family")],
                "tag": [r[0] for r in conn.execute("SELECT DISTINCT tag FROM tags ORDER BY tag")],
                "alias": [r[0] for r in conn.execute("SELECT DISTINCT alias FROM aliases ORDER BY alias")],
            }

    def find_by_cache_key(self, cache_key: str) -> Artifact | None:
        """The artifact most recently registered (or re-registered) under ``cache_key``, or None."""
        with self._connect() as conn:
            row = conn.execute("SELECT artifact_id FROM cache_keys WHERE cache_key = ? ORDER BY seq DESC LIMIT 1",
                               (cache_key,)).fetchone()
            if row is None:
                return None
            return self._load(conn, "a.id = ?", (row[0],))[0]

    def _load(self, conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> list[Artifact]:
        """Read the artifacts matching ``where`` (over ``artifacts a``), newest first, with files, parents and
        aliases, in one read transaction so the parts are consistent."""
        selected = f"SELECT a.id FROM artifacts a WHERE {where}"
        conn.execute("BEGIN")
        try:
            rows = conn.execute(
                "SELECT a.id, a.kind, a.name, a.version, a.family, a.config, a.metrics, a.cache_key,"
                f" a.code_version, a.packages, a.created_at FROM artifacts a WHERE {where} ORDER BY a.seq DESC",
                params,
            ).fetchall()
            files: dict[str, list[FileEntry]] = {}
            for artifact_id, path, sha256, size in conn.execute(
                    f"SELECT artifact_id, path, sha256, size FROM files WHERE artifact_id IN ({selected})"
                    " ORDER BY artifact_id, path", params):
                files.setdefault(artifact_id, []).append(FileEntry(path=path, sha256=sha256, size=size))
            parents: dict[str, list[str]] = {}
            for child_id, parent_id in conn.execute(
                    f"SELECT child_id, parent_id FROM parents WHERE child_id IN ({selected})"
                    " ORDER BY child_id, position", params):
                parents.setdefault(child_id, []).append(parent_id)
            aliases: dict[str, list[str]] = {}
            for artifact_id, alias in conn.execute(
                    f"SELECT artifact_id, alias FROM aliases WHERE artifact_id IN ({selected}) ORDER BY alias",
                    params):
                aliases.setdefault(artifact_id, []).append(alias)
            tags: dict[str, list[str]] = {}
            for artifact_id, tag in conn.execute(
                    f"SELECT artifact_id, tag FROM tags WHERE artifact_id IN ({selected}) ORDER BY tag", params):
                tags.setdefault(artifact_id, []).append(tag)
        finally:
            conn.execute("COMMIT")
        return [
            Artifact(
                id=artifact_id, kind=kind, name=name, version=version, family=family, files=files.get(artifact_id, []),
                config=json.loads(config), parents=parents.get(artifact_id, []), metrics=json.loads(metrics),
                cache_key=cache_key, code_version=code_version, packages=json.loads(packages_json),
                created_at=created_at, aliases=aliases.get(artifact_id, []), tags=tags.get(artifact_id, []),
            )
            for (artifact_id, kind, name, version, family, config, metrics, cache_key, code_version, packages_json,
                 created_at) in rows
        ]

    # ------------------------------------------------------------------ files

    def path(self, ref: str) -> Path:
        """Return ``views/<id>/``, a read-only folder holding the artifact's files under their relative paths
        (hard links to the blobs, copies where linking fails), materialising it first if needed.

        The folder is built under a temporary name and renamed into place, so it appears complete or not at
        all; when several callers race, all of them return the same valid folder."""
        artifact = self.get(ref)
        final = self._views / artifact.id
        if final.is_dir():
            self._check_view(artifact, final)
            return final
        self._fetch_missing(artifact)
        self._check_files(artifact, [(entry, self._blob_path(entry.sha256)) for entry in artifact.files])
        building = self._views / f".building-{_scratch_owner()}-{artifact.id[:12]}-{uuid.uuid4().hex}"
        try:
            building.mkdir()
            for entry in artifact.files:
                target = building / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                blob = self._blob_path(entry.sha256)
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
            _remove_tree(building)
        self._check_view(artifact, final)
        return final

    # ------------------------------------------------------------------ remote

    def _require_remote(self, action: str) -> Any:
        if self.remote is None:
            raise UserError(f"cannot {action}: this catalog has no remote; set VLFORGE_CATALOG_REMOTE (e.g. "
                            f"s3://bucket/prefix) or open it with Catalog(root, remote=URL)")
        return self.remote

    def push(self, refs: Sequence[str] = ()) -> dict[str, int]:
        """Upload to the remote every blob of the artifacts ``refs`` name (every artifact when empty) that it
        does not hold yet, after checking the local copies. Returns counts: ``artifacts``, ``uploaded`` and
        ``present`` blobs, ``bytes`` uploaded."""
        remote = self._require_remote("push")
        artifacts = [self.get(ref) for ref in refs] if refs else self.list()
        todo: dict[str, tuple[Artifact, FileEntry]] = {}
        for artifact in artifacts:
            for entry in artifact.files:
                todo.setdefault(entry.sha256, (artifact, entry))
        with ThreadPoolExecutor(max_workers=_REMOTE_WORKERS) as pool:
            sizes = list(pool.map(remote.size, todo))
        needed = [item for item, size in zip(todo.values(), sizes) if size != item[1].size]
        by_artifact: dict[str, list[tuple[FileEntry, Path]]] = {}
        for artifact, entry in needed:
            by_artifact.setdefault(artifact.id, []).append((entry, self._blob_path(entry.sha256)))
        for artifact in artifacts:  # nothing corrupt or missing leaves the machine
            if artifact.id in by_artifact:
                self._check_files(artifact, by_artifact[artifact.id])
        with ThreadPoolExecutor(max_workers=_REMOTE_WORKERS) as pool:
            list(pool.map(lambda item: remote.upload(self._blob_path(item[1].sha256), item[1].sha256), needed))
        return {"artifacts": len(artifacts), "uploaded": len(needed), "present": len(todo) - len(needed),
                "bytes": sum(entry.size for _, entry in needed)}

    def pull(self, ref: str) -> dict[str, Any]:
        """Fetch every blob of the artifact ``ref`` names that the local store lacks from the remote, check it,
        and materialise its view. Returns ``id``, ``fetched`` blobs, ``bytes`` fetched and the view's ``path``."""
        self._require_remote("pull")
        artifact = self.get(ref)
        fetched, size = self._fetch_missing(artifact)
        return {"id": artifact.id, "name": artifact.name, "version": artifact.version, "fetched": fetched,
                "bytes": size, "path": str(self.path(artifact.id))}

    def backup_index(self, target: Path | str) -> Path:
        """Write a consistent copy of the index to ``target`` (SQLite's online backup, safe while others write):
        what another machine sharing this catalog's remote needs to see its artifacts."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            copy = sqlite3.connect(target)
            try:
                conn.backup(copy)
            finally:
                copy.close()
        return target

    def _check_view(self, artifact: Artifact, view: Path) -> None:
        """Check a view's files: a hard link shares its blob's inode, so checking the blob covers it; a copy is
        checked on its own."""
        pairs: list[tuple[FileEntry, Path]] = []
        for entry in artifact.files:
            target = view / entry.path
            blob = self._blob_path(entry.sha256)
            try:
                same = os.path.samefile(target, blob)
            except OSError:
                same = False
            pairs.append((entry, blob if same else target))
        self._check_files(artifact, pairs)

    def _check_files(self, artifact: Artifact, pairs: Sequence[tuple[FileEntry, Path]]) -> None:
        """Raise :class:`UserError` if any file is missing or no longer holds its recorded content.

        A file whose size, mtime and inode match its ``file_checks`` row is trusted without reading it; any
        other is re-hashed (and the row refreshed when it is intact). Editing a blob in place changes its
        mtime, so a changed blob is caught the next time anything loads it."""
        rels = [path.relative_to(self.root).as_posix() for _, path in pairs]
        known: dict[str, tuple[Any, ...]] = {}
        with self._connect() as conn:
            for start in range(0, len(rels), 500):  # stay far below SQLite's bound-variable limit
                chunk = rels[start:start + 500]
                known |= {row[0]: tuple(row[1:]) for row in conn.execute(
                    f"SELECT path, sha256, size, mtime_ns, inode FROM file_checks WHERE path IN"
                    f" ({','.join('?' * len(chunk))})", chunk)}
        fresh: list[tuple[str, str, int, int, int]] = []
        for entry, path in pairs:
            rel = path.relative_to(self.root).as_posix()
            try:
                st = path.stat()
            except FileNotFoundError:
                raise UserError(f"artifact {artifact.name}:{artifact.version} ({artifact.short_id}) is damaged: "
                                f"file {entry.path!r} is missing from the catalog ({rel}); run "
                                f"'vlforge catalog verify'") from None
            if known.get(rel) == (entry.sha256, st.st_size, st.st_mtime_ns, st.st_ino):
                continue
            sha256, _size = _hash_file(path)
            if sha256 != entry.sha256:
                raise UserError(f"artifact {artifact.name}:{artifact.version} ({artifact.short_id}) is corrupt: "
                                f"file {entry.path!r} has sha256 {sha256[:16]}..., the catalog recorded "
                                f"{entry.sha256[:16]}... ({rel}); run 'vlforge catalog verify'")
            fresh.append(self._check_row(path, sha256))
        if fresh:
            with self._connect() as conn, self._transaction(conn):
                conn.executemany("INSERT OR REPLACE INTO file_checks (path, sha256, size, mtime_ns, inode)"
                                 " VALUES (?, ?, ?, ?, ?)", fresh)

    # ------------------------------------------------------------------ aliases

    def set_alias(self, name: str, alias: str, ref: str) -> None:
        """Point ``name@alias`` at the artifact ``ref`` names, which must be an artifact called ``name``.
        Aliases match ``[A-Za-z][A-Za-z0-9_.-]*``; ``latest`` may be set too, and registration moves it."""
        if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
            raise UserError(f"invalid alias {alias!r}: aliases must match [A-Za-z][A-Za-z0-9_.-]*")
        with self._connect() as conn, self._transaction(conn):
            artifact_id = self._resolve(conn, ref)
            actual = conn.execute("SELECT name FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()[0]
            if actual != name:
                raise UserError(f"cannot set alias {name}@{alias}: {ref!r} is an artifact named {actual!r}, "
                                f"not {name!r}")
            self._point_alias(conn, name, alias, artifact_id)

    def remove_alias(self, name: str, alias: str) -> str:
        """Remove ``name@alias`` and return the id it pointed at. ``latest`` belongs to the catalog (it moves
        on every registration and bare names resolve through it), so it cannot be removed."""
        if alias == _LATEST:
            raise UserError(f"cannot remove alias {name}@{alias}: 'latest' is managed by the catalog")
        with self._connect() as conn, self._transaction(conn):
            row = conn.execute("SELECT artifact_id FROM aliases WHERE name = ? AND alias = ?",
                               (name, alias)).fetchone()
            if row is None:
                raise UserError(f"cannot remove alias {name}@{alias}: name {name!r} has no alias {alias!r}")
            conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
            return str(row[0])

    # ------------------------------------------------------------------ tags

    def tag(self, ref: str, tags: Sequence[str], *, remove: bool = False) -> Artifact:
        """Add (or with ``remove=True`` remove) free labels on the artifact ``ref`` names; labels match
        ``[A-Za-z][A-Za-z0-9_.-]*``. Tags are not part of an artifact's identity."""
        for tag in tags:
            if not isinstance(tag, str) or not _ALIAS.fullmatch(tag):
                raise UserError(f"invalid tag {tag!r}: tags must match [A-Za-z][A-Za-z0-9_.-]*")
        with self._connect() as conn, self._transaction(conn):
            artifact_id = self._resolve(conn, ref)
            if remove:
                conn.executemany("DELETE FROM tags WHERE artifact_id = ? AND tag = ?",
                                 [(artifact_id, tag) for tag in tags])
            else:
                conn.executemany("INSERT OR IGNORE INTO tags (artifact_id, tag) VALUES (?, ?)",
                                 [(artifact_id, tag) for tag in tags])
        return self.get(artifact_id)

    # ------------------------------------------------------------------ lineage

    def ancestors(self, ref: str) -> list[Artifact]:
        """Every artifact ``ref`` was transitively made from, nearest first (breadth-first, parents in their
        given order), each once; the artifact itself is not included."""
        return self._walk(ref, "SELECT parent_id FROM parents WHERE child_id = ? ORDER BY position")

    def descendants(self, ref: str) -> list[Artifact]:
        """Every artifact transitively made from ``ref``, nearest first (breadth-first, children in
        registration order), each once; the artifact itself is not included."""
        return self._walk(ref, "SELECT p.child_id FROM parents p JOIN artifacts a ON a.id = p.child_id"
                               " WHERE p.parent_id = ? ORDER BY a.seq")

    def _walk(self, ref: str, neighbours_sql: str) -> list[Artifact]:
        with self._connect() as conn:
            start = self._resolve(conn, ref)
            seen = {start}
            order: list[str] = []
            frontier = [start]
            while frontier:
                following: list[str] = []
                for node in frontier:
                    for (neighbour,) in conn.execute(neighbours_sql, (node,)):
                        if neighbour not in seen:
                            seen.add(neighbour)
                            order.append(neighbour)
                            following.append(neighbour)
                frontier = following
            by_id = {artifact.id: artifact for artifact in self._load_ids(conn, order)}
        return [by_id[artifact_id] for artifact_id in order]

    def _load_ids(self, conn: sqlite3.Connection, ids: Sequence[str]) -> list[Artifact]:
        loaded: list[Artifact] = []
        for start in range(0, len(ids), 500):
            chunk = tuple(ids[start:start + 500])
            loaded.extend(self._load(conn, f"a.id IN ({','.join('?' * len(chunk))})", chunk))
        return loaded

    def lineage_tree(self, ref: str) -> dict[str, Any]:
        """``{"artifact": Artifact, "parents": [subtree, ...]}`` for ``ref`` and, recursively, its parents in
        their given order. An ancestor reached along two paths appears in both subtrees."""
        root_id = self.resolve(ref)
        ancestors = {artifact.id: artifact for artifact in self.ancestors(root_id)}
        ancestors[root_id] = self.get(root_id)

        def subtree(artifact_id: str) -> dict[str, Any]:
            artifact = ancestors[artifact_id]
            return {"artifact": artifact, "parents": [subtree(parent) for parent in artifact.parents]}

        return subtree(root_id)

    def descendants_tree(self, ref: str) -> dict[str, Any]:
        """``{"artifact": Artifact, "children": [subtree, ...]}``: what was made from ``ref``, recursively,
        children in registration order. An artifact made from two nodes appears under both."""
        root = self.get(ref)
        found = self.descendants(root.id)
        children: dict[str, list[Artifact]] = {}
        for artifact in found:
            for parent in dict.fromkeys(artifact.parents):
                children.setdefault(parent, []).append(artifact)

        def subtree(artifact: Artifact) -> dict[str, Any]:
            return {"artifact": artifact, "children": [subtree(child) for child in children.get(artifact.id, [])]}

        return subtree(root)
