"""Where vlforge keeps its state. Everything lives under one folder, ``$VLFORGE_HOME`` (default ``./.vlforge``):
the catalog, stage work folders, Prefect's home and results, Ray's checkpoints. ``VLFORGE_VERBOSE=1`` (or
``vlforge --verbose``) lets Ray's own log lines through to the terminal.

Two things may also live on shared storage (an S3-compatible object store, or any fsspec URL):

* ``VLFORGE_CATALOG_REMOTE`` (``s3://bucket/prefix``): the catalog's blobs, uploaded on registration and fetched
  on demand; the index stays in ``$VLFORGE_HOME/catalog`` (see :mod:`vlforge.catalog.remote`).
* ``VLFORGE_RAY_STORAGE`` (``s3://bucket/prefix``): Ray Train's checkpoints, one folder per run.

For S3 both read ``VLFORGE_S3_ENDPOINT`` (a MinIO / Ceph / moto URL such as ``http://127.0.0.1:9000``; unset means
AWS itself) and the usual ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` /
``AWS_REGION``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from vlforge.errors import UserError

if TYPE_CHECKING:
    from vlforge.catalog import Catalog


def vlforge_home() -> Path:
    return Path(os.environ.get("VLFORGE_HOME", ".vlforge")).expanduser().resolve()


def catalog_root() -> Path:
    return vlforge_home() / "catalog"


def work_root() -> Path:
    return vlforge_home() / "work"


def catalog_remote() -> str | None:
    """``$VLFORGE_CATALOG_REMOTE``: the URL the catalog keeps its blobs under too, or None (local only)."""
    return os.environ.get("VLFORGE_CATALOG_REMOTE", "").strip() or None


def verbose() -> bool:
    """``$VLFORGE_VERBOSE`` (set by ``vlforge --verbose``): show Ray's own log lines (its loggers, the Ray Train
    controller's and workers' output, the core workers' C++ lines) besides vlforge's. Off by default."""
    return os.environ.get("VLFORGE_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


def ray_storage() -> str | None:
    """``$VLFORGE_RAY_STORAGE``: where Ray Train writes checkpoints (a URL or a shared folder), or None (the
    run's work folder under ``$VLFORGE_HOME``)."""
    return os.environ.get("VLFORGE_RAY_STORAGE", "").strip() or None


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3-compatible store; None fields fall back to the client's own defaults."""

    endpoint: str | None
    """``scheme://host[:port]``, e.g. ``http://127.0.0.1:9000``; None is AWS."""
    access_key: str | None
    secret_key: str | None
    session_token: str | None
    region: str | None

    @property
    def endpoint_parts(self) -> tuple[str, str] | None:
        """``(scheme, host[:port])`` of :attr:`endpoint`, the form pyarrow's S3 client takes."""
        if self.endpoint is None:
            return None
        parts = urlsplit(self.endpoint)
        return parts.scheme, parts.netloc


def s3_settings() -> S3Settings:
    """Read ``VLFORGE_S3_ENDPOINT`` (else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) and the AWS credentials
    from the environment; UserError if the endpoint is not an http(s) URL."""
    env = os.environ
    endpoint = next((env[k].strip() for k in ("VLFORGE_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
                     if env.get(k, "").strip()), None)
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise UserError(f"S3 endpoint '{endpoint}' is not a URL like http://127.0.0.1:9000 "
                            f"(set VLFORGE_S3_ENDPOINT to scheme://host:port)")
        endpoint = f"{parts.scheme}://{parts.netloc}"
    return S3Settings(
        endpoint=endpoint,
        access_key=env.get("AWS_ACCESS_KEY_ID") or None,
        secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
    )


def fsspec_storage_options(url: str) -> dict[str, Any]:
    """The fsspec ``storage_options`` for ``url``: for ``s3://`` the endpoint and credentials of
    :func:`s3_settings` (s3fs's names); nothing for other schemes, whose clients read their own environment."""
    if urlsplit(url).scheme not in ("s3", "s3a"):
        return {}
    s3 = s3_settings()
    options: dict[str, Any] = {}
    if s3.endpoint:
        options["endpoint_url"] = s3.endpoint
    if s3.access_key and s3.secret_key:
        options.update(key=s3.access_key, secret=s3.secret_key)
        if s3.session_token:
            options["token"] = s3.session_token
    if s3.region:
        options["client_kwargs"] = {"region_name": s3.region}
    return options


def open_catalog() -> Catalog:
    """The catalog under ``$VLFORGE_HOME``, with its remote blob store when ``VLFORGE_CATALOG_REMOTE`` is set."""
    from vlforge.catalog import Catalog

    remote = catalog_remote()
    return Catalog(catalog_root(), remote=remote, storage_options=fsspec_storage_options(remote) if remote else None)
