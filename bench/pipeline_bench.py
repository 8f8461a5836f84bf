"""Pipeline benchmark: `make demo`'s wall time split by stage, training samples/s against a peer, and the
all-cached second run.

    python bench/pipeline_bench.py [--config FILE] [--peer-steps 40] [--tiny] [--out DIR]

Runs the real CLI twice in a fresh VLFORGE_HOME (first run, then the all-cached run; Prefect settings of the
caller's environment left out, so Prefect's home is the fresh one's), then, in the same session on the same shards,
a peer: the same model and objective trained by a plain single-process loop (torch with all cores, no Ray, no
Prefect). ``--tiny`` runs a 200-scene, 10-step config (unless ``--config``) with 5 peer steps. Prints a markdown
table and writes ``<out>/pipeline.json`` (default bench/results) with the load average at start and end and the
tool versions."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = """\
source: {spec: "builtin:shapes?n=200&image_size=64"}
crawl: {image_size: 64, processes: 1, threads: 4}
shard: {samples_per_shard: 128, validation_fraction: 0.2}
tokenizer: {vocab_size: 256}
train: {family: clip, recipe: tiny, overrides: {steps: 10, batch_size: 32, warmup_steps: 2, checkpoint_every: 10,
                                                log_every: 5, num_workers: 1}}
eval: {tasks: [retrieval, zero_shot_classification], split: validation}
"""


def run_pipeline(home: Path, config: str | None) -> tuple[dict, float]:
    args = [sys.executable, "-m", "vlforge.cli", "run", "pipeline", "--json"] + (["--config", config] if config else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"VLFORGE_HOME": str(home)}
    start = time.perf_counter()
    proc = subprocess.run(args, check=False, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        sys.exit(f"error: the pipeline failed with exit code {proc.returncode}: {lines[-1][:300] if lines else '(no output)'}")
    return json.loads(proc.stdout), wall


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("vlforge", "prefect", "ray", "torch", "transformers", "img2dataset"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def peer_samples_per_s(home: Path, model_id: str, dataset_id: str, tokenizer_id: str, steps: int) -> float:
    """The same family/recipe trained by a bare loop in this process: the throughput Ray's loop is compared with."""
    os.environ["VLFORGE_HOME"] = str(home)
    import torch
    from vlforge.catalog import Catalog
    from vlforge.components.data.loader import (
        decode_image,
        split_shards,
        training_stream,
    )
    from vlforge.components.models.registry import (
        ImageTextBatch,
        get_family,
        special_token_ids,
    )
    from vlforge.components.tokenizer import load_tokenizer

    from vlforge.settings import catalog_root

    catalog = Catalog(catalog_root())
    model_art = catalog.get(model_id)
    family = get_family(model_art.family)
    recipe = family.validate_recipe(model_art.config["values"], "recipe")
    tokenizer = load_tokenizer(catalog.path(tokenizer_id))
    torch.set_num_threads(recipe.num_workers * recipe.threads_per_worker)  # the same cores Ray's workers get
    torch.manual_seed(recipe.seed)
    model = family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    stream = training_stream(split_shards(catalog.path(dataset_id), "train"), 0, 1, recipe.seed, recipe.shuffle_buffer)
    transform = family.image_transform(recipe)
    timed, samples, start = 0, 0, 0.0
    for step in range(steps + 3):
        if step == 3:  # warm-up steps excluded, as the Ray figure excludes its first window
            start, samples = time.perf_counter(), 0
        raws = [next(stream) for _ in range(recipe.batch_size)]
        enc = tokenizer([r.caption for r in raws], padding="max_length", truncation=True, max_length=recipe.max_text_length, return_tensors="pt")
        batch = ImageTextBatch(torch.stack([transform(decode_image(r.image)) for r in raws]), enc["input_ids"], enc["attention_mask"],
                               [r.caption for r in raws], [r.key for r in raws])
        loss = family.training_step(model, batch, recipe)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        samples += recipe.batch_size
        timed += 1
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--peer-steps", type=int, default=None, help="timed peer steps (default 40; 5 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="200 scenes, 10 training steps (unless --config)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for pipeline.json")
    args = parser.parse_args()
    peer_steps = args.peer_steps if args.peer_steps is not None else (5 if args.tiny else 40)
    if peer_steps < 1:
        sys.exit(f"error: --peer-steps must be at least 1, got {peer_steps}")
    if args.config is not None and not Path(args.config).is_file():
        sys.exit(f"error: config file '{args.config}' does not exist")
    loadavg_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vlforge-bench-") as tmp:
        home = Path(tmp)
        config = args.config
        if config is None and args.tiny:
            config = str(home / "tiny.yaml")
            Path(config).write_text(TINY_CONFIG)
        first, first_wall = run_pipeline(home, config)
        second, second_wall = run_pipeline(home, config)
        if not all(second["cached"].values()):
            sys.exit(f"error: the second run was not all cache hits: {second['cached']}")
        os.environ["VLFORGE_HOME"] = str(home)
        from vlforge.catalog import Catalog

        from vlforge.settings import catalog_root

        model = Catalog(catalog_root()).get(first["model"])
        ray_sps = float(model.metrics["samples_per_s"])
        peer_sps = peer_samples_per_s(home, first["model"], first["dataset"], first["tokenizer"], peer_steps)
    loadavg_end = os.getloadavg()
    result = {
        "first_run_wall_s": first_wall,
        "stage_seconds": first["seconds"],
        "orchestration_and_startup_s": first_wall - sum(first["seconds"].values()),
        "cached_run_wall_s": second_wall,
        "cached_over_first": second_wall / first_wall,
        "train_samples_per_s_ray_2_workers": ray_sps,
        "train_samples_per_s_peer_single_process": peer_sps,
        "ray_over_peer": ray_sps / peer_sps,
        "metrics": {k: first["metrics"][k] for k in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "zs_top1") if k in first["metrics"]},
        "config": "tiny" if args.tiny and args.config is None else (args.config or "embedded default"),
        "peer_steps": peer_steps,
        "loadavg_start": list(loadavg_start),
        "loadavg_end": list(loadavg_end),
        "cpu_count": os.cpu_count(),
        "versions": versions(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp_out = out / "pipeline.json.tmp"
    tmp_out.write_text(json.dumps(result, indent=2))
    os.replace(tmp_out, out / "pipeline.json")
    print("| measure | value |\n|---|---|")
    print(f"| first run, wall | {first_wall:.1f} s |")
    for stage, s in first["seconds"].items():
        print(f"| - {stage} stage | {s:.1f} s |")
    print(f"| - CLI, Prefect server and imports | {result['orchestration_and_startup_s']:.1f} s |")
    print(f"| second run (all cached), wall | {second_wall:.1f} s ({result['cached_over_first']:.3f} of the first) |")
    print(f"| training, Ray Train 2 workers | {ray_sps:.0f} samples/s |")
    print(f"| training, peer: one process, same model, all cores | {peer_sps:.0f} samples/s |")
    print(f"| ratio Ray / peer | {result['ray_over_peer']:.2f} |")
    print(f"| retrieval (validation) | {json.dumps(result['metrics'])} |")
    print(f"| load average start / end | {loadavg_start[0]:.2f} / {loadavg_end[0]:.2f} |")


if __name__ == "__main__":
    main()
