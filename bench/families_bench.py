"""Families benchmark: does each family learn something real? Trains each family's tiny recipe (teachers first, as
the DAG does) on one dataset and scores it on the default suite's tasks that fit, beside the untrained model of the
same family and recipe scored the same way (the eval stage's baseline).

    python bench/families_bench.py [--families clip,vilt,...] [--steps 300] [--source 'builtin:shapes?n=1000']
                                   [--emoji]   # ../shared/data/emoji-noto instead of builtin scenes

Prints a markdown table (family, task, headline metric, trained, untrained, ratio) and writes
bench/results/families.json."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMOJI = REPO.parent / "shared" / "data" / "emoji-noto" / "pairs.parquet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="", help="comma-separated; default: every registered family")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--source", default="builtin:shapes?n=1000&image_size=64")
    parser.add_argument("--emoji", action="store_true", help="train and score on the emoji-noto data")
    parser.add_argument("--home", default=None, help="VLFORGE_HOME to use (default: a fresh temporary one)")
    parser.add_argument("--out", default=None, help="result JSON (default bench/results/families[-emoji].json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for every family run (repeatable; YAML values), e.g. image_tokens=patches")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: tabulate the newest eval of each family already in --home's catalog")
    args = parser.parse_args()
    import yaml

    sets = {}  # parsed before any work, so a malformed --set costs nothing
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            parser.error(f"--set {item!r} is not KEY=VALUE")
        sets[key] = yaml.safe_load(value)
    os.environ["VLFORGE_HOME"] = args.home or tempfile.mkdtemp(prefix="vlforge-families-")
    from vlforge.environment import configure_environment

    configure_environment()  # as the CLI: offline, Prefect's home under VLFORGE_HOME, its telemetry off
    from vlforge.components.data.crawl import CrawlConfig
    from vlforge.components.data.shard import ShardConfig
    from vlforge.components.evaluation.headline import headline_metrics, untrained_value
    from vlforge.components.models.registry import family_names, get_family
    from vlforge.components.pipeline_config import SourceConfig
    from vlforge.components.stages import eval_suite, run_ingest, run_tokenizer
    from vlforge.components.tokenizer import TokenizerConfig
    from vlforge.flows.common import open_catalog
    from vlforge.flows.evaluate import eval_flow
    from vlforge.flows.train import train_flow

    catalog = open_catalog()
    source = (SourceConfig(spec=str(EMOJI), label_col="category", key_col="key") if args.emoji
              else SourceConfig(spec=args.source))
    if args.report_only:  # the home's newest dataset: nothing is ingested (code changes would re-ingest)
        data = max(catalog.list(kind="dataset"), key=lambda a: a.created_at)
    else:
        data = run_ingest(source, CrawlConfig(image_size=64), ShardConfig(validation_fraction=0.15), catalog).artifact
        tok = run_tokenizer(data.id, TokenizerConfig(vocab_size=512), catalog).artifact
    names = [n for n in args.families.split(",") if n] or family_names()
    out = Path(args.out) if args.out else REPO / "bench" / "results" / ("families-emoji.json" if args.emoji else "families.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def add_rows(name: str, model: str, report, tasks: list[str], seconds: float | None) -> None:
        for task in tasks:
            headline = headline_metrics(report.metrics, [task], most=0)
            if not headline:
                continue
            (metric, trained), = headline
            untrained = untrained_value(report.metrics, metric)
            ratio = trained / untrained if untrained and untrained >= 1e-3 else None  # no ratio against ~0
            rows.append({"family": name, "task": task, "metric": metric, "trained": trained, "untrained": untrained,
                         "ratio": ratio, "model": model, "seconds": seconds})
            if task == "captioning":  # a constant caption (a language prior) can beat an untrained model's CIDEr
                rows[-1]["distinct"] = report.metrics.get("caption_distinct")
                rows[-1]["mismatched"] = report.metrics.get("cider_mismatched")  # against another image's references
            if task == "itm":  # threshold-free: the true caption scores above the swapped one
                rows[-1]["pair"] = report.metrics.get("itm_pair_accuracy")
                rows[-1]["untrained_pair"] = report.metrics.get("baseline_itm_pair_accuracy")

    def write() -> None:  # after every family, atomically, so a stopped run keeps what it measured
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"data": data.id, "steps": args.steps, "set": sets, "rows": rows}, indent=2))
        os.replace(tmp, out)

    if args.report_only:
        for name in names:
            evals = [a for a in catalog.list(kind="eval") if a.family == name and data.id in a.parents]
            if evals:
                report = max(evals, key=lambda a: a.created_at)
                add_rows(name, report.parents[0], report, list(report.config.get("tasks", [])), None)
        names = []
    for name in names:
        start = time.perf_counter()
        overrides = {"steps": args.steps} if "steps" in get_family(name).recipe_cls.model_fields else {}
        overrides.update(sets)
        model = train_flow(name, data.id, "tiny", overrides, tok.id)["model"]
        tasks, _ = eval_suite(model, data.id, "default", "validation", catalog)
        report = catalog.get(eval_flow(model, data.id, tasks, "validation")["eval"])
        add_rows(name, model, report, tasks, round(time.perf_counter() - start, 1))
        write()
        print(f"{name}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(f"\nData: {data.name} ({data.metrics.get('samples')} samples), tiny recipes, {args.steps} steps\n")
    print("| family | task | metric | trained | untrained | ratio |\n|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        notes = [f"{label} {r[key]:.{digits}f}" for key, label, digits in (
            ("distinct", "distinct captions", 2), ("mismatched", "against another image's references", 3),
            ("pair", "pair ranking", 3), ("untrained_pair", "untrained pair ranking", 3)) if r.get(key) is not None]
        extra = f" ({'; '.join(notes)})" if notes else ""
        print(f"| {r['family']} | {r['task']} | {r['metric']}{extra} | {r['trained']:.3f} | "
              f"{r['untrained'] if r['untrained'] is None else round(r['untrained'], 3)} | {ratio} |")
    write()


if __name__ == "__main__":
    main()
