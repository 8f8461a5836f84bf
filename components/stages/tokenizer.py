"""Tokenizer: a dataset -> a BPE tokenizer learnt on its training split's captions and the task prompts.

    vlforge run tokenizer --data shapes"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from vlforge.catalog import Artifact, Catalog
from vlforge.components.sources.tables import read_parquet
from vlforge.components.stages.base import Output, StageResult, on_cluster, require_kind, run_stage
from vlforge.components.stages.keys import stage_key
from vlforge.components.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

# The words of the task prompts the generative families train and the evaluation asks with, so they are not
# <unk> for a tokenizer learned from captions (``evaluation/vqa.py``, ``models/vlt5/tasks.py``).
TASK_PROMPT_WORDS = ("question: answer: caption: image text match: true false visual grounding: caption region: "
                     "span prediction: denoise text: yes no")


def task_texts(train_rows: list[dict]) -> list[str]:
    """Texts the tokenizer learns besides the captions: the task prompt words and, for samples with scene facts,
    their VQA questions with answers (the training split only, as for the captions)."""
    from vlforge.components.sources.scene_tasks import vqa_questions

    texts = [TASK_PROMPT_WORDS]
    for row in train_rows:
        if row.get("facts"):
            facts = json.loads(row["facts"]) if isinstance(row["facts"], str) else row["facts"]
            texts += [f"question: {q.question} answer: {q.answer}" for q in vqa_questions(row.get("key") or "", facts)]
    return texts


def tokenizer_key(data_ref: str, cfg: TokenizerConfig, catalog: Catalog) -> tuple[str, Artifact]:
    dataset = require_kind(catalog, data_ref, "dataset", "--data")
    return stage_key("tokenizer", {"dataset": dataset.id}, cfg.model_dump()), dataset


def run_tokenizer(data_ref: str, cfg: TokenizerConfig, catalog: Catalog, ray_address: str | None = None) -> StageResult:
    key, dataset = tokenizer_key(data_ref, cfg, catalog)

    def work(folder: Path) -> Output:
        index = catalog.path(dataset.id) / "samples.parquet"
        columns = [c for c in ("caption", "split", "key", "facts") if c in pq.read_schema(index).names]
        train = [s for s in read_parquet(index, columns=columns).to_pylist() if s["split"] == "train"]
        corpus = [s["caption"] for s in train] + task_texts(train)
        on_cluster(ray_address, train_tokenizer, corpus, folder, cfg)
        return Output("tokenizer", f"{dataset.name}-tokenizer", folder, cfg.model_dump(), [dataset.id],
                      {"vocab_size": len(load_tokenizer(folder))})

    return run_stage("tokenizer", key, catalog, work)
