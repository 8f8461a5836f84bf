"""Fine-tuning from an imported checkpoint against training from scratch (issue 18), tiny and on CPU.

    .venv/bin/python bench/import_finetune_bench.py [--scenes 240] [--steps 60]

A tiny CLIP is trained on builtin scenes (the "pretrained" model), exported (``vlforge catalog export``, hf) and
imported back (``vlforge import model``): its retrieval must be exactly the original's. Then two runs of the same
length and seed on the same data with the imported tokenizer: one from scratch, one with
``init_from=catalog:<import>``. Each model's first/final training loss and validation retrieval go to
bench/results/import-finetune.json and a markdown table on stdout. Ray Train, one worker; a few minutes."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {"image_size": 32, "patch_size": 8, "max_text_length": 16, "embed_dim": 32, "vision_width": 32,
         "vision_layers": 1, "vision_heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2, "num_workers": 1,
         "batch_size": 32, "log_every": 10, "checkpoint_every": 100, "warmup_steps": 5}
METRICS = ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=240)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VLFORGE_HOME"] = str(Path(tmp) / "home")
        from vlforge.catalog import Catalog
        from vlforge.catalog.export import export
        from vlforge.components.data.crawl import CrawlConfig
        from vlforge.components.data.shard import ShardConfig
        from vlforge.components.sources.config import SourceConfig
        from vlforge.components.stages import run_eval, run_import, run_ingest, run_tokenizer, run_train
        from vlforge.components.tokenizer import TokenizerConfig

        catalog = Catalog(Path(tmp) / "home" / "catalog")
        start = time.perf_counter()
        data = run_ingest(SourceConfig(spec=f"builtin:shapes?n={args.scenes}&image_size=32"),
                          CrawlConfig(image_size=32, processes=1), ShardConfig(samples_per_shard=40), catalog).artifact
        tok = run_tokenizer(data.id, TokenizerConfig(vocab_size=128), catalog).artifact
        steps = {**SIZES, "steps": args.steps}
        pretrained = run_train("clip", "tiny", steps, data.id, tok.id, catalog).artifact
        imported = run_import(export(catalog, pretrained.id, Path(tmp) / "export"), "clip", catalog, name="clip-imported")
        tok_id, model_id = imported.tokenizer.artifact.id, imported.model.artifact.id
        scratch = run_train("clip", "tiny", {**steps, "seed": 1}, data.id, tok_id, catalog).artifact
        tuned = run_train("clip", "tiny", {**steps, "seed": 1, "init_from": f"catalog:{model_id}"}, data.id, tok_id,
                          catalog).artifact
        assert model_id in tuned.parents, "the imported model is not the fine-tuned model's parent"
        rows = {}
        for label, model in (("pretrained", pretrained), ("imported back", imported.model.artifact),
                             ("from scratch", scratch), ("fine-tuned from the import", tuned)):
            report = run_eval(model.id, data.id, ["retrieval"], "validation", catalog).artifact
            rows[label] = {"first_loss": model.metrics.get("first_loss"), "final_loss": model.metrics.get("final_loss"),
                           **{k: report.metrics[k] for k in METRICS}}
        seconds = time.perf_counter() - start
    result = {"scenes": args.scenes, "steps": args.steps, "seconds": round(seconds, 1), "rows": rows,
              "import_scores_the_original": {k: rows["imported back"][k] for k in METRICS}
              == {k: rows["pretrained"][k] for k in METRICS}}
    out = REPO / "bench" / "results" / "import-finetune.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    cols = ["first_loss", "final_loss", *METRICS]
    print("| model | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join("" if row[c] is None else f"{row[c]:.3f}" for c in cols) + " |")
    print(f"\nimport scores the original: {result['import_scores_the_original']}; {seconds:.0f} s")


if __name__ == "__main__":
    main()
