"""The catalog's index: one SQLite database (WAL mode) of artifacts, their files, parents (ordered lineage
edges), aliases, tags, cache keys, and the stat cache of files last seen intact.

Where it sits: the metadata half of :class:`vlforge.catalog.store.Catalog` (the bytes half is
:mod:`vlforge.catalog.blobs`). It never reads or writes a blob; where registration must know that every blob is
present, the caller passes a predicate that is asked under the write lock.

Guarantees: the rows of one registration (version assignment, files, parents, the ``latest`` alias) go in in a
single ``BEGIN IMMEDIATE`` transaction, so concurrent processes never lose or duplicate a version and a process
killed mid-registration leaves nothing visible. Reads of one artifact's parts happen in one read transaction.
Each operation opens its own connection, so one :class:`Index` may be shared between threads and any number of
processes may use the same file. A damaged database file is one :class:`UserError` line, not a traceback.
"""
from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from vlforge.catalog.blobs import CheckRow, SourceFile
from vlforge.errors import UserError

__all__ = ["Artifact", "FileEntry", "Index", "Query", "Registration"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{4,64}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
LATEST = "latest"
_BUSY_TIMEOUT_S = 30.0
_SCHEMA_VERSION = 2
_CHUNK_IDS = 500  # ids per statement, far below SQLite's bound-variable limit

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
class Registration:
    """Everything about a registration that is known before the index transaction."""

    id: str
    kind: str
    name: str
    family: str | None
    files: tuple[SourceFile, ...]
    config_json: str
    metrics_json: str
    parents: tuple[str, ...]
    cache_key: str | None
    code_version: str | None
    packages_json: str


class Index:
    """The SQLite index at one path, created (schema and WAL mode) if it is missing."""

    def __init__(self, db: Path) -> None:
        self.db = db
        with self.connect() as conn:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            if conn.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
                with self.transaction(conn):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    # ------------------------------------------------------------------ connections

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection in autocommit mode (transactions are explicit), closed on exit."""
        conn = sqlite3.connect(self.db, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn
        except sqlite3.DatabaseError as exc:
            # Exactly DatabaseError ("file is not a database", "malformed"): the index file itself is damaged,
            # which a user can cause (a truncated copy, a stray write). Subclasses (locked, integrity) are bugs.
            if type(exc) is sqlite3.DatabaseError:
                raise UserError(f"catalog index '{self.db}' is corrupt ({exc}); restore it from a backup") \
                    from None
            raise
        finally:
            conn.close()

    @staticmethod
    @contextmanager
    def transaction(conn: sqlite3.Connection) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` (take the write lock now) ... ``COMMIT``, or ``ROLLBACK`` on any exception."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def backup(self, target: Path) -> Path:
        """Write a consistent copy of the database to ``target`` (SQLite's online backup, safe while others
        write)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as conn:
            copy = sqlite3.connect(target)
            try:
                conn.backup(copy)
            finally:
                copy.close()
        return target

    # ------------------------------------------------------------------ registration

    def commit(self, pending: Registration, checks: Sequence[CheckRow],
               blob_present: Callable[[str], bool]) -> list[SourceFile]:
        """Insert a prepared registration in one ``BEGIN IMMEDIATE`` transaction (all or nothing).

        gc deletes unreferenced blobs while holding the same write lock, so asking ``blob_present`` under the
        lock for every file makes "blob stored, then referenced" atomic against it. Returns the sources whose
        blobs are missing (nothing inserted then), or an empty list once committed."""
        with self.connect() as conn, self.transaction(conn):
            if not conn.execute("SELECT 1 FROM artifacts WHERE id = ?", (pending.id,)).fetchone():
                missing = [source for source in pending.files if not blob_present(source.sha256)]
                if missing:
                    return missing
            self._insert(conn, pending)
            self._record_checks(conn, checks)
        return []

    def _insert(self, conn: sqlite3.Connection, pending: Registration) -> None:
        """The statements of one registration, run inside :meth:`commit`'s transaction.

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
            self._point_alias(conn, pending.name, LATEST, pending.id)
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

    # ------------------------------------------------------------------ the stat cache of intact files

    @staticmethod
    def _record_checks(conn: sqlite3.Connection, rows: Sequence[CheckRow]) -> None:
        conn.executemany("INSERT OR REPLACE INTO file_checks (path, sha256, size, mtime_ns, inode)"
                         " VALUES (?, ?, ?, ?, ?)", rows)

    def record_checks(self, rows: Sequence[CheckRow]) -> None:
        """Remember that each file of ``rows`` was seen intact with that size, mtime and inode."""
        if rows:
            with self.connect() as conn, self.transaction(conn):
                self._record_checks(conn, rows)

    def file_checks(self, paths: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """``{path: (sha256, size, mtime_ns, inode)}`` for each of ``paths`` (relative to the catalog root)
        last seen intact."""
        known: dict[str, tuple[Any, ...]] = {}
        with self.connect() as conn:
            for start in range(0, len(paths), _CHUNK_IDS):
                chunk = list(paths[start:start + _CHUNK_IDS])
                known |= {row[0]: tuple(row[1:]) for row in conn.execute(
                    f"SELECT path, sha256, size, mtime_ns, inode FROM file_checks WHERE path IN"
                    f" ({','.join('?' * len(chunk))})", chunk)}
        return known

    # ------------------------------------------------------------------ lookup

    def resolve(self, ref: str) -> str:
        """Return the full id that ``ref`` names. Tried in order: a full 64-hex id; ``name@alias``;
        ``name:version``; a hex prefix of at least 4 digits matching exactly one id; a bare name (its
        ``latest``). Raises :class:`UserError` if nothing matches or a prefix is ambiguous."""
        with self.connect() as conn:
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
                           (ref, LATEST)).fetchone()
        if row is not None:
            return str(row[0])
        raise UserError(f"unknown artifact reference {ref!r}: no id, prefix or name matches")

    def exists(self, artifact_id: str) -> bool:
        """Whether a full artifact id is registered (no reference resolution)."""
        with self.connect() as conn:
            return conn.execute("SELECT 1 FROM artifacts WHERE id = ?", (artifact_id,)).fetchone() is not None

    def get(self, ref: str) -> Artifact:
        """Return the artifact that ``ref`` names (see :meth:`resolve`)."""
        with self.connect() as conn:
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
        with self.connect() as conn:
            return self._load(conn, " AND ".join(clauses) or "1", tuple(params))

    def search(self, query: Query | None = None, *, limit: int | None = None, offset: int = 0) -> list[Artifact]:
        """The artifacts matching ``query``, ordered by its sort (newest registration first by default), at
        most ``limit`` of them after skipping ``offset``. Filtering, sorting and paging happen in SQLite, so a
        page costs about the same at 100,000 entries as at 100."""
        where, params, order = (query or Query()).sql()
        sql = f"SELECT a.id FROM artifacts a WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        with self.connect() as conn:
            ids = [row[0] for row in conn.execute(sql, params)]
            by_id = {artifact.id: artifact for artifact in self._load_ids(conn, ids)}
        return [by_id[artifact_id] for artifact_id in ids]

    def count(self, query: Query | None = None) -> int:
        """How many artifacts match ``query``."""
        where, params, _order = (query or Query()).sql()
        with self.connect() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM artifacts a WHERE {where}", params).fetchone()[0])

    def facets(self) -> dict[str, list[str]]:
        """The distinct kinds, families, tags and aliases in the catalog (for filter menus), each sorted."""
        with self.connect() as conn:
            return {
                "kind": [r[0] for r in conn.execute("SELECT DISTINCT kind FROM artifacts ORDER BY kind")],
                "family": [r[0] for r in conn.execute(
                    "SELECT DISTINCT family FROM artifacts WHERE family IS NOT NULL ORDER BY family")],
                "tag": [r[0] for r in conn.execute("SELECT DISTINCT tag FROM tags ORDER BY tag")],
                "alias": [r[0] for r in conn.execute("SELECT DISTINCT alias FROM aliases ORDER BY alias")],
            }

    def find_by_cache_key(self, cache_key: str) -> Artifact | None:
        """The artifact most recently registered (or re-registered) under ``cache_key``, or None."""
        with self.connect() as conn:
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


    # ------------------------------------------------------------------ aliases

    def set_alias(self, name: str, alias: str, ref: str) -> None:
        """Point ``name@alias`` at the artifact ``ref`` names, which must be an artifact called ``name``.
        Aliases match ``[A-Za-z][A-Za-z0-9_.-]*``; ``latest`` may be set too, and registration moves it."""
        if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
            raise UserError(f"invalid alias {alias!r}: aliases must match [A-Za-z][A-Za-z0-9_.-]*")
        with self.connect() as conn, self.transaction(conn):
            artifact_id = self._resolve(conn, ref)
            actual = conn.execute("SELECT name FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()[0]
            if actual != name:
                raise UserError(f"cannot set alias {name}@{alias}: {ref!r} is an artifact named {actual!r}, "
                                f"not {name!r}")
            self._point_alias(conn, name, alias, artifact_id)

    def remove_alias(self, name: str, alias: str) -> str:
        """Remove ``name@alias`` and return the id it pointed at. ``latest`` belongs to the catalog (it moves
        on every registration and bare names resolve through it), so it cannot be removed."""
        if alias == LATEST:
            raise UserError(f"cannot remove alias {name}@{alias}: 'latest' is managed by the catalog")
        with self.connect() as conn, self.transaction(conn):
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
        with self.connect() as conn, self.transaction(conn):
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
        with self.connect() as conn:
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
        for start in range(0, len(ids), _CHUNK_IDS):
            chunk = tuple(ids[start:start + _CHUNK_IDS])
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
