"""A small real lineage registered straight through ``Catalog.register`` (no pipeline): a dataset whose caption,
card (markdown: a heading, a list, a table, code, a javascript: link) and config carry a ``<script>`` payload, a
tokenizer, two model versions with a loss plot, a training log (the second with ``val_*`` rows, as an in-training
evaluation writes) and safetensors weights, and an evaluation with its untrained baseline. Shared by the catalog,
CLI and browser tests."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import save_file
from vlforge.catalog import Artifact, Catalog

XSS = "<script>window.__xss=1</script>"


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def seed_lineage(catalog: Catalog, work: Path) -> dict[str, Artifact]:
    """Register dataset -> tokenizer -> model (2 versions) -> eval and return them by role."""
    work.mkdir(parents=True, exist_ok=True)
    data = work / "dataset"
    data.mkdir()
    pq.write_table(pa.table({"key": ["0", "1"], "caption": [f"a red square {XSS}", "a blue circle"],
                             "split": ["train", "validation"]}), data / "samples.parquet")
    (data / "README.md").write_text(f"# Dataset card: shapes-mini\nCaptions from the web, e.g. {XSS}\n\n"
                                    "## Splits\n\n- **train**: 1 sample\n- validation: 1 sample\n\n"
                                    "| split | samples |\n|---|---|\n| train | 1 |\n\n"
                                    "```\nvlforge run ingest --source builtin:shapes?n=2\n```\n\n"
                                    "[a trap](javascript:window.__xss=2) and [the docs](https://example.org/docs)\n")
    dataset = catalog.register(kind="dataset", name="shapes-mini", files=data,
                               config={"source": {"spec": f"builtin:shapes?n=2 {XSS}"}}, metrics={"samples": 2})
    tok = work / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"model": "bpe"}')
    tokenizer = catalog.register(kind="tokenizer", name="shapes-mini-tokenizer", files=tok, config={"vocab": 64},
                                 parents=[dataset.id], metrics={"vocab_size": 64})
    models = []
    for version, (lr, r1) in enumerate([(1e-3, 0.25), (3e-4, 0.5)], start=1):
        folder = work / f"model{version}"
        folder.mkdir()
        save_file({"w": np.full((4, 4), version, dtype=np.float32)}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text('{"model_type": "vlforge_clip"}')
        (folder / "loss.png").write_bytes(_png())
        log = [{"step": step, "loss": 4.0 / (step * version), "lr": 1e-3} for step in (2, 4, 6, 8, 10)]
        if version == 2:
            log += [{"step": step, "val_loss": 3.0 / step, "val_zs_top1": step / 20} for step in (5, 10)]
        (folder / "train_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in sorted(
            log, key=lambda row: row["step"])))
        models.append(catalog.register(kind="model", name="clip-shapes-mini", family="clip", files=folder,
                                       config={"family": "clip", "recipe": "tiny", "values": {"lr": lr, "steps": 10}},
                                       parents=[dataset.id, tokenizer.id],
                                       metrics={"final_loss": 1.0 / version, "i2t_r1": r1}))
    report = work / "eval"
    report.mkdir()
    (report / "report.json").write_text('{"i2t_r1": 0.5}')
    (report / "retrieval.png").write_bytes(_png())
    evaluation = catalog.register(kind="eval", name="clip-shapes-mini-eval", family="clip", files=report,
                                  config={"tasks": ["retrieval"], "split": "validation"},
                                  parents=[models[1].id, dataset.id],
                                  metrics={"baseline_i2t_r1": 0.125, "baseline_t2i_r1": 0.1, "i2t_r1": 0.5, "t2i_r1": 0.4})
    return {"dataset": dataset, "tokenizer": tokenizer, "model1": models[0], "model": models[1], "eval": evaluation}
