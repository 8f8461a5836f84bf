"""Catalog benchmark: list/search/resolve times at N entries (default 100,000; the aim is under 100 ms each).

    python bench/catalog_bench.py [--entries 100000] [--repeat 5]

Registering 100,000 artifacts through ``Catalog.register`` would spend its time on fsync, not on what is
measured, so the index is filled in bulk with rows shaped like the pipeline's (datasets, tokenizers, models with
two parents and three files, evals; metrics; ``latest`` aliases; a few tags) inside the catalog's own schema,
and a handful of real registrations go on top. Then each query runs ``--repeat`` times and the median is
printed as a markdown table; results also go to bench/results/catalog.json."""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from vlforge.catalog import Catalog, Query

REPO = Path(__file__).resolve().parents[1]


def fill(catalog: Catalog, entries: int) -> None:
    rng = random.Random(0)
    kinds = ["dataset", "tokenizer", "model", "eval"]
    families = ["clip", "albef", "blip", "flava", "coca"]
    artifacts, files, parents, aliases, tags = [], [], [], {}, []
    ids_by_kind: dict[str, list[str]] = {k: [] for k in kinds}
    versions: dict[str, int] = {}
    for seq in range(entries):
        kind = kinds[seq % 4]
        family = rng.choice(families) if kind in ("model", "eval") else None
        name = f"{family or 'web'}-{kind}-{seq % 2500}"
        versions[name] = versions.get(name, 0) + 1
        artifact_id = hashlib.sha256(f"artifact-{seq}".encode()).hexdigest()
        metrics = {"i2t_r1": round(rng.random(), 4), "final_loss": round(rng.random() * 3, 4)} \
            if kind in ("model", "eval") else {"samples": rng.randrange(10_000)}
        artifacts.append((artifact_id, kind, name, versions[name], family, json.dumps({"seed": seq}),
                          json.dumps(metrics, sort_keys=True), None, None, "{}",
                          f"2026-{1 + seq * 11 // entries:02d}-01T00:00:00.000000+00:00"))
        for n in range(3):
            files.append((artifact_id, f"file{n}.bin", hashlib.sha256(f"{seq}-{n}".encode()).hexdigest(), 100))
        upstream = {"tokenizer": ["dataset"], "model": ["dataset", "tokenizer"], "eval": ["model", "dataset"]}
        for position, parent_kind in enumerate(upstream.get(kind, [])):
            if ids_by_kind[parent_kind]:
                parents.append((artifact_id, position, rng.choice(ids_by_kind[parent_kind][-500:])))
        ids_by_kind[kind].append(artifact_id)
        aliases[name] = artifact_id
        if seq % 97 == 0:
            tags.append((artifact_id, "paper"))
    with catalog.index.connect() as conn, catalog.index.transaction(conn):
        conn.executemany("INSERT INTO artifacts (id, kind, name, version, family, config, metrics, cache_key,"
                         " code_version, packages, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)", artifacts)
        conn.executemany("INSERT INTO files VALUES (?,?,?,?)", files)
        conn.executemany("INSERT INTO parents VALUES (?,?,?)", parents)
        conn.executemany("INSERT INTO aliases VALUES (?,?,?)", [(n, "latest", i) for n, i in aliases.items()])
        conn.executemany("INSERT INTO tags VALUES (?,?)", tags)
        conn.execute("ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="catalog-bench-") as tmp:
        catalog = Catalog(Path(tmp) / "catalog")
        start = time.perf_counter()
        fill(catalog, args.entries)
        src = Path(tmp) / "src"
        src.mkdir()
        (src / "w.txt").write_text("real")
        real = catalog.register(kind="model", name="clip-real", family="clip", files=src, config={},
                                metrics={"i2t_r1": 0.99})
        print(f"filled {catalog.count():,} entries in {time.perf_counter() - start:.1f}s")
        model = catalog.search(Query(kind="model"), limit=1)[0]
        queries = {
            "list newest 50": lambda: catalog.search(limit=50),
            "list --kind model, 50": lambda: catalog.search(Query(kind="model"), limit=50),
            "search text 'clip-model-12' (substring), 50": lambda: catalog.search(Query(text="clip-model-12"), limit=50),
            "search id prefix, 50": lambda: catalog.search(Query(text=real.id[:8]), limit=50),
            "--family clip --sort i2t_r1, 50": lambda: catalog.search(Query(family="clip", sort_metric="i2t_r1"), limit=50),
            "--metric-above i2t_r1=0.9, 50": lambda: catalog.search(Query(metric_above=(("i2t_r1", 0.9),)), limit=50),
            "--tag paper, 50": lambda: catalog.search(Query(tag="paper"), limit=50),
            "--since 2026-11-01, 50": lambda: catalog.search(Query(since="2026-11-01"), limit=50),
            "count all": lambda: catalog.count(),
            "count --kind model --metric-above i2t_r1=0.5": lambda: catalog.count(
                Query(kind="model", metric_above=(("i2t_r1", 0.5),))),
            "resolve name@latest": lambda: catalog.resolve("clip-real@latest"),
            "get by id prefix": lambda: catalog.get(real.id[:10]),
            "lineage tree of a model": lambda: catalog.lineage_tree(model.id),
            "facets (filter menus)": lambda: catalog.facets(),
        }
        results = {}
        print(f"\n| query at {catalog.count():,} entries | median ms | max ms |\n|---|---:|---:|")
        for label, run in queries.items():
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                run()
                times.append((time.perf_counter() - t0) * 1000)
            results[label] = {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}
            print(f"| {label} | {results[label]['median_ms']:.1f} | {results[label]['max_ms']:.1f} |")
        out = REPO / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "catalog.json").write_text(json.dumps({"entries": catalog.count(), "queries": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
