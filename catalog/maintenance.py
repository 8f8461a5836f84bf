"""Keeping a catalog trustworthy: ``verify`` re-hashes every stored file and reports corruption, ``gc`` removes
what no artifact can reach (orphan blobs from killed registrations, scratch files of dead writers).

Where it sits: beside the store (:mod:`vlforge.catalog.store`), run by hand or from cron through
``vlforge catalog verify`` / ``vlforge catalog gc``; no pipeline stage calls it. Neither ever deletes or rewrites
anything an artifact references: entries are immutable, and ``gc`` decides what is unreferenced while holding
the index's write lock, which registration also takes before it references a blob.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlforge.catalog.store import Catalog, _hash_file, _remove_tree

__all__ = ["GcReport", "Problem", "VerifyReport", "gc", "verify"]

# Scratch left by a writer on another host cannot be checked for liveness; it is removed only once this old.
_FOREIGN_SCRATCH_AGE_S = 24 * 3600


@dataclass(frozen=True)
class Problem:
    """One stored file that does not hold what the index says."""

    status: str
    """``corrupt`` (content hashes differently) or ``missing``."""
    path: str
    """Relative to the catalog root."""
    sha256: str
    """What the index recorded."""
    actual_sha256: str | None
    artifacts: list[str]
    """``name:version (short id) file`` of every artifact that holds this content."""


@dataclass
class VerifyReport:
    files: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    remote_only: int = 0
    """Blobs absent from the local cache that the catalog's remote holds (fetched when loaded, so no problem)."""

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class GcReport:
    dry_run: bool
    blobs: list[str] = field(default_factory=list)
    """Relative paths of unreferenced blobs (removed unless ``dry_run``)."""
    scratch: list[str] = field(default_factory=list)
    """Relative paths of dead writers' scratch files and half-built views."""
    bytes: int = 0


def verify(catalog: Catalog) -> VerifyReport:
    """Re-hash every blob the index references, and every view file that is a copy rather than a hard link,
    and report each that is missing or changed, with the artifacts that hold it. With a remote, a blob missing
    locally is fine if the remote holds it (it is fetched, and its hash checked, when loaded)."""
    report = VerifyReport()
    with catalog._connect() as conn:
        holders: dict[str, list[str]] = {}
        for sha256, name, version, artifact_id, relpath in conn.execute(
                "SELECT f.sha256, a.name, a.version, a.id, f.path FROM files f JOIN artifacts a ON a.id = f.artifact_id"
                " ORDER BY a.seq, f.path"):
            holders.setdefault(sha256, []).append(f"{name}:{version} ({artifact_id[:12]}) {relpath}")
        view_files = conn.execute("SELECT artifact_id, path, sha256 FROM files WHERE artifact_id IN"
                                  " (SELECT id FROM artifacts)").fetchall()
    good: list[tuple[str, str, int, int, int]] = []

    def check(path: Path, sha256: str, who: list[str]) -> None:
        rel = path.relative_to(catalog.root).as_posix()
        if not path.is_file():
            if catalog.remote is not None and path == catalog._blob_path(sha256) \
                    and catalog.remote.size(sha256) is not None:
                report.remote_only += 1
                return
            report.problems.append(Problem("missing", rel, sha256, None, who))
            return
        actual, size = _hash_file(path)
        report.files += 1
        report.bytes += size
        if actual != sha256:
            report.problems.append(Problem("corrupt", rel, sha256, actual, who))
        else:
            good.append(catalog._check_row(path, sha256))

    for sha256, who in holders.items():
        check(catalog._blob_path(sha256), sha256, who)
    for artifact_id, relpath, sha256 in view_files:
        target = catalog.root / "views" / artifact_id / relpath
        if not target.exists():
            continue  # views are made on demand; an absent one is rebuilt from the (checked) blobs
        try:
            if os.path.samefile(target, catalog._blob_path(sha256)):
                continue
        except OSError:
            pass
        check(target, sha256, [who for who in holders.get(sha256, []) if f"({artifact_id[:12]})" in who])
    if good:
        with catalog._connect() as conn, catalog._transaction(conn):
            conn.executemany("INSERT OR REPLACE INTO file_checks (path, sha256, size, mtime_ns, inode)"
                             " VALUES (?, ?, ?, ?, ?)", good)
    return report


def _writer_is_dead(name: str, now: float, mtime: float) -> bool:
    """Whether the scratch file ``name`` (``<host>.<pid>-...`` or ``.building-<host>.<pid>-...``) belongs to a
    writer that is gone: a pid on this host that no longer runs, or anything older than a day."""
    if now - mtime > _FOREIGN_SCRATCH_AGE_S:
        return True
    owner = name.removeprefix(".building-").split("-", 1)[0]
    host, _, pid = owner.rpartition(".")
    from vlforge.catalog.store import _scratch_owner

    if not pid.isdigit() or host != _scratch_owner().rpartition(".")[0]:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def gc(catalog: Catalog, *, dry_run: bool = False) -> GcReport:
    """Remove blobs no artifact references and scratch files of writers that are gone; with ``dry_run`` only
    report them. Runs under the index's write lock so no registration can reference a blob mid-sweep."""
    report = GcReport(dry_run=dry_run)
    now = time.time()
    with catalog._connect() as conn, catalog._transaction(conn):
        referenced = {row[0] for row in conn.execute("SELECT DISTINCT sha256 FROM files")}
        for blob in sorted(catalog._blobs.glob("*/*")):
            if blob.is_file() and blob.name not in referenced:
                report.blobs.append(blob.relative_to(catalog.root).as_posix())
                report.bytes += blob.stat().st_size
                if not dry_run:
                    blob.unlink(missing_ok=True)
                    conn.execute("DELETE FROM file_checks WHERE path = ?", (report.blobs[-1],))
        scratch = [*catalog._tmp.iterdir(), *catalog._views.glob(".building-*")]
        for leftover in sorted(scratch):
            try:
                st = leftover.lstat()
            except FileNotFoundError:
                continue
            if not _writer_is_dead(leftover.name, now, st.st_mtime):
                continue
            report.scratch.append(leftover.relative_to(catalog.root).as_posix())
            report.bytes += st.st_size if leftover.is_file() else 0
            if not dry_run:
                if leftover.is_dir():
                    _remove_tree(leftover)
                else:
                    leftover.unlink(missing_ok=True)
    return report
