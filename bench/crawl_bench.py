"""Crawl benchmark: the ingest stage on a loopback URL list against a bare img2dataset call, and its scaling.

    .venv/bin/python bench/crawl_bench.py [--urls 3000] [--repeat 3] [--processes 2] [--threads 16]
                                          [--image-size 128] [--samples-per-crawl-shard 500] [--out bench/results]
    .venv/bin/python bench/crawl_bench.py --tiny     # 150 URLs, one repeat: the test suite's run

A loopback server (the project's ``loopback._FileTableServer``, in this process, with a listen backlog of
``--backlog`` 1024 instead of the stock 5, whose overflowing SYNs stall 1 in ~15 requests for a 1 s retransmit
under 32 crawler threads) serves ``--urls`` small images generated once with PIL (JPEG and PNG, 64-256 px a side, varied shapes and colours), named by a parquet URL
list (url, caption). Then, alternating, ``--repeat`` times:

* **ours**: ``components.stages.run_ingest`` on that URL list (the same call ``vlforge run ingest`` makes) with a
  fresh ``VLFORGE_HOME`` in a fresh process: load + fingerprint the list, the guarded img2dataset crawl in its child
  process, split shards, dataset card, catalog registration. Timed: the wall of the stage call. Its split is taken
  by timing wrappers around the real functions the stage calls (nothing is replaced).
* **peer**: ``img2dataset.download(...)`` on the same list in a fresh process with the same processes, threads,
  image size, resize mode, encoding, shard size and ``output_format="webdataset"``. Timed: the process's wall
  (like ours it pays one interpreter start and one img2dataset import); successes are summed from ``_stats.json``.
* **ours, 1 process**: the stage again with ``crawl.processes=1`` (the scaling figure; the 2-process side is the
  ``ours`` run when ``--processes 2``, else a run of its own).

Rates are successful images / wall seconds; medians with min/max; ratio ours/peer of the medians (aim >= 0.95).
Also CPU seconds per 1000 images (the run's own and its children's, from ``getrusage``; the loopback server's CPU
is in neither): on a shared, loaded machine the wall ratio drifts with the load, the CPU ratio much less.
``--profile`` adds a cProfile of the stage's own process to the JSON. Prints markdown tables and writes
``<out>/crawl.json`` (atomically)."""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AIM = 0.95


class BenchError(Exception):
    """A failure worth one line (bad arguments, a run that failed)."""


# ------------------------------------------------------------------------------------------------ inputs
def make_images(folder: Path, n: int, seed: int = 0) -> dict[str, Path]:
    """``n`` images with varied content: a two-colour gradient with random rectangles, ellipses and lines, sides
    64-256 px; every third one a PNG, the rest JPEG (quality 85-95). Returns URL name -> path."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for i in range(n):
        w, h = (int(x) for x in rng.integers(64, 257, 2))
        c0, c1 = rng.integers(0, 256, (2, 3))
        t = np.linspace(0.0, 1.0, w)[None, :, None]
        grad = np.broadcast_to(c0 * (1 - t) + c1 * t, (h, w, 3)).astype(np.uint8)
        im = Image.fromarray(np.ascontiguousarray(grad))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 7))):
            x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            elif kind == 1:
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            else:
                draw.line((x0, y0, x1, y1), fill=fill, width=int(rng.integers(1, 6)))
        if i % 3 == 2:
            name = f"img{i:06d}.png"
            im.save(folder / name, "PNG")
        else:
            name = f"img{i:06d}.jpg"
            im.save(folder / name, "JPEG", quality=int(rng.integers(85, 96)))
        files[name] = folder / name
    return files


@contextmanager
def serve(files: dict[str, Path], backlog: int) -> Iterator[tuple[str, object]]:
    """The project's loopback file server (``loopback._FileTableServer`` and its handler, as ``serve_files`` starts
    it) with a listen backlog of ``backlog``: the stock ``socketserver`` backlog of 5 overflows under 2 x 16
    crawler threads, and every dropped SYN costs the client a 1 s retransmit, a stall that measures the server,
    not the crawlers. ``backlog=0`` keeps the stock server (``serve_files`` itself)."""
    from vlforge.components.data import loopback

    if backlog <= 0:
        with loopback.serve_files(files) as base:
            yield base, None
        return
    server_cls = type("BenchFileServer", (loopback._FileTableServer,), {"request_queue_size": backlog})
    server = server_cls(files)
    thread = threading.Thread(target=server.serve_forever, name="crawl-bench-loopback", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def listen_overflows() -> int | None:
    """The kernel's TcpExt ListenOverflows counter (machine-wide; None where /proc/net/netstat is absent)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            fields = dict(zip(head.split()[1:], values.split()[1:]))
            return int(fields["ListenOverflows"]) if "ListenOverflows" in fields else None
    return None


def write_url_list(path: Path, base_url: str, names: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from vlforge.components.data.loopback import url_for

    captions = [f"a synthetic picture number {i} with shapes" for i in range(len(names))]
    pq.write_table(pa.table({"url": [url_for(base_url, n) for n in names], "caption": captions}), path)
    return path


# ------------------------------------------------------------------------------------------------ workers
def cpu_seconds() -> float:
    """CPU time of this process plus its waited-for children (their workers included when they wait on them)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(name: str, fn, log: list, stack: list):
    """Wrap the real ``fn``: call it unchanged, record (path of enclosing timed calls, wall s, CPU s)."""

    def wrapper(*args, **kwargs):
        stack.append(name)
        start, cpu = time.perf_counter(), cpu_seconds()
        try:
            return fn(*args, **kwargs)
        finally:
            log.append(("/".join(stack), time.perf_counter() - start, cpu_seconds() - cpu))
            stack.pop()

    return wrapper


def worker_ours(spec: dict) -> dict:
    """One run of the real ingest stage (in a fresh process with a fresh VLFORGE_HOME), with its split."""
    os.environ["VLFORGE_HOME"] = spec["home"]
    import types

    from vlforge.components.data import crawl as crawl_mod
    from vlforge.components.data import shard as shard_mod
    from vlforge.components.data.crawl import CrawlConfig
    from vlforge.components.data.shard import ShardConfig
    from vlforge.components.sources.config import SourceConfig
    from vlforge.components.stages import base as stage_base
    from vlforge.components.stages import ingest as stages

    from vlforge.settings import open_catalog

    log: list = []
    stack: list = []
    for name in ("ingest_key", "load_source_rows", "crawl", "write_dataset_card"):
        setattr(stages, name, _timed(name, getattr(stages, name), log, stack))
    stage_base.register = _timed("register", stage_base.register, log, stack)
    # the shard stage's work: each crawl shard as img2dataset finishes it (inside "crawl", overlapping the child),
    # then the final pass (the last crawl shards, parquet index, manifest)
    shard_mod.CrawlSharder.add = _timed("shard_during_crawl", shard_mod.CrawlSharder.add, log, stack)
    shard_mod.CrawlSharder.finish = _timed("shard_final", shard_mod.CrawlSharder.finish, log, stack)
    crawl_mod.summarise_crawl = _timed("summarise_crawl", crawl_mod.summarise_crawl, log, stack)

    class TimedChild(subprocess.Popen):
        """The img2dataset child, timed from its start until the crawl's polling loop sees it exit."""

        def __init__(self, *a, **k) -> None:
            self._t0, self._cpu0, self._logged = time.perf_counter(), cpu_seconds(), False
            super().__init__(*a, **k)

        def poll(self):
            rc = super().poll()
            if rc is not None and not self._logged:
                self._logged = True
                log.append(("/".join([*stack, "img2dataset_child"]), time.perf_counter() - self._t0, cpu_seconds() - self._cpu0))
            return rc

    crawl_mod.subprocess = types.SimpleNamespace(Popen=TimedChild, STDOUT=subprocess.STDOUT)
    crawl_results: list = []
    real_crawl = stages.crawl

    def keep_result(*args, **kwargs):
        result = real_crawl(*args, **kwargs)
        crawl_results.append(result)
        return result

    stages.crawl = keep_result
    crawl_cfg = CrawlConfig(**spec["crawl"])
    catalog = open_catalog()
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start, cpu = time.perf_counter(), cpu_seconds()
    result = stages.run_ingest(SourceConfig(spec=spec["url_list"], name="crawl-bench"), crawl_cfg, ShardConfig(), catalog)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if profiler is not None:
        profiler.disable()
    if result.cached:
        raise BenchError("the ingest stage was a cache hit in a fresh VLFORGE_HOME")
    split: dict[str, float] = {}
    split_cpu: dict[str, float] = {}
    for path, seconds, cpu_s in log:
        split[path] = split.get(path, 0.0) + seconds
        split_cpu[path] = split_cpu.get(path, 0.0) + cpu_s
    other = "other (catalog lookup, folders, cleanup)"
    split[other] = wall - sum(s for p, s in split.items() if "/" not in p)
    split_cpu[other] = cpu - sum(s for p, s in split_cpu.items() if "/" not in p)
    metrics = result.artifact.metrics
    out = {"wall_s": wall, "cpu_s": cpu, "succeeded": crawl_results[0].succeeded, "samples": int(metrics["samples"]),
           "failed": int(metrics["failed"]), "failures_by_reason": crawl_results[0].failures_by_reason,
           "split_s": {k: round(v, 4) for k, v in split.items()},
           "split_cpu_s": {k: round(v, 4) for k, v in split_cpu.items()}}
    if profiler is not None:  # the stage's own process (not the img2dataset child): top functions by cumulative time
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(40)
        out["profile_top_cumulative"] = buf.getvalue().splitlines()
    return out


def worker_peer(spec: dict) -> dict:
    """One bare ``img2dataset.download`` (this process is started fresh; the caller times its wall)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    start = time.perf_counter()
    from img2dataset import download

    imported = time.perf_counter()
    c = spec["crawl"]
    download(url_list=spec["url_list"], output_folder=spec["output"], input_format="parquet", url_col="url",
             caption_col="caption", output_format="webdataset", image_size=c["image_size"], resize_mode=c["resize_mode"],
             encode_format=c["encode_format"], encode_quality=c["encode_quality"], processes_count=c["processes"],
             thread_count=c["threads"], timeout=c["timeout"], retries=c["retries"],
             number_sample_per_shard=c["samples_per_crawl_shard"], distributor="multiprocessing", enable_wandb=False)
    done = time.perf_counter()
    stats = [json.loads(p.read_text()) for p in Path(spec["output"]).glob("*_stats.json")]
    return {"import_s": imported - start, "download_s": done - imported, "shards": len(stats),
            "succeeded": sum(int(s.get("successes", 0)) for s in stats), "count": sum(int(s.get("count", 0)) for s in stats)}


def run_worker(kind: str, spec: dict, timeout: float) -> tuple[dict, float, float]:
    """Run ``kind`` in a fresh interpreter; returns its JSON result, the subprocess's wall and its CPU seconds
    (its own and its children's: the img2dataset workers). The loopback server's CPU (a thread of this process)
    is not in it."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start, cpu = time.perf_counter(), cpu_seconds()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(spec)],
                              check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{kind} run did not finish within {timeout:.0f} s") from None
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{\"bench_result\"")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{kind} run failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])["bench_result"], wall, cpu


# ------------------------------------------------------------------------------------------------ report
def summary(runs: list[dict]) -> dict:
    rates = [r["images_per_s"] for r in runs]
    cpu_per_k = [1000 * r["cpu_s"] / r["succeeded"] for r in runs if r["succeeded"]]
    return {"median_images_per_s": round(statistics.median(rates), 2), "min_images_per_s": round(min(rates), 2),
            "max_images_per_s": round(max(rates), 2), "median_wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
            "median_cpu_s_per_1000_images": round(statistics.median(cpu_per_k), 3) if cpu_per_k else None,
            "succeeded": [r["succeeded"] for r in runs], "runs": runs}


def versions() -> dict:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("vlforge", "img2dataset", "webdataset", "pyarrow", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def write_json(out_dir: Path, result: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "crawl.json"
    tmp = path.with_name(f".crawl.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def print_tables(result: dict) -> None:
    s = result["settings"]
    print(f"\nCrawl of {s['urls']} loopback URLs, {s['processes']} processes x {s['threads']} threads, image_size "
          f"{s['image_size']} ({s['resize_mode']}), {s['samples_per_crawl_shard']} samples per crawl shard; "
          f"{result['repeat']} alternating repeats; load average {result['load_avg_start'][0]:.2f} -> "
          f"{result['load_avg_end'][0]:.2f}; loopback listen backlog {s['listen_backlog']}, listen overflows during the "
          f"run (machine-wide) {s['listen_overflows_during_run_machine_wide']}\n")
    print("| run | images/s median | min | max | wall median (s) | CPU s / 1000 images | successes |\n"
          "|---|---|---|---|---|---|---|")
    rows = [("ours: ingest stage", result["ours"]), ("peer: bare img2dataset.download", result["peer"])]
    if "processes_1" in result["scaling"]:
        rows.append(("ours: ingest stage, 1 process", result["scaling"]["processes_1"]))
    for label, r in rows:
        print(f"| {label} | {r['median_images_per_s']:.1f} | {r['min_images_per_s']:.1f} | {r['max_images_per_s']:.1f} | "
              f"{r['median_wall_s']:.2f} | {r['median_cpu_s_per_1000_images']:.2f} | "
              f"{'/'.join(str(x) for x in r['succeeded'])} |")
    print(f"| ratio ours / peer (medians) | {result['ratio_ours_over_peer']:.3f} (aim {AIM}) | | | | "
          f"{result['cpu_ratio_ours_over_peer']:.3f} | same successes: {result['same_successes']} |")
    sc = result["scaling"]
    if sc.get("ratio_2_over_1") is not None:
        print(f"| scaling: 2 processes / 1 process (ours) | {sc['ratio_2_over_1']:.3f} | | | | | |")
    print("\nIngest stage split (medians over the ours runs; indented rows are inside the row above them):\n")
    print("| part | wall s | share of the stage | CPU s |\n|---|---|---|---|")
    wall = result["ours"]["median_wall_s"]
    for part, sec in result["ours_split_median_s"].items():
        depth = part.count("/")
        label = ("&nbsp;&nbsp;" * depth) + ("- " if depth else "") + part.split("/")[-1]
        print(f"| {label} | {sec:.3f} | {sec / wall:.1%} | {result['ours_split_median_cpu_s'][part]:.3f} |")
    print(f"| crawl only (img2dataset child), images/s | {result['ours_crawl_only_images_per_s']:.1f} | | |")


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--urls", type=int, default=None, help="images served and crawled (default 3000; --tiny: 150)")
    ap.add_argument("--repeat", type=int, default=None, help="alternating repeats (default 3; --tiny: 1)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--resize-mode", default="border")
    ap.add_argument("--samples-per-crawl-shard", type=int, default=None, help="default urls/6 rounded up (even over 1-3 processes)")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1-process runs")
    ap.add_argument("--tiny", action="store_true", help="150 URLs, one repeat (well under 90 s on 2 cores)")
    ap.add_argument("--backlog", type=int, default=1024, help="loopback server listen backlog (0: the stock 5)")
    ap.add_argument("--profile", action="store_true", help="cProfile the ours stage calls (top functions in the JSON)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per run")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, spec = args.worker[0], json.loads(args.worker[1])
        result = {"ours": worker_ours, "peer": worker_peer}[kind](spec)
        print(json.dumps({"bench_result": result}))
        return
    urls = args.urls if args.urls is not None else (150 if args.tiny else 3000)
    repeat = args.repeat if args.repeat is not None else (1 if args.tiny else 3)
    for name, value in (("--urls", urls), ("--repeat", repeat), ("--processes", args.processes), ("--threads", args.threads)):
        if value < 1:
            raise BenchError(f"{name} must be at least 1 (got {value})")
    per_shard = args.samples_per_crawl_shard or -(-urls // 6)
    crawl = {"image_size": args.image_size, "resize_mode": args.resize_mode, "encode_format": "jpg", "encode_quality": 95,
             "processes": args.processes, "threads": args.threads, "timeout": 10, "retries": 0,
             "samples_per_crawl_shard": per_shard}
    from pydantic import ValidationError
    from vlforge.components.data.crawl import CrawlConfig

    try:
        CrawlConfig(**crawl)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BenchError(f"crawl setting '{err['loc'][0]}': {err['msg']}") from None
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vlforge-crawl-bench-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        files = make_images(tmp / "images", urls)
        gen_s = time.perf_counter() - t0
        overflows_start = listen_overflows()
        with serve(files, args.backlog) as (base, _server):
            url_list = write_url_list(tmp / "urls.parquet", base, sorted(files))
            host = base.split("://", 1)[1].rstrip("/")
            ours_runs, peer_runs, one_runs = [], [], []
            scaling = not args.no_scaling
            for i in range(repeat):
                ours_crawl = {**crawl, "allow_hosts": [host]}
                res, _, _ = run_worker("ours", {"home": str(tmp / f"home-ours-{i}"), "url_list": str(url_list),
                                                "crawl": ours_crawl, "profile": args.profile}, args.timeout)
                ours_runs.append({**res, "images_per_s": res["succeeded"] / res["wall_s"]})
                print(f"ours  #{i + 1}: {res['succeeded']} images in {res['wall_s']:.2f} s", file=sys.stderr)
                res, wall, cpu = run_worker("peer", {"output": str(tmp / f"peer-{i}"), "url_list": str(url_list), "crawl": crawl},
                                            args.timeout)
                peer_runs.append({**res, "wall_s": wall, "cpu_s": cpu, "images_per_s": res["succeeded"] / wall})
                print(f"peer  #{i + 1}: {res['succeeded']} images in {wall:.2f} s", file=sys.stderr)
                if scaling:
                    for procs in sorted({1, 2} - ({args.processes} if args.processes in (1, 2) else set())):
                        cfg = {**ours_crawl, "processes": procs}
                        res, _, _ = run_worker("ours", {"home": str(tmp / f"home-p{procs}-{i}"), "url_list": str(url_list),
                                                        "crawl": cfg}, args.timeout)
                        one_runs.append({**res, "processes": procs, "images_per_s": res["succeeded"] / res["wall_s"]})
                        print(f"ours {procs}p #{i + 1}: {res['succeeded']} images in {res['wall_s']:.2f} s", file=sys.stderr)
        overflows_end = listen_overflows()
    load_end = os.getloadavg()
    ours, peer = summary(ours_runs), summary(peer_runs)
    by_procs: dict[int, list[dict]] = {}
    for r in one_runs:
        by_procs.setdefault(r["processes"], []).append(r)
    if args.processes in (1, 2):
        by_procs[args.processes] = ours_runs
    scaling_out: dict = {"exposed_as": "CrawlConfig.processes (img2dataset processes_count)", "threads": args.threads}
    for procs, runs in sorted(by_procs.items()):
        scaling_out[f"processes_{procs}"] = summary(runs)
    scaling_out["ratio_2_over_1"] = (round(scaling_out["processes_2"]["median_images_per_s"]
                                           / scaling_out["processes_1"]["median_images_per_s"], 3)
                                     if "processes_1" in scaling_out and "processes_2" in scaling_out else None)
    parts = list(dict.fromkeys(p for r in ours_runs for p in r["split_s"]))  # nested calls finish (are logged) first
    roots = list(dict.fromkeys(p.split("/")[0] for p in parts))
    order = {p: i for i, p in enumerate(parts)}
    parts.sort(key=lambda p: (roots.index(p.split("/")[0]), p.count("/"), order[p]))
    split_median = {p: round(statistics.median(r["split_s"].get(p, 0.0) for r in ours_runs), 4) for p in parts}
    split_cpu_median = {p: round(statistics.median(r["split_cpu_s"].get(p, 0.0) for r in ours_runs), 4) for p in parts}
    child = [r["split_s"].get("crawl/img2dataset_child", 0.0) for r in ours_runs]
    result = {
        "bench": "crawl",
        "tiny": args.tiny,
        "repeat": repeat,
        "settings": {"urls": urls, **{k: v for k, v in crawl.items()}, "image_generation_s": round(gen_s, 2),
                     "served_by": "vlforge.components.data.loopback._FileTableServer (ThreadingHTTPServer, this process)",
                     "listen_backlog": args.backlog if args.backlog > 0 else 5,
                     "listen_overflows_during_run_machine_wide": (overflows_end - overflows_start
                                                                  if None not in (overflows_start, overflows_end) else None)},
        "versions": versions(),
        "cpu_count": os.cpu_count(),
        "load_avg_start": [round(x, 2) for x in load_start],
        "load_avg_end": [round(x, 2) for x in load_end],
        "ours": ours,
        "peer": peer,
        "ratio_ours_over_peer": round(ours["median_images_per_s"] / peer["median_images_per_s"], 3),
        "aim": AIM,
        "same_successes": len({r["succeeded"] for r in ours_runs + peer_runs}) == 1,
        "ours_split_median_s": split_median,
        "ours_split_median_cpu_s": split_cpu_median,
        "cpu_ratio_ours_over_peer": round(ours["median_cpu_s_per_1000_images"] / peer["median_cpu_s_per_1000_images"], 3),
        "ours_crawl_only_images_per_s": round(statistics.median(r["succeeded"] / c for r, c in zip(ours_runs, child) if c > 0)
                                              if any(child) else 0.0, 2),
        "scaling": scaling_out,
    }
    path = write_json(args.out, result)
    print_tables(result)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        print(f"crawl_bench: {exc}", file=sys.stderr)
        sys.exit(2)
