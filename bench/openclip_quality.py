"""open_clip benchmark, quality mode (``bench/openclip_bench.py --quality``; vlforge issue 21, section 1): vlforge's
``clip`` ``tiny`` recipe and open_clip's own trainer trained with the same budget on the same pairs, then both
scored zero-shot on emoji concepts neither saw, by one scorer.

    .venv/bin/python bench/openclip_bench.py --quality [--steps 750] [--batch-size 64] [--holdout 0.2] \\
        [--ours-set KEY=VALUE ...] [--ours-recipe tiny-minilm ...] [--tiny]

Data: ``../shared/data/emoji-noto`` (``--quality-data``, a pairs.parquet of 64 px PNGs) split by concept: a
concept is held out when a seeded hash of its ``concept`` value falls under ``--holdout`` (whole concepts leave
training). The training concepts' pairs become a table that the project's ingest stage (``run_ingest``, a local
table source: loopback server + img2dataset) turns into webdataset shards of jpg + txt, all in the train split;
both trainers read those shards.

- ours: the train stage (``run_train``, what ``vlforge run train --family clip --data emoji-noto --steps 750 --set
  batch_size=64`` runs) with the ``tiny`` recipe, ``steps`` and ``batch_size`` overridden and nothing else, on a
  512-token BPE the tokenizer stage learns from the training captions (the CLI's default); in a subprocess, so
  Ray is down while the peer trains. Each ``--ours-set 'KEY=VALUE [KEY=VALUE ...]'`` adds a run of ``tiny`` with
  those overrides (one candidate change to the recipe, measured beside it: one row per ``--ours-set``, the
  one-change-at-a-time table) and ``--ours-recipe NAME`` a run of another clip recipe at
  the same steps and batch, each an extra row; a recipe with a pretrained ``text_tower`` (``tiny-minilm``) trains
  on that tower's own tokenizer (the tokenizer stage with ``kind: pretrained``).
- peer: open_clip 3.3's trainer in its venv (bench/openclip_peer.py) with the throughput mode's tiny ViT (embed 64,
  64 px, patch 16, 2+2 layers of width 64, context 32, its 49,408-token BPE), lr 1e-3, wd 0.2, warmup 50, fp32,
  its default training augmentation; the checkpoint it saves is embedded in its venv (``openclip_peer.py embed``,
  open_clip's own eval transform and tokenizer) into ``.npy`` files.

Scoring, the same code for both sides: each side's L2-normalised image embeddings of a set's pairs (the original
PNGs) and text embeddings of its unique captions go through the project's retrieval scorer
(``evaluation.retrieval.retrieval_metrics``: i2t and t2i R@1/R@5, identical captions merged). Sets: the held-out
concepts' pairs, and the training pairs. ``--tiny``: 300 of the pairs, 10 steps of batch 32 and, without the peer
venv, ours only with ``"peer": null`` and the reason. Prints a markdown table (both sides, ratio ours / peer per
metric); writes ``<out>/openclip_quality.json``."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openclip_bench import (  # noqa: E402 - the throughput mode's peer, model and helpers
    MODEL_NAME,
    PEER_RUNNER,
    REPO,
    BenchError,
    loadavg,
    openclip_model_config,
    our_versions,
    peer_missing_reason,
    peer_train_command,
    run_child,
    setup_peer,
    tail_line,
    write_json,
)
from reference_venv import peer_python  # noqa: E402

HERE = Path(__file__).resolve()
DEFAULT_DATA = REPO.parent / "shared" / "data" / "emoji-noto" / "pairs.parquet"
SETS = ("heldout", "train")
METRICS = ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5")
# open_clip's side of the measurement (issue 21): the throughput mode's tiny ViT at these settings
PEER_LR, PEER_WD, PEER_WARMUP = 1e-3, 0.2, 50


# ------------------------------------------------------------------------------------------------------ split
def heldout_concept(concept: str, seed: int, fraction: float) -> bool:
    """Whether ``concept`` is held out: a seeded hash of it in [0, 1) below ``fraction`` (stable across runs)."""
    h = int(hashlib.sha256(f"openclip-quality:{seed}:{concept}".encode()).hexdigest()[:12], 16) / float(1 << 48)
    return h < fraction


def split_pairs(table_path: Path, seed: int, fraction: float, limit: int | None = None) -> dict[str, list[dict]]:
    """The pairs of ``table_path`` (key, path, caption, concept, ...) as {"train": rows, "heldout": rows}, each row
    with an absolute ``path``; every pair of a concept on one side. ``limit``: only that many pairs, the first by a
    hash of their key (a smoke run's sample of every category)."""
    import pyarrow.parquet as pq

    if not table_path.is_file():
        raise BenchError(f"--quality-data '{table_path}' does not exist")
    rows = pq.ParquetFile(table_path).read().to_pylist()
    missing = [c for c in ("key", "path", "caption", "concept") if not rows or c not in rows[0]]
    if missing:
        raise BenchError(f"--quality-data '{table_path}' has no column '{missing[0]}' (needs key, path, caption, concept)")
    if limit is not None:
        rows = sorted(rows, key=lambda r: hashlib.sha256(str(r["key"]).encode()).hexdigest())[:limit]
    out: dict[str, list[dict]] = {"train": [], "heldout": []}
    for row in rows:
        row = {**row, "path": str((table_path.parent / row["path"]).resolve())}
        out["heldout" if heldout_concept(str(row["concept"]), seed, fraction) else "train"].append(row)
    if not out["train"] or not out["heldout"]:
        raise BenchError(f"--holdout {fraction} leaves no {'training' if not out['train'] else 'held-out'} concepts")
    return out


def eval_set(rows: list[dict]) -> dict:
    """A set to embed: its image files, its unique captions (first-seen order) and each image's caption index."""
    index: dict[str, int] = {}
    ids = [index.setdefault(r["caption"], len(index)) for r in rows]
    return {"images": [r["path"] for r in rows], "texts": list(index), "caption_ids": ids}


# ------------------------------------------------------------------------------------------------------ score
def score(image_emb, text_emb, caption_ids: list[int]) -> dict:
    """R@1/R@5 both ways from one side's embeddings: L2-normalised, then the project's retrieval scorer."""
    import torch
    import torch.nn.functional as F
    from vlforge.components.evaluation.retrieval import retrieval_metrics

    img = F.normalize(torch.as_tensor(image_emb, dtype=torch.float32), dim=-1)
    txt = F.normalize(torch.as_tensor(text_emb, dtype=torch.float32), dim=-1)
    m = retrieval_metrics(img, txt, caption_ids).metrics
    return {k: round(m[k], 4) for k in (*METRICS, "i2t_chance_r1", "images", "unique_captions")}


def score_side(emb_dir: Path, sets: dict[str, dict]) -> dict:
    import numpy as np

    return {name: score(np.load(emb_dir / f"{name}_images.npy"), np.load(emb_dir / f"{name}_texts.npy"),
                        s["caption_ids"]) for name, s in sets.items()}


def ratios(ours: dict, peer: dict | None) -> dict | None:
    """ours / peer per set and metric (None where the peer scored 0)."""
    if peer is None:
        return None
    return {s: {k: (round(ours[s][k] / peer[s][k], 3) if peer[s][k] else None) for k in METRICS} for s in SETS}


# ------------------------------------------------------------------------------------------------------- ours
def _ours_child(spec_path: str) -> None:
    """Inside the ``--_ours`` subprocess: the ingest, tokenizer and train stages as ``vlforge run`` runs them, then
    each trained model's embeddings of every set (the family's encode_images/encode_texts via the eval context)."""
    import numpy as np
    from vlforge.catalog import Catalog
    from vlforge.components.data.loader import decode_image, split_shards
    from vlforge.components.data.shard import ShardConfig
    from vlforge.components.evaluation.tasks import EvalContext
    from vlforge.components.models.registry import read_family_file
    from vlforge.components.pipeline_config import PipelineConfig
    from vlforge.components.sources.config import SourceConfig
    from vlforge.components.stages import run_ingest, run_tokenizer, run_train
    from vlforge.components.tokenizer import TokenizerConfig, load_tokenizer
    from vlforge.components.training.loop import TRAIN_LOG
    from vlforge.components.training.ray_runtime import shutdown_ray
    from vlforge.settings import catalog_root

    spec = json.loads(Path(spec_path).read_text())
    catalog = Catalog(catalog_root())
    pipeline = PipelineConfig()
    if spec["mode"] == "ingest":
        start = time.perf_counter()
        source = SourceConfig(spec=spec["table"], name="emoji-noto", key_col="key")
        data = run_ingest(source, pipeline.crawl, ShardConfig(validation_fraction=0.0), catalog).artifact
        tok = run_tokenizer(data.id, pipeline.tokenizer, catalog).artifact
        towers = {d: run_tokenizer(data.id, TokenizerConfig(kind="pretrained", pretrained_dir=d), catalog).artifact.id
                  for d in spec["towers"]}
        others = [run_tokenizer(data.id, TokenizerConfig(**cfg), catalog).artifact.id for cfg in spec["tokenizers"]]
        write_json(Path(spec["out"]), {
            "dataset": data.id, "tokenizer": tok.id, "tower_tokenizers": towers, "other_tokenizers": others,
            "train_samples": int(data.metrics["train_samples"]),
            "train_shards": [str(p) for p in split_shards(catalog.path(data.id), "train")],
            "tokenizer_vocab": int(tok.metrics["vocab_size"]), "crawl_image_size": pipeline.crawl.image_size,
            "ingest_s": round(time.perf_counter() - start, 1)})
        return
    sets = spec["sets"]
    results = []
    try:
        for i, run in enumerate(spec["runs"]):
            start = time.perf_counter()
            model = run_train("clip", run["recipe"], run["overrides"], spec["dataset"], run["tokenizer_id"],
                              catalog).artifact
            wall = time.perf_counter() - start
            model_dir = catalog.path(model.id)
            history = [json.loads(x) for x in (model_dir / TRAIN_LOG).read_text().splitlines() if x]
            family, recipe = read_family_file(model_dir)
            net = family.load(model_dir).eval()
            tokenizer = load_tokenizer(model_dir)
            ctx = EvalContext(family, net, recipe, tokenizer, samples=[])
            emb_dir = Path(spec["work"]) / f"ours-{i}"
            emb_dir.mkdir(parents=True, exist_ok=True)
            for name, s in sets.items():
                images = [decode_image(Path(p).read_bytes()) for p in s["images"]]
                np.save(emb_dir / f"{name}_images.npy", ctx.embed_images(images).numpy())
                np.save(emb_dir / f"{name}_texts.npy", ctx.embed_texts(s["texts"]).numpy())
            results.append({"label": run["label"], "recipe_name": run["recipe"], "overrides": run["overrides"],
                            "text_tower": run["tower"], "tokenizer_vocab": len(tokenizer), "model": model.id,
                            "embeddings": str(emb_dir), "wall_s": round(wall, 1),
                            "params": sum(p.numel() for p in net.parameters()),
                            "steps": history[-1]["step"], "first_loss": history[0]["loss"],
                            "final_loss": history[-1]["loss"],
                            "samples_per_s": float(model.metrics.get("samples_per_s", 0.0)),
                            "recipe": {k: getattr(recipe, k) for k in (
                                "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "train_crop_scale",
                                "image_size",
                                "patch_size", "embed_dim", "vision_width", "vision_layers", "text_width",
                                "text_layers", "num_workers", "threads_per_worker", "text_tower", "lock_text")}})
    finally:
        shutdown_ray()
    write_json(Path(spec["out"]), results)


# ------------------------------------------------------------------------------------------------------- peer
def run_peer_quality(venv: Path, *, model_config: Path, shards: list[str], batch: int, steps: int, threads: int,
                     sets: dict[str, dict], work: Path) -> dict:
    """open_clip's trainer for ``steps`` steps with a checkpoint at the end, then that checkpoint's embeddings."""
    run = work / "peer-quality"
    run.mkdir(parents=True)
    argv, env = peer_train_command(venv, model=MODEL_NAME, model_config=model_config, shards=shards, batch=batch,
                                   n_steps=steps, log_every=50, threads=threads, workers=1, precision="fp32",
                                   device="cpu", run=run, lr=PEER_LR, wd=PEER_WD, warmup=PEER_WARMUP,
                                   save_frequency=1)
    start = time.perf_counter()
    with open(run / "train.log", "w") as fh:
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=run, env=env)
    wall = time.perf_counter() - start
    ckpts = sorted((run / "logs" / "run" / "checkpoints").glob("epoch_*.pt"))
    if proc.returncode != 0 or not ckpts:
        raise RuntimeError(f"open_clip's trainer failed (exit {proc.returncode}): {tail_line(run / 'train.log')}")
    trained = json.loads((run / "peer.json").read_text())
    steps_seen = trained["marks"][-1][2] // batch if trained["marks"] else None
    sets_file = run / "sets.json"
    write_json(sets_file, {name: {"images": s["images"], "texts": s["texts"]} for name, s in sets.items()})
    emb_dir = run / "embeddings"
    argv = [str(peer_python(venv)), str(PEER_RUNNER), "embed", "--model", MODEL_NAME, "--model-config",
            str(model_config), "--threads", str(threads), "--checkpoint", str(ckpts[-1]), "--sets", str(sets_file),
            "--out", str(emb_dir)]
    with open(run / "embed.log", "w") as fh:
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=run, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"open_clip's embedding failed (exit {proc.returncode}): {tail_line(run / 'embed.log')}")
    return {"embeddings": str(emb_dir), "wall_s": round(wall, 1), "params": trained["params"],
            "versions": trained["versions"], "steps": steps_seen, "checkpoint": ckpts[-1].name}


# ------------------------------------------------------------------------------------------------------- main
def parse_sets(values: list[str]) -> list[dict]:
    """One override dict per ``--ours-set`` value, each value one or more space-separated ``KEY=VALUE``."""
    import shlex

    from vlforge.components.pipeline_config import parse_assignments
    from vlforge.errors import UserError

    try:
        return [parse_assignments(shlex.split(v), "--ours-set") for v in values]
    except (UserError, ValueError) as exc:
        raise BenchError(f"--ours-set: {exc}") from None


def our_runs(steps: int, batch: int, extras: list[dict], recipes: list[str]) -> list[dict]:
    """The runs of ours, all at ``steps`` x ``batch``: ``tiny`` as shipped (the main row), ``tiny`` with each of
    ``extras`` (one per --ours-set), each of ``recipes`` (--ours-recipe); each with the text tower whose tokenizer it
    needs (None: the BPE the tokenizer stage learns, with the run's ``tokenizer.*`` fields if any). Checked against
    the family here, before anything trains."""
    from vlforge.components.models.clip.hf_text import resolve_text_tower
    from vlforge.components.models.registry import get_family
    from vlforge.components.pipeline_config import PipelineConfig, section_config
    from vlforge.errors import UserError

    base = {"steps": steps, "batch_size": batch}
    runs = [("tiny", "tiny", base)]
    runs += [("tiny --set " + " ".join(f"{k}={v}" for k, v in extra.items()), "tiny", {**base, **extra})
             for extra in extras if extra]
    runs += [(name, name, base) for name in recipes]
    family, out = get_family("clip"), []
    for label, recipe, overrides in runs:
        tok = {k.removeprefix("tokenizer."): v for k, v in overrides.items() if k.startswith("tokenizer.")}
        overrides = {k: v for k, v in overrides.items() if not k.startswith("tokenizer.")}
        try:
            tower = family.recipe(recipe, overrides).text_tower
            if tok and tower:
                raise UserError(f"'{label}' trains on its text tower's own tokenizer: no tokenizer.* fields")
            # the BPE the tokenizer stage learns: the CLI's default config, with this run's tokenizer.* fields
            tok_cfg = section_config(PipelineConfig().tokenizer, tok, "--ours-set", "tokenizer").model_dump() \
                if tok else None
            out.append({"label": label, "recipe": recipe, "overrides": overrides, "tokenizer_cfg": tok_cfg,
                        "tower": str(resolve_text_tower(tower)) if tower else None})
        except UserError as exc:
            raise BenchError(f"{'--ours-recipe' if recipe != 'tiny' else '--ours-set'}: {exc}") from None
    return out


def run_quality(args: argparse.Namespace) -> None:
    steps = args.steps if args.steps is not None else (10 if args.tiny else 750)
    batch = args.batch_size if args.batch_size is not None else (32 if args.tiny else 64)
    for name, value, low in (("--steps", steps, 1), ("--batch-size", batch, 2), ("--threads", args.threads, 1)):
        if value < low:
            raise BenchError(f"{name} must be at least {low} (got {value})")
    if not 0 < args.holdout < 1:
        raise BenchError(f"--holdout must be between 0 and 1 (got {args.holdout})")
    extras = parse_sets(args.ours_set or [])
    pairs = split_pairs(Path(args.quality_data).resolve(), args.split_seed, args.holdout, 300 if args.tiny else None)
    venv = Path(args.peer_venv).resolve()
    peer_reason = peer_missing_reason(venv)
    if peer_reason and not (args.tiny or args.setup_peer):
        raise BenchError(peer_reason)
    runs = our_runs(steps, batch, extras, args.ours_recipe or [])  # imports the model registry: after the cheap checks
    if args.setup_peer:
        setup_peer(venv)
        peer_reason = peer_missing_reason(venv)
        if peer_reason and not args.tiny:
            raise BenchError(peer_reason)
    cfg = {"image_size": 64, "patch_size": 16, "layers": 2, "width": 64, "heads": 2, "mlp_ratio": 4, "context": 32,
           "embed_dim": 64, "vocab_size": 49408}
    sets = {name: eval_set(pairs[name]) for name in SETS}
    out_dir = Path(args.out)
    load_start, started = loadavg(), time.time()
    with tempfile.TemporaryDirectory(prefix="vlforge-openclip-quality-") as tmp:
        work = Path(tmp)
        os.environ["VLFORGE_HOME"] = str(work / "home")
        os.environ.pop("VLFORGE_RAY_STORAGE", None)
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = work / "train_pairs.parquet"
        cols = ("key", "path", "caption", "concept")
        pq.write_table(pa.table({c: [r[c] for r in pairs["train"]] for c in cols}), table)
        towers = sorted({r["tower"] for r in runs if r["tower"]})
        tokenizers = [json.loads(c) for c in sorted({json.dumps(r["tokenizer_cfg"], sort_keys=True)
                                                     for r in runs if r["tokenizer_cfg"]})]
        data = run_child(HERE, {"mode": "ingest", "table": str(table), "towers": towers, "tokenizers": tokenizers},
                         work, "the project's ingest")
        print(f"data: {len(pairs['train'])} training pairs -> {data['train_samples']} samples in "
              f"{len(data['train_shards'])} shards ({data['ingest_s']} s); {len(pairs['heldout'])} held-out pairs",
              file=sys.stderr)
        for r in runs:
            r["tokenizer_id"] = data["tower_tokenizers"][r["tower"]] if r["tower"] else data["tokenizer"]
            if r["tokenizer_cfg"]:
                r["tokenizer_id"] = data["other_tokenizers"][tokenizers.index(r["tokenizer_cfg"])]
        ours = run_child(HERE, {"mode": "train", "runs": runs, "dataset": data["dataset"], "sets": sets}, work,
                         "the project's training")
        for r in ours:
            r["scores"] = score_side(Path(r.pop("embeddings")), sets)
            print(f"{r['label']}: {r['wall_s']} s, held-out i2t R@1 {r['scores']['heldout']['i2t_r1']}", file=sys.stderr)
        peer = None
        if peer_reason is None:
            model_config = work / f"{MODEL_NAME}.json"
            write_json(model_config, openclip_model_config(cfg))
            peer = run_peer_quality(venv, model_config=model_config, shards=data["train_shards"], batch=batch,
                                    steps=steps, threads=args.threads, sets=sets, work=work)
            peer["scores"] = score_side(Path(peer.pop("embeddings")), sets)
            print(f"open_clip: {peer['wall_s']} s, held-out i2t R@1 {peer['scores']['heldout']['i2t_r1']}",
                  file=sys.stderr)
    main_run, variants = ours[0], ours[1:]
    for v in variants:
        v["ratio_over_peer"] = ratios(v["scores"], peer["scores"]) if peer else None
    result = {
        "bench": "openclip_quality", "tiny": args.tiny, "steps": steps, "batch_size": batch,
        "data": {"table": str(Path(args.quality_data).resolve()), "split": "by concept: sha256 of "
                 f"'openclip-quality:{args.split_seed}:<concept>' < {args.holdout}", "split_seed": args.split_seed,
                 "holdout": args.holdout, "train_pairs": len(pairs["train"]), "heldout_pairs": len(pairs["heldout"]),
                 "train_concepts": len({r["concept"] for r in pairs["train"]}),
                 "heldout_concepts": len({r["concept"] for r in pairs["heldout"]}),
                 "train_samples_ingested": data["train_samples"], "tokenizer_vocab_ours": data["tokenizer_vocab"]},
        "scorer": "evaluation.retrieval.retrieval_metrics on L2-normalised embeddings of the sets' original PNGs "
                  "and unique captions (identical captions merged)",
        "ours": main_run,
        "variants": variants,
        "peer": peer | {"trainer": "open_clip_train.main", "model_config": openclip_model_config(cfg),
                        "lr": PEER_LR, "wd": PEER_WD, "warmup": PEER_WARMUP, "precision": "fp32",
                        "threads": args.threads, "venv": str(venv)} if peer else None,
        "peer_reason": peer_reason,
        "ratio_ours_over_peer": ratios(main_run["scores"], peer["scores"] if peer else None),
        "load_average": {"start": load_start, "end": loadavg()},
        "wall_s": round(time.time() - started, 1),
        "versions": {"ours": our_versions(), "peer": peer["versions"] if peer else None},
    }
    write_json(out_dir / "openclip_quality.json", result)
    print_quality_table(result)


def print_quality_table(r: dict) -> None:
    d = r["data"]
    print(f"\nCLIP zero-shot retrieval after {r['steps']} steps of batch {r['batch_size']}; emoji-noto split by "
          f"concept: {d['train_pairs']} training pairs ({d['train_concepts']} concepts), {d['heldout_pairs']} "
          f"held-out pairs ({d['heldout_concepts']} concepts)\n")
    head = " | ".join(f"{s} {m.replace('_r', ' R@')}" for s in ("held-out", "train") for m in METRICS)
    print(f"| model | {head} |\n|{'---|' * (1 + 2 * len(METRICS))}")

    def row(name: str, scores: dict | None) -> str:
        cells = [f"{scores[s][m]:.3f}" if scores else "-" for s in SETS for m in METRICS]
        return f"| {name} | {' | '.join(cells)} |"

    def ratio_row(name: str, rat: dict | None) -> str:
        cells = [(f"{rat[s][m]:.2f}x" if rat[s][m] is not None else "-") if rat else "-" for s in SETS for m in METRICS]
        return f"| {name} | {' | '.join(cells)} |"

    o = r["ours"]
    print(row(f"vlforge clip tiny ({o['params']:,} params)", o["scores"]))
    for v in r["variants"]:
        print(row(f"vlforge clip {v['label']} ({v['params']:,} params)", v["scores"]))
    p = r["peer"]
    print(row(f"open_clip {p['versions'].get('open_clip_torch')} trainer ({p['params']:,} params)" if p else
              "open_clip trainer", p["scores"] if p else None))
    print(ratio_row("ratio vlforge / open_clip", r["ratio_ours_over_peer"]))
    for v in r["variants"]:
        print(ratio_row(f"ratio vlforge {v['label']} / open_clip", v["ratio_over_peer"]))
    chance = r["ours"]["scores"]
    print(f"\nchance i2t R@1: held-out {chance['heldout']['i2t_chance_r1']:.4f}, train {chance['train']['i2t_chance_r1']:.4f};"
          f" wall: ours {o['wall_s']} s" + (f", open_clip {p['wall_s']} s" if p else f"; open_clip not run: {r['peer_reason']}"))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_ours":
        _ours_child(sys.argv[2])
    else:
        sys.exit("run bench/openclip_bench.py --quality")
