"""Fixtures for the evaluation tests (imported by each test module): a small shapes dataset written with the project's own shard writer, a
tokenizer trained on its captions and a tiny CLIP checkpoint built in-process (no Ray, no Prefect)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from crawl_folders import write_crawl_folder
from vlforge.components.data.shard import ShardConfig, shard_crawl
from vlforge.components.models.registry import get_family, special_token_ids
from vlforge.components.sources.shapes import make_scene, render_scene
from vlforge.components.tokenizer import (
    TokenizerConfig,
    load_tokenizer,
    train_tokenizer,
)

CLIP_OVERRIDES = {"image_size": 32, "patch_size": 8, "max_text_length": 16, "embed_dim": 32, "vision_width": 32,
                  "vision_layers": 1, "vision_heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2}
# a tiny text-mlm BERT, and a vk-transfer student whose BERT starts from one (add its ``text_init``)
TEXT_MLM_OVERRIDES = {"max_text_length": 16, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                      "max_position_embeddings": 64}
VK_STUDENT_OVERRIDES = {"max_text_length": 16, "objectives": {"mlm": 1.0}}


def write_shapes_dataset(out: Path, n: int, image_size: int = 48, with_facts: bool = True, labels: bool = True,
                         validation_fraction: float = 0.5, extra=None) -> Path:
    """Scenes 0..n-1 of seed 0, written as an img2dataset-style crawl folder and sharded by ``shard_crawl``.
    ``extra(i, scene) -> dict``: a benchmark layout's extra fields of sample i (its split, several captions)."""
    samples = []
    for i in range(n):
        scene = make_scene(0, i)
        buf = io.BytesIO()
        render_scene(scene, image_size).save(buf, format="PNG")
        meta = {"source_key": f"shapes-0-{i:06d}", "url": f"file:///shapes/{i}.png",
                "label": scene.label if labels else "",
                "facts": json.dumps(scene.facts()) if with_facts else ""}
        if extra is not None:
            meta["extra"] = json.dumps(extra(i, scene))
        samples.append((buf.getvalue(), scene.caption, meta))
    crawl = write_crawl_folder(out.parent / f"{out.name}-crawl", samples)
    shard_crawl(crawl, out, ShardConfig(samples_per_shard=64, validation_fraction=validation_fraction), {"kind": "test"})
    return out


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", 48)


def save_untrained(family_name: str, overrides: dict, captions: list[str], out: Path, seed: int = 1) -> Path:
    """An untrained model of the family's tiny recipe (built at ``seed``) saved like a pipeline checkpoint, with a
    tokenizer trained on ``captions`` beside it."""
    train_tokenizer(captions, out, TokenizerConfig(vocab_size=128))
    tokenizer = load_tokenizer(out)
    family = get_family(family_name)
    recipe = family.recipe("tiny", overrides)
    torch.manual_seed(seed)
    family.save(family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer)), out, recipe)
    return out


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory, shapes_dataset: Path) -> Path:
    """An (untrained) tiny CLIP saved like a pipeline checkpoint, with its tokenizer beside it."""
    captions = pq.read_table(shapes_dataset / "samples.parquet", columns=["caption"]).column("caption").to_pylist()
    return save_untrained("clip", CLIP_OVERRIDES, captions, tmp_path_factory.mktemp("model") / "clip")


@pytest.fixture
def make_dataset(tmp_path: Path):
    """``make_dataset(name, n, **options)`` -> a dataset folder (see ``write_shapes_dataset``)."""
    return lambda name, n, **kw: write_shapes_dataset(tmp_path / name, n, **kw)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run faster on one thread; on a loaded 2-core machine two threads spin and run ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clip_context(model_dir: Path, dataset: Path, split: str = "validation"):
    """An ``EvalContext`` of the model in ``model_dir`` on ``split`` of ``dataset`` (its train split for probes)."""
    from vlforge.components.data.loader import read_split
    from vlforge.components.evaluation.tasks import EvalContext
    from vlforge.components.models.registry import read_family_file
    from vlforge.components.tokenizer import load_tokenizer

    family, recipe = read_family_file(model_dir)
    return EvalContext(family, family.load(model_dir).eval(), recipe, load_tokenizer(model_dir), read_split(dataset, split),
                       lambda: read_split(dataset, "train"))
