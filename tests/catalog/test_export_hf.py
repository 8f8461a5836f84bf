"""``vlforge catalog export``: what it writes is loaded by plain transformers (``hf``) and by open_clip's layout
(``open_clip``), and preprocesses, tokenizes and embeds exactly as vlforge does."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_checkpoints import CAPTIONS, open_clip_image_features, open_clip_text_features, tiny_tokenizer
from vlforge.catalog import Artifact, Catalog
from vlforge.catalog.export import export
from vlforge.components.models.registry import get_family, read_family_file, special_token_ids
from vlforge.components.stages.imports import run_import
from vlforge.components.tokenizer import copy_tokenizer, load_tokenizer
from vlforge.errors import UserError

LONG = "a red circle " * 12  # longer than the model's 16 tokens: truncated the same way on both sides


@pytest.fixture
def catalog(home: Path) -> Catalog:
    return Catalog(home / "catalog")


@pytest.fixture
def clip_model(catalog: Catalog, tmp_path: Path, request: pytest.FixtureRequest) -> Artifact:
    """A clip model as the train stage writes it (family.save + the tokenizer's files), 40 px images; an indirect
    parameter adds recipe values."""
    tok_dir = tiny_tokenizer(tmp_path / "tok", max_length=32)
    tok = load_tokenizer(tok_dir)
    family = get_family("clip")
    recipe = family.recipe("tiny", {"image_size": 40, "patch_size": 8, "max_text_length": 16, "embed_dim": 16,
                                    "vision_width": 32, "vision_layers": 1, "vision_heads": 2, "text_width": 32,
                                    "text_layers": 1, "text_heads": 2, **getattr(request, "param", {})})
    torch.manual_seed(0)
    folder = tmp_path / "model"
    family.save(family.build_model(recipe, len(tok), special_token_ids(tok)), folder, recipe)
    copy_tokenizer(tok_dir, folder)
    return catalog.register(kind="model", name="clip-tiny", family="clip", files=folder,
                            config={"family": "clip", "recipe": "tiny", "values": recipe.model_dump()})


def _images() -> list[Image.Image]:
    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 256, shape, dtype=np.uint8)) for shape in ((40, 40, 3), (50, 80, 3), (97, 31, 3))]


@pytest.mark.parametrize("clip_model", [{}, {"image_resize": "shortest-crop", "image_mean": (0.5, 0.25, 0.75)}],
                         indirect=True, ids=["squash", "shortest-crop"])
def test_hf_export_preprocesses_and_tokenizes_as_vlforge(catalog: Catalog, clip_model: Artifact, tmp_path: Path) -> None:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPProcessor

    out = export(catalog, clip_model.id, tmp_path / "export")
    processor = CLIPProcessor.from_pretrained(out)
    assert type(AutoImageProcessor.from_pretrained(out)) is type(processor.image_processor)
    family, recipe = read_family_file(catalog.path(clip_model.id))
    ours = torch.stack([family.image_transform(recipe)(im) for im in _images()])
    theirs = torch.cat([processor(images=im, return_tensors="pt")["pixel_values"] for im in _images()])
    assert theirs.shape == ours.shape and (theirs - ours).abs().max() < 1e-5

    texts = [*CAPTIONS, LONG]
    vlforge_ids = load_tokenizer(catalog.path(clip_model.id))(texts, padding="max_length", truncation=True,
                                                               max_length=16)["input_ids"]
    assert processor(text=texts, padding="max_length", truncation=True)["input_ids"] == vlforge_ids
    assert AutoTokenizer.from_pretrained(out)(texts, padding="max_length", truncation=True)["input_ids"] == vlforge_ids


def test_export_refuses_a_non_empty_folder_and_an_unknown_format(catalog: Catalog, clip_model: Artifact,
                                                                 tmp_path: Path) -> None:
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="is not an empty folder"):
        export(catalog, clip_model.id, target)
    with pytest.raises(UserError, match="--format 'onnx' is not one of hf, open_clip"):
        export(catalog, clip_model.id, tmp_path / "onnx", "onnx")
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"] and not (tmp_path / "onnx").exists()


def test_open_clip_export_is_open_clips_network_and_imports_back(catalog: Catalog, clip_model: Artifact,
                                                                 tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = export(catalog, clip_model.id, tmp_path / "oc", "open_clip")
    config = json.loads((out / "open_clip_config.json").read_text())
    cfg = config["model_cfg"]
    assert config["preprocess_cfg"]["resize_mode"] == "squash" and cfg["text_cfg"]["pool_type"] == "eos"
    state = load_file(str(out / "open_clip_model.safetensors"))
    family = get_family("clip")
    model = family.load(catalog.path(clip_model.id)).eval()
    pixels = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    enc = load_tokenizer(out)(CAPTIONS, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        img = family.encode_images(model, pixels)
        txt = family.encode_texts(model, enc["input_ids"], enc["attention_mask"])
    assert (F.normalize(open_clip_image_features(state, pixels, cfg), dim=-1) - img).abs().max() < 1e-5
    assert (F.normalize(open_clip_text_features(state, enc["input_ids"], cfg), dim=-1) - txt).abs().max() < 1e-5

    back = run_import(out, "clip", catalog, name="clip-tiny-back").model.artifact
    again = family.load(catalog.path(back.id))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
