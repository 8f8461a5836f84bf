"""Where Ray Train keeps a run's checkpoints: the run's work folder by default, or shared storage named by
``VLFORGE_RAY_STORAGE`` / ``train.ray_storage`` (``s3://bucket/prefix`` on AWS, MinIO or any S3-compatible
store; another URL pyarrow knows, such as ``gs://``; or a folder every node mounts).

Where it sits: :func:`vlforge.components.training.loop.train` turns the setting into ``RunConfig``'s
``storage_path`` and ``storage_filesystem`` with :func:`resolve_run_storage`, and copies the final checkpoint back
to local disk with :func:`copy_checkpoint`. A run lives at ``<storage>/<run name>``, and Ray resumes a run whose
folder already holds checkpoints, so a training job restarted on any machine with the same run name continues
where it stopped. For S3 the endpoint and keys come from :func:`vlforge.settings.s3_settings` and are given to
``pyarrow.fs.S3FileSystem`` explicitly, so Ray's workers on other nodes use the same ones."""
from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vlforge.errors import UserError
from vlforge.settings import ray_storage, s3_settings


@dataclass(frozen=True)
class RunStorage:
    """What ``RunConfig`` takes, and where the run's checkpoints end up."""

    storage_path: str
    """``RunConfig.storage_path``: a local folder, a URL, or for S3 ``bucket/prefix`` (the filesystem is given)."""
    filesystem: Any
    """``RunConfig.storage_filesystem``: a ``pyarrow.fs.S3FileSystem`` for S3, else None (Ray resolves the path)."""
    run_url: str
    """The run's folder, for messages: ``s3://bucket/prefix/<run name>`` or a local path."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def resolve_run_storage(storage: str | None, run_dir: Path) -> RunStorage:
    """Where the run ``run_dir.name`` keeps its checkpoints: under ``storage`` (else ``$VLFORGE_RAY_STORAGE``),
    or, when neither is set, in ``run_dir`` itself. A bad URL, a missing bucket or an unreachable endpoint is a
    one-line UserError here, before any worker starts."""
    storage = (storage or "").strip() or ray_storage()
    if not storage:
        run_dir.mkdir(parents=True, exist_ok=True)
        return RunStorage(str(run_dir.parent), None, str(run_dir))
    if not storage.endswith("://"):
        storage = storage.rstrip("/")
    scheme = urlsplit(storage).scheme
    if scheme in ("s3", "s3a"):
        return _s3_storage(storage, run_dir.name)
    if len(scheme) > 1 and scheme != "file":  # gs://, hdfs://, ...: pyarrow knows them or says why not
        import pyarrow.fs as pafs

        try:
            pafs.FileSystem.from_uri(storage)
        except (OSError, ValueError) as exc:
            raise UserError(f"Ray storage '{storage}' is not usable: {_one_line(exc)}") from None
        return RunStorage(storage, None, f"{storage}/{run_dir.name}")
    folder = Path(urlsplit(storage).path if scheme == "file" else storage).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Ray storage '{storage}' cannot be created: {exc.strerror or exc}") from None
    return RunStorage(str(folder), None, str(folder / run_dir.name))


def _s3_storage(url: str, run_name: str) -> RunStorage:
    import pyarrow.fs as pafs

    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not bucket:
        raise UserError(f"Ray storage '{url}' names no bucket: expected s3://bucket/prefix")
    s3 = s3_settings()
    options: dict[str, Any] = {}
    if s3.endpoint_parts is not None:
        options["scheme"], options["endpoint_override"] = s3.endpoint_parts
    if s3.access_key and s3.secret_key:
        options.update(access_key=s3.access_key, secret_key=s3.secret_key, session_token=s3.session_token)
    if s3.region:
        options["region"] = s3.region
    filesystem = pafs.S3FileSystem(**options)
    try:
        found = filesystem.get_file_info(bucket)
    except OSError as exc:
        raise UserError(f"Ray storage '{url}' is unreachable: {_one_line(exc)}") from None
    if found.type == pafs.FileType.NotFound:
        raise UserError(f"Ray storage '{url}': bucket '{bucket}' does not exist")
    path = f"{bucket}/{prefix}" if prefix else bucket
    return RunStorage(path, filesystem, f"s3://{path}/{run_name}")


def copy_checkpoint(checkpoint: Any, out_dir: Path, exclude: Iterable[str] = ()) -> None:
    """Copy a Ray checkpoint's files, wherever its storage is, to ``out_dir``, leaving out the top-level files
    named in ``exclude`` (the optimiser state, so it is never downloaded); written to a sibling ``.tmp`` folder and
    renamed into place."""
    import pyarrow.fs as pafs

    source, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
    skip = set(exclude)
    local = pafs.LocalFileSystem()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for info in source.get_file_info(pafs.FileSelector(root, recursive=True)):
        relpath = info.path[len(root):].lstrip("/")
        if info.type != pafs.FileType.File or relpath in skip:
            continue
        target = tmp / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(info.path, str(target), source_filesystem=source, destination_filesystem=local)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
