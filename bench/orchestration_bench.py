"""Orchestration benchmark: the whole pipeline through Prefect against the same stages called directly.

    python bench/orchestration_bench.py [--config FILE] [--repeat 2] [--tiny] [--out bench/results]

Both ways run the DAG of ``vlforge run pipeline`` (ingest -> tokenizer -> train -> eval) on one config (the
embedded default unless ``--config``; ``--tiny`` is 200 scenes and 10 training steps on one Ray worker),
alternating, ``--repeat`` times each (default 2; 1 with ``--tiny``), every run in its own fresh ``VLFORGE_HOME``
and ``PREFECT_HOME``:

* **prefect**: the real CLI, ``vlforge run pipeline --json`` (the console script) in a subprocess (Prefect's embedded
  server, task caching, result persistence, the UI artifacts), then the same command again in the same home: the
  fully cached re-run;
* **direct**: this script's ``--direct-driver`` mode in a plain Python subprocess that calls
  ``components.stages.run_ingest / run_tokenizer / run_train / run_eval`` in the same order with the same configs
  (the same functions the Prefect tasks call; Prefect is never imported), then again in the same home (every
  stage a catalog cache hit).

Both ways run a snapshot of the project's code taken at the start (``vlforge/`` with ``components/``, ``flows/``
and ``catalog/`` copied into the installed layout; every run starts in that folder with it first on ``PYTHONPATH``,
so it is what the runs, their img2dataset processes and their Ray workers import), so an edit to the checkout
while the benchmark runs changes neither the cache keys nor the artifacts (paths inside ``--config`` must
therefore be absolute). Walls are measured from this process around each subprocess (interpreter start, imports,
the Prefect server included); per-stage seconds are what each run timed around its stage calls, the way
``flows/pipeline.py`` does.
The artifacts of both ways are compared by content hash (``components.reproduce.content_hash``: every file
except the training log's wall-clock throughput) and the eval metrics must be equal. Prints a markdown table and
writes ``<out>/orchestration.json`` with medians, min/max, the ratio prefect/direct of the median walls (what the
orchestration costs), the cached/first ratio, load averages and tool versions."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from pipeline_bench import TINY_CONFIG  # noqa: E402 - the same tiny pipeline as the pipeline benchmark

STAGES = ("dataset", "tokenizer", "model", "eval")
# metrics whose values are wall-clock measurements, not results: left out of the equality check
TIMING_METRICS = frozenset({"samples_per_s", "wall_time_s"})
VERSIONED = ("vlforge", "prefect", "ray", "torch", "transformers", "tokenizers", "img2dataset", "webdataset", "pyarrow")
CODE_DIRS = ("components", "flows", "catalog")  # installed as vlforge.<name> (setup.py's package_dir)


class BenchError(Exception):
    """A one-line reason the benchmark cannot go on."""


def snapshot_code(dest: Path) -> Path:
    """Copy the package as it is installed (``vlforge/`` plus ``components/``, ``flows/``, ``catalog/`` as its
    sub-packages) under ``dest``: a folder to put first on ``PYTHONPATH``. Each stage's cache key holds a hash of
    the code it runs, so the runs must not see edits made to the checkout meanwhile."""
    import shutil

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "vlforge", dest / "vlforge", ignore=ignore)
    for folder in CODE_DIRS:
        shutil.copytree(REPO / folder, dest / "vlforge" / folder, ignore=ignore)
    return dest


def code_record(snapshot: Path) -> dict:
    """What code ran: a hash of the snapshot's .py/.yaml files, the checkout's commit and whether it had edits."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((snapshot / "vlforge").rglob("*")):
        if f.is_file() and f.suffix in (".py", ".yaml"):
            h.update(f.relative_to(snapshot).as_posix().encode() + b"\0" + f.read_bytes())
    git = lambda *a: subprocess.run(["git", *a], check=False, capture_output=True, text=True, cwd=REPO).stdout.strip()
    return {"fingerprint": h.hexdigest(), "git_head": git("rev-parse", "HEAD") or None,
            "uncommitted_changes": bool(git("status", "--porcelain", "--", "vlforge", *CODE_DIRS))}


# ---------------------------------------------------------------------------------------- direct driver
def direct_driver(config: str | None, result_path: Path) -> None:
    """The pipeline without an orchestrator: the stage functions of ``components.stages`` in the order and with
    the arguments ``flows/pipeline.py`` gives its Prefect tasks. Writes ids, cache flags, per-stage seconds and
    the eval metrics to ``result_path``."""
    from vlforge.environment import configure_environment

    configure_environment()  # the CLI's process environment (offline, Ray auth off, ...); imports nothing heavy
    from vlforge.components import stages
    from vlforge.components.pipeline_config import load_pipeline_config

    from vlforge.errors import UserError
    from vlforge.settings import open_catalog

    try:
        cfg = load_pipeline_config(Path(config) if config else None)
    except UserError as exc:
        sys.exit(f"error: {exc}")
    catalog = open_catalog()
    tr, ray_address = cfg.train, cfg.train.ray_address
    seconds: dict[str, float] = {}
    cached: dict[str, bool] = {}
    ids: dict[str, str] = {}

    def timed(stage: str, fn, *args) -> str:
        start = time.perf_counter()
        result = fn(*args)
        seconds[stage] = time.perf_counter() - start
        cached[stage] = result.cached
        ids[stage] = result.artifact.id
        return result.artifact.id

    dataset = timed("dataset", stages.run_ingest, cfg.source, cfg.crawl, cfg.shard, catalog, ray_address)
    tokenizer = timed("tokenizer", stages.run_tokenizer, dataset, cfg.tokenizer, catalog, ray_address)
    model = timed("model", stages.run_train, tr.family, tr.recipe, tr.overrides, dataset, tokenizer, catalog,
                  ray_address, tr.ray_storage)
    report = timed("eval", stages.run_eval, model, dataset, cfg.eval.tasks, cfg.eval.split, catalog, ray_address)
    payload = {**ids, "cached": cached, "seconds": seconds, "metrics": catalog.get(report).metrics,
               "prefect_imported": "prefect" in sys.modules, "stages_file": stages.__file__}
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, result_path)


# ------------------------------------------------------------------------------------------------ runs
def clean_env(home: Path, prefect_home: Path, snapshot: Path) -> dict[str, str]:
    """The caller's environment without its Prefect settings (no server of theirs, no profile), a fresh home, the
    code snapshot first on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "VLFORGE_HOME"}
    path = os.pathsep.join(p for p in (str(snapshot), env.get("PYTHONPATH", "")) if p)
    return env | {"VLFORGE_HOME": str(home), "PREFECT_HOME": str(prefect_home), "RAY_AUTH_MODE": "disabled",
                  "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def run_subprocess(what: str, args: list[str], env: dict[str, str], snapshot: Path,
                   log: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run in the snapshot folder: Ray puts the driver's working directory first on its workers' import path, and
    in the checkout its ``vlforge/`` would shadow the snapshot there."""
    start = time.perf_counter()
    proc = subprocess.run(args, check=False, capture_output=True, text=True, env=env, cwd=snapshot)
    wall = time.perf_counter() - start
    log.write_text(proc.stderr)
    if proc.returncode != 0:
        raise BenchError(f"{what} failed with exit code {proc.returncode}: {_last_line(proc.stderr)}")
    return proc, wall


def vlforge_command() -> list[str]:
    """The ``vlforge`` console script beside this interpreter (the command a user types)."""
    script = Path(sys.executable).with_name("vlforge")
    if not script.is_file():
        raise BenchError(f"no vlforge command beside {sys.executable}: install the project (make install) first")
    return [sys.executable, str(script)]


def run_prefect(home: Path, prefect_home: Path, snapshot: Path, config: str | None, log: Path) -> tuple[dict, float]:
    args = [*vlforge_command(), "run", "pipeline", "--json"] + (["--config", config] if config else [])
    proc, wall = run_subprocess("the Prefect run (vlforge run pipeline)", args, clean_env(home, prefect_home, snapshot),
                                snapshot, log)
    return json.loads(proc.stdout), wall


def run_direct(home: Path, prefect_home: Path, snapshot: Path, config: str | None, log: Path) -> tuple[dict, float]:
    result_path = home.parent / f"direct-{time.monotonic_ns()}.json"
    args = [sys.executable, str(Path(__file__).resolve()), "--direct-driver", "--driver-out", str(result_path)]
    args += ["--config", config] if config else []
    env = clean_env(home, prefect_home, snapshot)
    _, wall = run_subprocess("the direct run (stage functions, no Prefect)", args, env, snapshot, log)
    result = json.loads(result_path.read_text())
    if result.pop("prefect_imported"):
        raise BenchError("the direct run imported prefect: it would not measure the stages without orchestration")
    if not Path(result.pop("stages_file")).resolve().is_relative_to(snapshot.resolve()):
        raise BenchError("the direct run imported the checkout's code, not the snapshot")
    return result, wall


def content_hashes(home: Path, result: dict) -> dict[str, str]:
    from vlforge.catalog import Catalog
    from vlforge.components.reproduce import content_hash

    catalog = Catalog(home / "catalog")
    return {stage: content_hash(catalog.get(result[stage])) for stage in STAGES}


def record(result: dict, wall: float, home: Path | None = None) -> dict:
    rec = {"wall_s": wall, "stage_s": {s: float(result["seconds"][s]) for s in STAGES},
           "ids": {s: result[s] for s in STAGES}, "cached": {s: bool(result["cached"][s]) for s in STAGES},
           "metrics": {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}}
    rec["startup_and_overhead_s"] = wall - sum(rec["stage_s"].values())
    if home is not None:
        rec["content_hashes"] = content_hashes(home, result)
    return rec


def one_round(way: str, tmp: Path, snapshot: Path, config: str | None, index: int) -> tuple[dict, dict]:
    """A first run of ``way`` in a fresh home, then the same again there (all cache hits)."""
    base = tmp / f"{way}-{index}"
    home, prefect_home = base / "home", base / "prefect-home"
    home.mkdir(parents=True)
    prefect_home.mkdir()
    runner = run_prefect if way == "prefect" else run_direct
    first, first_wall = runner(home, prefect_home, snapshot, config, base / "first.log")
    second, second_wall = runner(home, prefect_home, snapshot, config, base / "cached.log")
    if not all(second["cached"].values()):
        raise BenchError(f"the {way} re-run was not all cache hits: {second['cached']}")
    if any(second[s] != first[s] for s in STAGES):
        raise BenchError(f"the {way} re-run returned other artifact ids than its first run")
    if any(first["cached"].values()):
        raise BenchError(f"the {way} first run had cache hits in a fresh home: {first['cached']}")
    return record(first, first_wall, home), record(second, second_wall)


# --------------------------------------------------------------------------------------------- summary
def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict]) -> dict:
    return {"wall_s": spread([r["wall_s"] for r in runs]),
            "stage_s": {s: spread([r["stage_s"][s] for r in runs]) for s in STAGES},
            "startup_and_overhead_s": spread([r["startup_and_overhead_s"] for r in runs])}


def results_only(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_METRICS}


def same_artifacts(runs: list[dict]) -> dict[str, bool]:
    """Per stage: did every first run (both ways, every repeat) make the same content? Eval also needs equal
    metrics."""
    same = {s: len({r["content_hashes"][s] for r in runs}) == 1 for s in STAGES}
    same["eval_metrics"] = all(r["metrics"] == runs[0]["metrics"] for r in runs)
    return same


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def table(result: dict) -> str:
    p, d = result["summary"]["prefect"], result["summary"]["direct"]
    pc, dc = result["summary"]["prefect_cached"], result["summary"]["direct_cached"]
    fmt = lambda s: f"{s['median']:.1f} s ({s['min']:.1f}-{s['max']:.1f})"
    rows = ["| measure | prefect | direct | prefect / direct |", "|---|---|---|---|",
            f"| first run, wall | {fmt(p['wall_s'])} | {fmt(d['wall_s'])} | {result['ratio_prefect_over_direct']:.2f} |"]
    for s in STAGES:
        ratio = result["stage_ratio_prefect_over_direct"][s]
        rows.append(f"| - {s} stage | {fmt(p['stage_s'][s])} | {fmt(d['stage_s'][s])} | {ratio:.2f} |")
    rows.append(f"| - start-up, imports, orchestration outside the stages | {fmt(p['startup_and_overhead_s'])} "
                f"| {fmt(d['startup_and_overhead_s'])} | - |")
    rows.append(f"| cached re-run, wall | {fmt(pc['wall_s'])} | {fmt(dc['wall_s'])} "
                f"| {result['cached_ratio_prefect_over_direct']:.2f} |")
    rows.append(f"| cached re-run / first run | {result['cached_over_first']['prefect']:.3f} "
                f"| {result['cached_over_first']['direct']:.3f} | - |")
    same = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in result["same_artifacts"].items())
    rows.append(f"| same artifacts both ways | {same} | | |")
    la, lb = result["loadavg_start"], result["loadavg_end"]
    rows.append(f"| load average start / end (1, 5, 15 min) | {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} "
                f"/ {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f} | | |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------ main
def check_config(path: str | None) -> dict:
    """The effective config as data; a missing or invalid file is a one-line error (exit 2)."""
    from vlforge.components.pipeline_config import load_pipeline_config

    from vlforge.errors import UserError

    try:
        return load_pipeline_config(Path(path) if path else None).model_dump(mode="json")
    except UserError as exc:
        raise BenchError(str(exc)) from None


def bench(args: argparse.Namespace) -> dict:
    repeat = args.repeat if args.repeat is not None else (1 if args.tiny else 2)
    if repeat < 1:
        raise BenchError(f"--repeat must be at least 1, got {repeat}")
    loadavg_start = os.getloadavg()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="vlforge-orch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        config = args.config
        if config is None and args.tiny:
            config = str(tmp / "tiny.yaml")
            Path(config).write_text(TINY_CONFIG)
        if config is not None:
            config = str(Path(config).resolve())
        snapshot = snapshot_code(tmp / "code")
        sys.path.insert(0, str(snapshot))  # this process reads configs and catalogs with the same code
        code = code_record(snapshot)
        effective = check_config(config)
        runs: dict[str, list[dict]] = {"prefect": [], "direct": [], "prefect_cached": [], "direct_cached": []}
        order = []
        for i in range(repeat):
            ways = ("prefect", "direct") if i % 2 == 0 else ("direct", "prefect")
            order.append(list(ways))
            for way in ways:
                print(f"[{i + 1}/{repeat}] {way} ...", file=sys.stderr, flush=True)
                first, cached = one_round(way, tmp, snapshot, config, i)
                runs[way].append(first)
                runs[f"{way}_cached"].append(cached)
                print(f"[{i + 1}/{repeat}] {way}: first {first['wall_s']:.1f} s, cached {cached['wall_s']:.1f} s",
                      file=sys.stderr, flush=True)
    loadavg_end = os.getloadavg()
    summary = {k: summarise(v) for k, v in runs.items()}
    med = lambda way, key="wall_s": summary[way][key]["median"]
    stage_ratio = {s: summary["prefect"]["stage_s"][s]["median"] / max(summary["direct"]["stage_s"][s]["median"], 1e-9)
                   for s in STAGES}
    first_runs = runs["prefect"] + runs["direct"]
    return {
        "benchmark": "orchestration",
        "config": "tiny" if args.tiny and args.config is None else (args.config or "embedded default"),
        "effective_config": effective,
        "tiny": bool(args.tiny),
        "repeat": repeat,
        "order": order,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "cpu_count": os.cpu_count(),
        "loadavg_start": list(loadavg_start),
        "loadavg_end": list(loadavg_end),
        "versions": versions(),
        "code": code,
        "runs": runs,
        "summary": summary,
        "ratio_prefect_over_direct": med("prefect") / med("direct"),
        "orchestration_overhead_s": med("prefect") - med("direct"),
        "stage_ratio_prefect_over_direct": stage_ratio,
        "cached_ratio_prefect_over_direct": med("prefect_cached") / med("direct_cached"),
        "cached_over_first": {"prefect": med("prefect_cached") / med("prefect"),
                              "direct": med("direct_cached") / med("direct")},
        "same_artifacts": same_artifacts(first_runs),
        "metrics": results_only(runs["prefect"][0]["metrics"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="pipeline config (YAML); default: the embedded demo config")
    ap.add_argument("--repeat", type=int, default=None, help="runs of each way, alternating (default 2; 1 with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="200 scenes, 10 training steps on one Ray worker (unless --config)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for orchestration.json")
    ap.add_argument("--direct-driver", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--driver-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.direct_driver:
        if not args.driver_out:
            sys.exit("error: --direct-driver needs --driver-out FILE")
        direct_driver(args.config, Path(args.driver_out))
        return
    try:
        result = bench(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    write_json(Path(args.out) / "orchestration.json", result)
    print(table(result))


if __name__ == "__main__":
    main()
