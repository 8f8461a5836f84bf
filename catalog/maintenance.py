"""Keeping a catalog trustworthy: ``verify`` re-hashes every stored file and reports corruption, ``gc`` removes
what no artifact can reach (orphan blobs from killed registrations, scratch files of dead writers).

Where it sits: beside the catalog (:mod:`vlforge.catalog.store`), over its blob store and index, run by hand or
from cron through ``vlforge catalog verify`` / ``vlforge catalog gc``; no pipeline stage calls it. Neither ever
deletes or rewrites anything an artifact references: entries are immutable, and ``gc`` decides what is
unreferenced while holding the index's write lock, which registration also takes before it references a blob.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlforge.catalog.blobs import CheckRow, hash_file, remove_tree, scratch_owner
from vlforge.catalog.store import Catalog

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
    blobs, index = catalog.blobs, catalog.index
    with index.connect() as conn:
        holders: dict[str, list[str]] = {}
        for sha256, name, version, artifact_id, relpath in conn.execute(
                "SELECT f.sha256, a.name, a.version, a.id, f.path FROM files f JOIN artifacts a ON a.id = f.artifact_id"
                " ORDER BY a.seq, f.path"):
            holders.setdefault(sha256, []).append(f"{name}:{version} ({artifact_id[:12]}) {relpath}")
        view_files = conn.execute("SELECT artifact_id, path, sha256 FROM files WHERE artifact_id IN"
                                  " (SELECT id FROM artifacts)").fetchall()
    good: list[CheckRow] = []

    def check(path: Path, sha256: str, who: list[str]) -> None:
        rel = blobs.relative(path)
        if not path.is_file():
            if catalog.remote is not None and path == blobs.path(sha256) \
                    and catalog.remote.size(sha256) is not None:
                report.remote_only += 1
                return
            report.problems.append(Problem("missing", rel, sha256, None, who))
            return
        actual, size = hash_file(path)
        report.files += 1
        report.bytes += size
        if actual != sha256:
            report.problems.append(Problem("corrupt", rel, sha256, actual, who))
        else:
            good.append(blobs.check_row(path, sha256))

    for sha256, who in holders.items():
        check(blobs.path(sha256), sha256, who)
    for artifact_id, relpath, sha256 in view_files:
        target = blobs.view(artifact_id) / relpath
        if not target.exists():
            continue  # views are made on demand; an absent one is rebuilt from the (checked) blobs
        try:
            if os.path.samefile(target, blobs.path(sha256)):
                continue
        except OSError:
            pass
        check(target, sha256, [who for who in holders.get(sha256, []) if f"({artifact_id[:12]})" in who])
    index.record_checks(good)
    return report


def _writer_is_dead(name: str, now: float, mtime: float) -> bool:
    """Whether the scratch file ``name`` (``<host>.<pid>-...`` or ``.building-<host>.<pid>-...``) belongs to a
    writer that is gone: a pid on this host that no longer runs, or anything older than a day."""
    if now - mtime > _FOREIGN_SCRATCH_AGE_S:
        return True
    owner = name.removeprefix(".building-").split("-", 1)[0]
    host, _, pid = owner.rpartition(".")
    if not pid.isdigit() or host != scratch_owner().rpartition(".")[0]:
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
    with catalog.index.connect() as conn, catalog.index.transaction(conn):
        referenced = {row[0] for row in conn.execute("SELECT DISTINCT sha256 FROM files")}
        for blob in catalog.blobs.stored():
            if blob.name not in referenced:
                report.blobs.append(catalog.blobs.relative(blob))
                report.bytes += blob.stat().st_size
                if not dry_run:
                    blob.unlink(missing_ok=True)
                    conn.execute("DELETE FROM file_checks WHERE path = ?", (report.blobs[-1],))
        for leftover in catalog.blobs.scratch():
            try:
                st = leftover.lstat()
            except FileNotFoundError:
                continue
            if not _writer_is_dead(leftover.name, now, st.st_mtime):
                continue
            report.scratch.append(catalog.blobs.relative(leftover))
            report.bytes += st.st_size if leftover.is_file() else 0
            if not dry_run:
                if leftover.is_dir():
                    remove_tree(leftover)
                else:
                    leftover.unlink(missing_ok=True)
    return report
