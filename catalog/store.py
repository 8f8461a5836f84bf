"""The artifact catalog: a content-addressed, immutable store of everything the pipeline produces, with lineage.

Where it sits in the DAG: every stage (crawl/shard -> dataset, tokenizer training, pretraining -> model,
evaluation -> eval) registers its outputs here, naming the artifacts it consumed as ``parents``. Downstream
stages, the CLI and reports find their inputs by reference (``clip@latest``, ``clip:3``, an id prefix), and a
stage can skip work when :meth:`Catalog.find_by_cache_key` already knows its cache key.

:class:`Catalog` is a thin facade over two parts: :class:`~vlforge.catalog.blobs.BlobStore` (the bytes:
``blobs/``, ``tmp/``, ``views/``, and optionally a remote) and :class:`~vlforge.catalog.index.Index` (the
metadata: ``index.sqlite``). It adds what needs both: registration (validate, hash, store the blobs, then
commit the rows), loading a checked view, and push/pull. Layout under the root folder (the caller passes
``$VLFORGE_HOME/catalog``)::

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
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from vlforge.catalog.blobs import BlobStore, CheckRow, SourceFile, hash_file, is_pickle
from vlforge.catalog.index import Artifact, FileEntry, Index, Query, Registration
from vlforge.errors import UserError

__all__ = [
    "Artifact",
    "Query",
    "Catalog",
    "FileEntry",
    "detect_code_version",
    "packages_snapshot",
]

_KIND = re.compile(r"[a-z][a-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


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
        self.blobs = BlobStore(self.root, self.remote)
        self.index = Index(self.root / "index.sqlite")

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
        pending = Registration(
            id=artifact_id, kind=kind, name=name, family=family, files=sources, config_json=config_json,
            metrics_json=metrics_json, parents=parent_ids, cache_key=cache_key, code_version=code_version,
            packages_json=_canonical_json(packages),
        )

        checks: list[CheckRow] = []
        if not self.index.exists(artifact_id):
            for source in sources:
                if (row := self.blobs.store(source, what)) is not None:
                    checks.append(row)
        if self.remote is not None:
            # every blob is on the remote before the index can name the artifact
            checks.extend(self.blobs.upload_sources(sources, what, verified={row[1] for row in checks}))
        for _attempt in range(5):
            missing = self.index.commit(pending, checks, self.blobs.has)
            if not missing:
                return self.get(artifact_id)
            # `gc` removed a blob we stored (it was unreferenced until our commit): store it again and retry.
            checks = [row for source in missing if (row := self.blobs.store(source, what)) is not None]
        raise RuntimeError(f"registration of {what} kept losing its blobs to a concurrent gc")

    def _collect(self, files: Path | str | Mapping[str, Path | str], what: str) -> tuple[SourceFile, ...]:
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

        sources: list[SourceFile] = []
        for relpath, source in sorted(pairs):
            if not source.is_file():
                raise UserError(f"cannot register {what}: source file '{source}' for {relpath!r} does not exist "
                                f"or is not a regular file")
            try:
                if is_pickle(source):
                    raise UserError(f"cannot register {what}: {relpath!r} is a Python pickle (torch.save or "
                                    f"pickle.dump); the catalog holds only data that loads without running code, "
                                    f"save tensors with safetensors instead")
                sha256, size = hash_file(source)
            except OSError as exc:
                raise UserError(f"cannot register {what}: cannot read '{source}': {exc.strerror or exc}") from exc
            sources.append(SourceFile(relpath=relpath, source=source, sha256=sha256, size=size))
        return tuple(sources)


    # ------------------------------------------------------------------ lookup (the index's)

    def resolve(self, ref: str) -> str:
        """The full id that ``ref`` names (see :meth:`Index.resolve`)."""
        return self.index.resolve(ref)

    def exists(self, artifact_id: str) -> bool:
        """Whether a full artifact id is registered (no reference resolution)."""
        return self.index.exists(artifact_id)

    def get(self, ref: str) -> Artifact:
        """The artifact that ``ref`` names (see :meth:`resolve`)."""
        return self.index.get(ref)

    def list(self, kind: str | None = None, name: str | None = None) -> list[Artifact]:
        """All artifacts, optionally only those of one kind and/or name, newest registration first."""
        return self.index.list(kind, name)

    def search(self, query: Query | None = None, *, limit: int | None = None, offset: int = 0) -> list[Artifact]:
        """The artifacts matching ``query``, one page of them (see :meth:`Index.search`)."""
        return self.index.search(query, limit=limit, offset=offset)

    def count(self, query: Query | None = None) -> int:
        """How many artifacts match ``query``."""
        return self.index.count(query)

    def facets(self) -> dict[str, list[str]]:
        """The distinct kinds, families, tags and aliases in the catalog (for filter menus), each sorted."""
        return self.index.facets()

    def find_by_cache_key(self, cache_key: str) -> Artifact | None:
        """The artifact most recently registered (or re-registered) under ``cache_key``, or None."""
        return self.index.find_by_cache_key(cache_key)

    def set_alias(self, name: str, alias: str, ref: str) -> None:
        """Point ``name@alias`` at the artifact ``ref`` names (see :meth:`Index.set_alias`)."""
        self.index.set_alias(name, alias, ref)

    def remove_alias(self, name: str, alias: str) -> str:
        """Remove ``name@alias`` and return the id it pointed at; ``latest`` cannot be removed."""
        return self.index.remove_alias(name, alias)

    def tag(self, ref: str, tags: Sequence[str], *, remove: bool = False) -> Artifact:
        """Add (or with ``remove=True`` remove) free labels on the artifact ``ref`` names."""
        return self.index.tag(ref, tags, remove=remove)

    def ancestors(self, ref: str) -> list[Artifact]:
        """Every artifact ``ref`` was transitively made from, nearest first, each once."""
        return self.index.ancestors(ref)

    def descendants(self, ref: str) -> list[Artifact]:
        """Every artifact transitively made from ``ref``, nearest first, each once."""
        return self.index.descendants(ref)

    def lineage_tree(self, ref: str) -> dict[str, Any]:
        """``{"artifact": Artifact, "parents": [subtree, ...]}`` for ``ref`` and, recursively, its parents."""
        return self.index.lineage_tree(ref)

    def descendants_tree(self, ref: str) -> dict[str, Any]:
        """``{"artifact": Artifact, "children": [subtree, ...]}``: what was made from ``ref``, recursively."""
        return self.index.descendants_tree(ref)

    # ------------------------------------------------------------------ files

    def path(self, ref: str) -> Path:
        """Return ``views/<id>/``, a read-only folder holding the artifact's files under their relative paths
        (hard links to the blobs, copies where linking fails), materialising it first if needed, and fetching
        from the remote the blobs the local store lacks. Every file is checked against its recorded hash.

        The folder is built under a temporary name and renamed into place, so it appears complete or not at
        all; when several callers race, all of them return the same valid folder."""
        artifact = self.get(ref)
        files = [(entry.path, entry.sha256) for entry in artifact.files]
        if not self.blobs.view(artifact.id).is_dir():
            self._fetch_missing(artifact)
            self._check_files(artifact, [(path, sha256, self.blobs.path(sha256)) for path, sha256 in files])
            self.blobs.build_view(artifact.id, files)
        self._check_files(artifact, self.blobs.view_files(artifact.id, files))
        return self.blobs.view(artifact.id)

    def _fetch_missing(self, artifact: Artifact) -> tuple[int, int]:
        """Fetch from the remote (if any) every blob of ``artifact`` the local store lacks; ``(blobs, bytes)``."""
        rows, size = self.blobs.fetch_missing([(entry.path, entry.sha256, entry.size) for entry in artifact.files],
                                              _label(artifact))
        self.index.record_checks(rows)
        return len(rows), size

    def _check_files(self, artifact: Artifact, files: Sequence[tuple[str, str, Path]]) -> None:
        """Raise :class:`UserError` if any of ``files`` (``(relpath, sha256, file)``) is missing or changed.

        A file whose size, mtime and inode match its ``file_checks`` row is trusted without reading it; any
        other is re-hashed (and the row refreshed when it is intact). Editing a blob in place changes its
        mtime, so a changed blob is caught the next time anything loads it."""
        known = self.index.file_checks([self.blobs.relative(path) for _relpath, _sha256, path in files])
        self.index.record_checks(self.blobs.check(files, known, _label(artifact)))

    # ------------------------------------------------------------------ remote

    def _require_remote(self, action: str) -> None:
        if self.remote is None:
            raise UserError(f"cannot {action}: this catalog has no remote; set VLFORGE_CATALOG_REMOTE (e.g. "
                            f"s3://bucket/prefix) or open it with Catalog(root, remote=URL)")

    def push(self, refs: Sequence[str] = ()) -> dict[str, int]:
        """Upload to the remote every blob of the artifacts ``refs`` name (every artifact when empty) that it
        does not hold yet, after checking the local copies. Returns counts: ``artifacts``, ``uploaded`` and
        ``present`` blobs, ``bytes`` uploaded."""
        self._require_remote("push")
        artifacts = [self.get(ref) for ref in refs] if refs else self.list()
        todo: dict[str, tuple[Artifact, FileEntry]] = {}
        for artifact in artifacts:
            for entry in artifact.files:
                todo.setdefault(entry.sha256, (artifact, entry))
        needed = self.blobs.remote_lacks({sha256: entry.size for sha256, (_a, entry) in todo.items()})
        by_artifact: dict[str, list[tuple[str, str, Path]]] = {}
        for sha256 in needed:
            artifact, entry = todo[sha256]
            by_artifact.setdefault(artifact.id, []).append((entry.path, sha256, self.blobs.path(sha256)))
        for artifact in artifacts:  # nothing corrupt or missing leaves the machine
            if artifact.id in by_artifact:
                self._check_files(artifact, by_artifact[artifact.id])
        self.blobs.upload(needed)
        return {"artifacts": len(artifacts), "uploaded": len(needed), "present": len(todo) - len(needed),
                "bytes": sum(todo[sha256][1].size for sha256 in needed)}

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
        return self.index.backup(Path(target))


def _label(artifact: Artifact) -> str:
    """How errors about an artifact's files name it."""
    return f"artifact {artifact.name}:{artifact.version} ({artifact.short_id})"
