"""Crawl stage: download a URL table with img2dataset into webdataset tars with parquet sidecars.

img2dataset runs in a child process (``python -m vlforge.components.data.img2dataset_child``): its
multiprocessing distributor spawns workers that re-import the caller's ``__main__``, which is only safe from a
script of our own; the child also keeps wandb/albumentations imports out of the orchestrator. Local sources are
served by a loopback server the stage starts here, so builtin, local and remote sources share one code path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field
from vlforge.components.data.loopback import serve_files, url_for
from vlforge.components.sources.tables import SourceRows

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
    timeout: int = Field(10, ge=1)
    retries: int = Field(0, ge=0)
    min_image_size: int = Field(0, ge=0)
    max_aspect_ratio: float | None = Field(None, gt=0, description="None: no limit")
    samples_per_crawl_shard: int = Field(1000, ge=1)
    disallowed_header_directives: list[str] = Field(default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"])


class CrawlResult(BaseModel):
    output_dir: str
    attempted: int
    succeeded: int
    failures_by_reason: dict[str, int]
    failures_path: str
    served_from: str | None = None  # loopback base URL of a local source (stripped from recorded URLs)


FAILURE_REASONS: list[tuple[str, tuple[str, ...]]] = [
    ("not_found", ("404", "not found")),
    ("server_error", ("http error 5", "500", "502", "503", "504")),
    ("timeout", ("timed out", "timeout")),
    ("opted_out", ("x-robots-tag", "disallowed", "noai")),
    ("redirect_loop", ("redirect",)),
    ("too_small", ("image too small", "too small")),
    ("bad_aspect_ratio", ("aspect ratio",)),
    ("too_large", ("too large", "image area")),
    ("not_an_image", ("cannot identify", "decod", "not an image", "unknown image")),
    ("connection_error", ("connection", "refused", "reset", "unreachable", "name or service")),
]


def failure_reason(error_message: str) -> str:
    """Map img2dataset's free-text error to one reason code (counted in the dataset manifest)."""
    msg = (error_message or "").lower()
    for reason, needles in FAILURE_REASONS:
        if any(n in msg for n in needles):
            return reason
    return "other"


def crawl(rows: SourceRows, out_dir: Path, config: CrawlConfig, log_path: Path | None = None) -> CrawlResult:
    """Crawl ``rows`` into ``out_dir`` (created fresh; a partial folder from a killed run is resumed by
    img2dataset's incremental mode, which skips finished shards)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or out_dir.parent / f"{out_dir.name}.log"
    base: str | None = None
    with ExitStack() as stack:
        table = rows.table
        if rows.files:
            base = stack.enter_context(serve_files(rows.files))
            table = table.set_column(0, "url", pa.array([url_for(base, n) for n in table.column("url").to_pylist()]))
        url_list = out_dir.parent / f"{out_dir.name}.urls.parquet"
        pq.write_table(table, url_list)
        args = {
            "url_list": str(url_list),
            "output_folder": str(out_dir),
            "input_format": "parquet",
            "url_col": "url",
            "caption_col": "caption",
            "save_additional_columns": ["source_key", "label", "facts"],
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
            "max_aspect_ratio": config.max_aspect_ratio if config.max_aspect_ratio is not None else float("inf"),
            "number_sample_per_shard": config.samples_per_crawl_shard,
            "disallowed_header_directives": config.disallowed_header_directives,
            "distributor": "multiprocessing",
            "enable_wandb": False,
            "incremental_mode": "incremental",
            "compute_hash": "sha256",
        }
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
        with log_path.open("w") as log:
            proc = subprocess.run(
                [sys.executable, "-m", "vlforge.components.data.img2dataset_child", json.dumps(args)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                check=False,
            )
        if proc.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"img2dataset exited with {proc.returncode}: {tail[0]} (log: {log_path})")
    return summarise_crawl(out_dir, attempted=rows.table.num_rows, served_from=base)


def local_url(url: str, served_from: str | None) -> str:
    """The loopback server's port changes every run; record served files as ``local:<name>`` instead."""
    if served_from and url.startswith(served_from):
        return "local:" + url[len(served_from):]
    return url


def summarise_crawl(out_dir: Path, attempted: int, served_from: str | None = None) -> CrawlResult:
    """Read img2dataset's parquet sidecars: successes and failures by reason (written to failures.parquet)."""
    statuses: list[dict] = []
    for part in sorted(out_dir.glob("*.parquet")):
        cols = [c for c in ("url", "status", "error_message", "source_key") if c in pq.read_schema(part).names]
        statuses.extend(pq.read_table(part, columns=cols).to_pylist())
    succeeded = sum(1 for s in statuses if s.get("status") == "success")
    failures = [s for s in statuses if s.get("status") != "success"]
    reasons = [failure_reason(s.get("error_message") or "") for s in failures]
    failures_path = out_dir / "failures.parquet"
    pq.write_table(
        pa.table(
            {
                "url": [local_url(f.get("url") or "", served_from) for f in failures],
                "source_key": [f.get("source_key") or "" for f in failures],
                "reason": reasons,
                "error_message": [f.get("error_message") or "" for f in failures],
            }
        ),
        failures_path,
    )
    if len(statuses) < attempted:  # rows img2dataset never reported (should not happen): count them honestly
        reasons.extend(["not_attempted"] * (attempted - len(statuses)))
    return CrawlResult(
        output_dir=str(out_dir),
        attempted=attempted,
        succeeded=succeeded,
        failures_by_reason=dict(sorted(Counter(reasons).items())),
        failures_path=str(failures_path),
        served_from=served_from,
    )


def check_nonempty(result: CrawlResult, source: str) -> None:
    if result.succeeded == 0:
        reasons = ", ".join(f"{k}={v}" for k, v in result.failures_by_reason.items()) or "no rows"
        raise UserError(f"source '{source}' yielded no images ({reasons})")
