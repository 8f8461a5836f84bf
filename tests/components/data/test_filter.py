"""The filter stage on a hand-built dataset with known duplicates, bad captions, a corrupt image in a shard, and
a tiny (untrained) CLIP as the scoring model: every rule removes exactly what it should, and the stage registers
the result with the dataset and the model as parents."""
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from vlforge.catalog import Catalog
from vlforge.components.data.filter import FilterConfig, dhash, filter_dataset
from vlforge.components.data.shard import _SplitWriter
from vlforge.components.models.registry import get_family, special_token_ids
from vlforge.components.stages import run_filter
from vlforge.components.tokenizer import (
    TokenizerConfig,
    load_tokenizer,
    train_tokenizer,
)

from vlforge.errors import UserError

CLIP_OVERRIDES = {"image_size": 32, "patch_size": 8, "max_text_length": 16, "embed_dim": 32, "vision_width": 32,
                  "vision_layers": 1, "vision_heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2}


def base_image(i: int) -> Image.Image:
    """Smooth random blocks: distinct images have distant dHashes, re-encodings of one image close ones."""
    blocks = np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((64, 64), Image.Resampling.BILINEAR)


def encode(image: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def build_dataset(out: Path) -> dict[str, str]:
    """20 good samples + 3 exact and 2 near duplicates + 2 empty, 1 non-text caption + 1 corrupt image.
    Returns key -> expected fate."""
    out.mkdir(parents=True)
    items = [(f"good{i:02d}", encode(base_image(i)), f"a photo of thing number {i}", "keep") for i in range(20)]
    items += [(f"exact{i}", encode(base_image(0)), f"another caption {i}", "exact_duplicate") for i in range(3)]
    items += [(f"near{i}", encode(base_image(1 + i).resize((48, 48)), "JPEG", quality=70), f"similar picture {i}",
               "near_duplicate") for i in range(2)]
    items += [(f"empty{i}", encode(base_image(100 + i)), "   ", "caption_empty") for i in range(2)]
    items += [("digits", encode(base_image(200)), "1234 5678 !!!! ####", "caption_not_text")]
    items += [("corrupt", b"\x89PNG\r\n\x1a\nthis is not a png", "a broken image", "undecodable")]
    writers = {s: _SplitWriter(out, s, per_shard=8) for s in ("train", "validation")}
    rows = []
    for n, (key, data, caption, _) in enumerate(items):
        split = "validation" if n % 5 == 4 else "train"
        ext = "jpg" if data[:2] == b"\xff\xd8" else "png"
        shard = writers[split].write(key, {ext: data, "txt": caption.encode(), "json": json.dumps({"url": key}).encode()})
        rows.append({"key": key, "split": split, "shard": shard, "caption": caption, "label": "", "facts": "", "url": key,
                     "width": 64, "height": 64, "original_width": 64, "original_height": 64})
    shards = [s for w in writers.values() for s in w.close()]
    pq.write_table(pa.Table.from_pylist(rows), out / "samples.parquet")
    manifest = {"format": "webdataset", "source": {"kind": "test"}, "samples": len(rows), "attempted": len(rows),
                "failures_by_reason": {}, "shards": shards, "labels": [], "has_facts": False,
                "splits": {s: {"samples": sum(r["split"] == s for r in rows),
                               "shards": [x["shard"] for x in shards if x["split"] == s]} for s in ("train", "validation")}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return {key: fate for key, _, _, fate in items}


def tiny_clip(out: Path) -> Path:
    train_tokenizer([f"a photo of thing number {i}" for i in range(50)], out, TokenizerConfig(vocab_size=128))
    tokenizer = load_tokenizer(out)
    family = get_family("clip")
    recipe = family.recipe("tiny", CLIP_OVERRIDES)
    torch.manual_seed(1)
    family.save(family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer)), out, recipe)
    return out


def test_near_duplicate_hash_is_robust_to_resize_and_reencode() -> None:
    a, b = dhash(base_image(3)), dhash(Image.open(io.BytesIO(encode(base_image(3).resize((40, 40)), "JPEG", quality=60))))
    assert (a ^ b).bit_count() <= 4 < (a ^ dhash(base_image(4))).bit_count()


def test_each_rule_removes_what_it_should(tmp_path: Path) -> None:
    fates = build_dataset(tmp_path / "ds")
    manifest = filter_dataset(tmp_path / "ds", tmp_path / "out", FilterConfig(samples_per_shard=6))
    expected = {r: sum(f == r for f in fates.values()) for r in set(fates.values()) - {"keep"}}
    assert {k: v for k, v in manifest["removed_by_rule"].items() if v} == expected
    assert manifest["funnel"][0] == {"rule": "input", "removed": 0, "remaining": len(fates)}
    assert manifest["funnel"][-1]["remaining"] == manifest["samples"] == 20
    kept = pq.read_table(tmp_path / "out" / "samples.parquet").to_pylist()
    assert sorted(r["key"] for r in kept) == sorted(k for k, f in fates.items() if f == "keep")
    source_split = {r["key"]: r["split"] for r in pq.read_table(tmp_path / "ds" / "samples.parquet").to_pylist()}
    assert all(r["split"] == source_split[r["key"]] for r in kept)  # a sample keeps its split
    assert sum(s["samples"] for s in manifest["shards"]) == 20


def test_caption_and_image_limits(tmp_path: Path) -> None:
    build_dataset(tmp_path / "ds")
    cfg = FilterConfig(min_caption_words=6, min_side=65, exact_duplicates=False, near_duplicates=False)
    manifest = filter_dataset(tmp_path / "ds", tmp_path / "out", cfg)
    # duplicates and "1234 5678 !!!! ####" have < 6 words; "a photo of thing number N" has 6, then its 64 px image is too small
    assert manifest["removed_by_rule"]["caption_too_short"] == 6 and manifest["removed_by_rule"]["image_too_small"] == 20
    assert manifest["samples"] == 0


def test_clip_score_top_fraction_and_stage_lineage(tmp_path: Path, home: Path) -> None:
    catalog = Catalog(home / "catalog")
    build_dataset(tmp_path / "ds")
    data = catalog.register(kind="dataset", name="toy", files=tmp_path / "ds", config={})
    model = catalog.register(kind="model", name="clip-toy", family="clip", files=tiny_clip(tmp_path / "clip"), config={})
    cfg = FilterConfig(clip_model="clip-toy", clip_top_fraction=0.5)
    result = run_filter("toy", cfg, catalog)
    art = result.artifact
    assert not result.cached and art.kind == "dataset" and art.name == "toy-filtered"
    assert set(art.parents) == {data.id, model.id}
    out = catalog.path(art.id)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["removed_by_rule"]["clip_score"] == 10 and manifest["samples"] == 10
    scores = {r["key"]: r["clip_score"] for r in pq.read_table(out / "scores.parquet").to_pylist()}
    kept = set(pq.read_table(out / "samples.parquet").column("key").to_pylist())
    assert len(scores) == 20 and min(scores[k] for k in kept) >= max(v for k, v in scores.items() if k not in kept)
    assert "| clip_score | 10 | 10 |" in (out / "README.md").read_text()
    again = run_filter("toy", cfg, catalog)
    assert again.cached and again.artifact.id == art.id


def test_bad_filter_inputs(tmp_path: Path, home: Path) -> None:
    catalog = Catalog(home / "catalog")
    build_dataset(tmp_path / "ds")
    catalog.register(kind="dataset", name="toy", files=tmp_path / "ds", config={})
    with pytest.raises(ValueError, match="exactly one of"):
        FilterConfig(clip_model="m")
    with pytest.raises(UserError, match="is a dataset, not a model"):
        run_filter("toy", FilterConfig(clip_model="toy", clip_threshold=0.2), catalog)
    with pytest.raises(UserError, match="removed every sample"):
        run_filter("toy", FilterConfig(min_side=1000), catalog)
    assert [a.name for a in catalog.list()] == ["toy"]  # nothing half-registered
    (tmp_path / "ds" / "train-000000.tar").write_bytes(b"not a tar at all")
    broken = catalog.register(kind="dataset", name="broken", files=tmp_path / "ds", config={})
    with pytest.raises(UserError, match="not a readable tar"):
        run_filter(broken.id, FilterConfig(), catalog)
