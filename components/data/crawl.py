"""Crawl stage: download a URL table with img2dataset into webdataset tars with parquet sidecars.

img2dataset runs in a child process (``python -m vlforge.components.data.img2dataset_child``): its
multiprocessing distributor spawns workers that re-import the caller's ``__main__``, which is only safe from a
script of our own; the child also keeps wandb/albumentations imports out of the orchestrator. Local sources are
served by a loopback server the stage starts here, so builtin, local and remote sources share one code path.

Every fetch goes through the guarded opener of ``guard.py`` (installed in img2dataset's workers through the
``VLFORGE_FETCH_POLICY`` environment variable): non-http(s) schemes and non-public addresses are refused on every
redirect hop and on the connected socket, except this stage's own loopback server and the user's allow-list.
Every URL ends in exactly one outcome: a sample, or a failure whose reason is one of ``FAILURE_REASONS``.
A crawl killed part-way resumes: img2dataset's incremental mode skips shards whose ``_stats.json`` exists (it is
written last), re-downloads half-written ones over their partial files, and only finished shards are read here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator
from vlforge.components.data.guard import POLICY_ENV, FetchPolicy, parse_allow_host
from vlforge.components.data.loopback import serve_files, url_for
from vlforge.components.sources.tables import SourceRows, read_parquet

from vlforge.errors import UserError


class CrawlConfig(BaseModel):
    """What img2dataset is asked to do. Every field is part of the ingest stage's cache key."""

    model_config = ConfigDict(extra="forbid")
    image_size: int = Field(128, ge=16, le=4096)
    resize_mode: str = Field("border", pattern="^(no|border|keep_ratio|keep_ratio_largest|center_crop)$")
    encode_format: str = Field("jpg", pattern="^(jpg|png|webp)$")
    encode_quality: int = Field(95, ge=1, le=100)
    processes: int = Field(2, ge=1)
    threads: int = Field(16, ge=1)
    timeout: int = Field(10, ge=1, description="seconds per request")
    retries: int = Field(0, ge=0)
    min_image_size: int = Field(0, ge=0, description="min side in pixels of the original image")
    max_side: int | None = Field(None, ge=1, description="max side in pixels of the original image; None: no limit")
    max_pixels: int = Field(40_000_000, ge=1, description="max width*height of the original (decompression bombs)")
    max_bytes: int | None = Field(32 * 1024 * 1024, ge=1, description="max body size of one download; None: no limit")
    max_aspect_ratio: float | None = Field(None, gt=0, description="None: no limit")
    allow_hosts: list[str] = Field(default_factory=list, description="HOST or HOST:PORT exempt from the address guard")
    samples_per_crawl_shard: int = Field(1000, ge=1)
    disallowed_header_directives: list[str] = Field(default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"])

    @field_validator("allow_hosts")
    @classmethod
    def _normalise_hosts(cls, value: list[str]) -> list[str]:
        try:
            return sorted({parse_allow_host(v) for v in value})
        except UserError as exc:
            raise ValueError(str(exc)) from None


# CrawlConfig fields that change how URLs are fetched, never what a sample is: a retry of a crawl may change them
# (a longer timeout, fewer threads for a rate-limiting host) and still extend the same dataset.
FETCH_ONLY_FIELDS = ("processes", "threads", "timeout", "retries", "samples_per_crawl_shard")


class CrawlResult(BaseModel):
    output_dir: str
    attempted: int
    succeeded: int
    failures_by_reason: dict[str, int]
    failures_path: str
    served_from: str | None = None  # loopback base URL of a local source (stripped from recorded URLs)
    rejected_keys: list[str] = Field(default_factory=list)  # img2dataset keys downloaded but over a limit checked here


# First match wins, so the specific phrases (ours, from guard.py) come before generic ones like "http error".
FAILURE_REASONS: list[tuple[str, tuple[str, ...]]] = [
    ("blocked_by_policy", ("blocked by policy", "redirection to url")),  # the latter: urllib refusing file:// hops
    ("opted_out", ("x-robots-tag", "disallowed")),
    # a body cut short of its Content-Length (IncompleteRead), or an image cut short of its own end ("truncated image",
    # guard.image_truncation: the transfer completed); both fail as downloads
    ("truncated", ("incompleteread", "truncated")),
    ("too_large", ("exceeds max_bytes", "image area too large", "exceeds max_side")),
    ("redirect_loop", ("infinite loop", "redirect")),
    ("not_found", ("http error 404", "http error 410", "not found")),
    ("server_error", ("http error 5",)),
    ("rate_limited", ("http error 429", "too many requests")),
    ("timeout", ("timed out", "timeout")),
    ("too_small", ("image too small", "too small")),
    ("bad_aspect_ratio", ("aspect ratio",)),
    ("not_an_image", ("image decoding error", "cannot identify", "decod", "not an image", "unknown image")),
    ("connection_error", ("connection", "refused", "reset", "unreachable", "name or service")),
    ("client_error", ("http error 4",)),
]


# Reasons a later attempt may well not meet (the server was busy, slow or unreachable, or the crawl died before the
# row's shard finished): ``--retry-failures`` fetches exactly these again. The others belong to the URL or the image
# (gone, not an image, too large, cut short, refused by policy or opt-out) and stay failures.
TRANSIENT_FAILURE_REASONS = frozenset({"timeout", "connection_error", "server_error", "rate_limited", "not_attempted"})


def failure_reason(error_message: str) -> str:
    """Map img2dataset's (or the guard's) free-text error to one reason code (counted in the dataset manifest)."""
    msg = (error_message or "").lower()
    for reason, needles in FAILURE_REASONS:
        if any(n in msg for n in needles):
            return reason
    return "other"


def fetch_policy(config: CrawlConfig, served_from: str | None) -> FetchPolicy:
    """The guard's policy: the user's allow-list plus this stage's own loopback server (only its exact port)."""
    hosts = set(config.allow_hosts)
    if served_from:
        hosts.add(served_from.split("://", 1)[1].rstrip("/"))
    return FetchPolicy(allow_hosts=tuple(sorted(hosts)), max_bytes=config.max_bytes)


ShardCallback = Callable[[Path, str | None, set[str]], None]


def crawl(rows: SourceRows, out_dir: Path, config: CrawlConfig, log_path: Path | None = None,
          ray_address: str | None = None, on_shard_done: ShardCallback | None = None) -> CrawlResult:
    """Crawl ``rows`` into ``out_dir`` (created fresh; a partial folder from a killed run is resumed by
    img2dataset's incremental mode, which skips finished shards). With ``ray_address`` img2dataset's ray
    distributor downloads the crawl shards as tasks on that cluster; every Ray worker installs the same guarded
    opener (a ``worker_process_setup_hook``). The output folder and a local source's loopback server must be
    reachable from the cluster's nodes (one machine, or a shared filesystem and a routable source).

    ``on_shard_done(tar, served_from, rejected_keys)`` is called, in this process while img2dataset goes on, for
    each crawl shard as soon as it and every shard before it have finished (name order), so the caller can shard
    it during the crawl; shards after a gap (one cut off) are left to the caller's final pass. If it raises, the
    crawl is stopped and the error goes up."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or out_dir.parent / f"{out_dir.name}.log"
    base: str | None = None
    with ExitStack() as stack:
        table = rows.table
        if rows.files:
            base = stack.enter_context(serve_files(rows.files))
            # only the served names: a mixed source can hold remote URLs beside local files
            urls = [url_for(base, u) if u in rows.files else u for u in table.column("url").to_pylist()]
            table = table.set_column(table.column_names.index("url"), "url", pa.array(urls, pa.string()))
        url_list = out_dir.parent / f"{out_dir.name}.urls.parquet"
        pq.write_table(table, url_list)
        args = {
            "url_list": str(url_list),
            "output_folder": str(out_dir),
            "input_format": "parquet",
            "url_col": "url",
            "caption_col": "caption",
            # a source's ``extra`` (its own split, several captions, benchmark fields) rides along to the shard stage
            "save_additional_columns": ["source_key", "label", "facts", *(["extra"] if "extra" in table.column_names else [])],
            "output_format": "webdataset",
            "image_size": config.image_size,
            "resize_mode": config.resize_mode,
            "encode_format": config.encode_format,
            "encode_quality": config.encode_quality,
            "processes_count": config.processes,
            "thread_count": config.threads,
            "timeout": config.timeout,
            "retries": config.retries,
            "min_image_size": config.min_image_size,
            "max_image_area": config.max_pixels,
            "max_aspect_ratio": config.max_aspect_ratio if config.max_aspect_ratio is not None else float("inf"),
            "number_sample_per_shard": config.samples_per_crawl_shard,
            "disallowed_header_directives": config.disallowed_header_directives,
            "distributor": "ray" if ray_address else "multiprocessing",
            "enable_wandb": False,
            "incremental_mode": "incremental",
            "compute_hash": "sha256",
        }
        if ray_address:
            args["_vlforge_ray_address"] = ray_address
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true",
               POLICY_ENV: fetch_policy(config, base).to_env()}
        feed = _ShardFeed(out_dir, on_shard_done, base, config.max_side)
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vlforge.components.data.img2dataset_child", json.dumps(args)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                while proc.poll() is None:
                    if not feed.poll():
                        time.sleep(0.1)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        if proc.returncode == 0:
            feed.poll()
        if proc.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"img2dataset exited with {proc.returncode}: {tail[0]} (log: {log_path})")
    return summarise_crawl(out_dir, attempted=rows.table.num_rows, served_from=base, max_side=config.max_side)


def local_url(url: str, served_from: str | None) -> str:
    """The loopback server's port changes every run; record served files as ``local:<name>`` instead."""
    if served_from and url.startswith(served_from):
        return "local:" + url[len(served_from):]
    return url


def finished_crawl_shards(out_dir: Path) -> list[Path]:
    """The parquet sidecars of shards img2dataset finished (``_stats.json`` is written after tar and parquet close;
    a shard without one was cut off by a kill and is re-downloaded on resume)."""
    done = {p.name.split("_", 1)[0] for p in out_dir.glob("*_stats.json")}
    return [p for p in sorted(out_dir.glob("*.parquet")) if p.stem in done]


class _ShardFeed:
    """Hands finished crawl shards to ``callback`` in name order (shard ids 0, 1, 2, ... with no gap)."""

    def __init__(self, out_dir: Path, callback: ShardCallback | None, served_from: str | None, max_side: int | None) -> None:
        self.out_dir, self.callback, self.served_from, self.max_side = out_dir, callback, served_from, max_side
        self.next_id = 0

    def poll(self) -> bool:
        """Feed every newly finished shard that is next in line; True if one was fed."""
        if self.callback is None:
            return False
        finished = {int(p.stem): p for p in finished_crawl_shards(self.out_dir) if p.stem.isdigit()}
        fed = False
        while self.next_id in finished:
            part = finished[self.next_id]
            self.callback(part.with_suffix(".tar"), self.served_from, set(rejected_keys(part, self.max_side)))
            self.next_id += 1
            fed = True
        return fed


_STATUS_COLUMNS = ("key", "url", "status", "error_message", "source_key", "original_width", "original_height")


def _read_statuses(part: Path) -> list[dict]:
    cols = [c for c in _STATUS_COLUMNS if c in pq.read_schema(part).names]
    return read_parquet(part, columns=cols).to_pylist()


def _too_large(status: dict, max_side: int | None) -> int | None:
    """The original side of a successful download over ``max_side``, else None."""
    side = max(status.get("original_width") or 0, status.get("original_height") or 0)
    return side if status.get("status") == "success" and max_side is not None and side > max_side else None


def rejected_keys(part: Path, max_side: int | None) -> list[str]:
    """Keys of one finished crawl shard's downloads whose original image is over ``max_side``."""
    return [str(s.get("key")) for s in _read_statuses(part) if _too_large(s, max_side) is not None]


def summarise_crawl(out_dir: Path, attempted: int, served_from: str | None = None, max_side: int | None = None) -> CrawlResult:
    """Read img2dataset's parquet sidecars: successes and failures by reason (written to failures.parquet).
    Downloads whose original image is over ``max_side`` become ``too_large`` failures (img2dataset has no such
    limit; their keys are listed in ``rejected_keys`` so the shard stage leaves them out)."""
    statuses: list[dict] = []
    for part in finished_crawl_shards(out_dir):
        statuses.extend(_read_statuses(part))
    rejected: list[str] = []
    for s in statuses:
        if (side := _too_large(s, max_side)) is not None:
            s["status"], s["error_message"] = "failed_to_resize", f"original side {side} exceeds max_side {max_side}"
            rejected.append(str(s.get("key")))
    succeeded = sum(1 for s in statuses if s.get("status") == "success")
    failures = [s for s in statuses if s.get("status") != "success"]
    reasons = [failure_reason(s.get("error_message") or "") for s in failures]
    failures_path = out_dir / "failures.parquet"
    pq.write_table(
        pa.table(
            {
                "url": pa.array([local_url(f.get("url") or "", served_from) for f in failures], pa.string()),
                "source_key": pa.array([f.get("source_key") or "" for f in failures], pa.string()),
                "reason": pa.array(reasons, pa.string()),
                "error_message": pa.array([f.get("error_message") or "" for f in failures], pa.string()),
            }
        ),
        failures_path,
    )
    if len(statuses) < attempted:  # rows of shards that never finished (the crawl died): counted, not hidden
        reasons.extend(["not_attempted"] * (attempted - len(statuses)))
    return CrawlResult(
        output_dir=str(out_dir),
        attempted=attempted,
        succeeded=succeeded,
        failures_by_reason=dict(sorted(Counter(reasons).items())),
        failures_path=str(failures_path),
        served_from=served_from,
        rejected_keys=rejected,
    )


def check_nonempty(result: CrawlResult, source: str) -> None:
    if result.succeeded == 0:
        reasons = ", ".join(f"{k}={v}" for k, v in result.failures_by_reason.items()) or "no rows"
        raise UserError(f"source '{source}' yielded no images ({reasons})")
