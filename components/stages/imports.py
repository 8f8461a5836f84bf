"""Import: a checkpoint vlforge did not train (a Hugging Face ``save_pretrained`` directory, or an open_clip
checkpoint) -> a catalog ``model`` of a family, with its tokenizer registered beside it as a ``tokenizer`` (the
model's parent). A folder a vlforge family wrote (``vlforge catalog export`` of any family) comes back as it was.
The model folder is the family's own form (``save_pretrained`` + ``vlforge_family.json`` + the tokenizer's files),
so training (``init_from``), evaluation and export take it like a trained one.

The config records where it came from (``origin``: path, format, the sha256 of every source file, the keys
initialised fresh, the keys left out) and the source's image preprocessing, whose resize mode, mean and std become
the model's recipe fields (``convert/hf_processor.py``), so training and evaluation feed it what its source did. The cache key is those hashes: importing the same files again finds the same
entries. Everything is read and checked before anything is registered; tensors are read only from safetensors or
``torch.load(weights_only=True)``.

    vlforge import model ./clip-vit-b32 --family clip
    vlforge import model epoch_32.pt --family clip --openclip-config ViT-B-32.json --tokenizer ./tokenizer"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlforge.catalog import Artifact, Catalog
from vlforge.catalog.blobs import hash_file
from vlforge.components.models.convert.hf_checkpoint import HFArchitecture, check_loading_info, hf_architecture
from vlforge.components.models.convert.hf_processor import (
    PREPROCESSOR_FILE,
    Preprocessing,
    preprocessing_fields,
    preprocessing_from_hf,
)
from vlforge.components.models.registry import FAMILY_FILE, Recipe, get_family, special_token_ids
from vlforge.components.stages.base import Output, StageResult, run_stage
from vlforge.components.stages.keys import stage_key
from vlforge.errors import UserError

STAGE = "imports"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model")
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
OPEN_CLIP_RESIZE = {"shortest": "shortest-crop", "squash": "squash", "longest": "longest-pad"}


@dataclass
class ImportResult:
    model: StageResult
    tokenizer: StageResult


@dataclass
class _Prepared:
    """A source read and checked, ready to be written: nothing of it is in the catalog yet."""

    model: nn.Module
    recipe: Recipe
    tokenizer: Any
    origin: dict[str, Any]
    tokenizer_origin: dict[str, Any]
    preprocessing: Preprocessing | None
    initialised: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def source_hashes(paths: list[Path]) -> dict[str, str]:
    """``name -> sha256`` of each file and of every file under each folder (named relative to it)."""
    out: dict[str, str] = {}
    for path in paths:
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            out[f.relative_to(path).as_posix() if path.is_dir() else f.name] = hash_file(f)[0]
    return out


def _refuse_pickles(folder: Path) -> None:
    """A pickled weights file in a Hugging Face folder must hold tensors only (transformers would read it)."""
    from vlforge.components.models.convert.open_clip import load_tensors

    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix in PICKLED_SUFFIXES:
            load_tensors(f)


def _load_tokenizer(path: Path, max_length: int | None) -> Any:
    from vlforge.components.tokenizer import load_tokenizer

    if not path.exists():
        raise UserError(f"--tokenizer '{path}' does not exist")
    if path.is_file() and path.name.endswith((".txt.gz", ".txt")):  # open_clip's BPE vocabulary
        from vlforge.components.models.convert.open_clip import bpe_vocab_tokenizer

        return bpe_vocab_tokenizer(path, max_length or 77)
    if path.is_file() or not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"'{path}' holds no tokenizer (none of {', '.join(TOKENIZER_FILES[:5])}); give --tokenizer "
                        "DIR (or open_clip's BPE vocabulary .txt.gz)")
    try:
        tok = load_tokenizer(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"'{path}' holds no loadable tokenizer: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if max_length is not None:
        tok.model_max_length = max_length
    return tok


def _check_tokenizer(tok: Any, vocab_size: int | None, eos_token_id: int | None, where: str, tok_where: str) -> None:
    if vocab_size is not None and len(tok) > vocab_size:
        raise UserError(f"tokenizer '{tok_where}' has {len(tok)} tokens; the model {where} embeds {vocab_size}")
    # CLIP pools its text at the first end token (transformers' eos_token_id 2: at the highest id, open_clip's argmax)
    if eos_token_id is not None and eos_token_id != 2 and tok.eos_token_id != eos_token_id:
        raise UserError(f"tokenizer '{tok_where}' ends texts with id {tok.eos_token_id}; the model {where} pools at "
                        f"id {eos_token_id}")


def _recipe(family_name: str, fields: dict[str, Any], where: str) -> Recipe:
    family = get_family(family_name)
    return family.validate_recipe({**family.recipe_cls().model_dump(), **fields}, f"{where} as a {family_name} recipe")


def _prepare_hf(src: Path, family_name: str, tokenizer_path: Path | None) -> _Prepared:
    arch: HFArchitecture = hf_architecture(family_name)
    config_file = src / "config.json"
    if not config_file.is_file():
        raise UserError(f"'{src}' holds no Hugging Face checkpoint (no config.json)")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != arch.model_type:
        raise UserError(f"'{src}' holds a '{config.get('model_type')}' model; family '{family_name}' takes a "
                        f"'{arch.model_type}' checkpoint")
    _refuse_pickles(src)
    torch.manual_seed(0)  # a head the source lacks starts the same in every import
    try:
        model, info = arch.load(src)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"'{src}' does not load as a {arch.model_type} checkpoint: {str(exc).strip().splitlines()[0]}") from None
    initialised, dropped = check_loading_info(info, arch, f"'{src}'")
    recipe_fields = arch.recipe_fields(config, f"'{src}'")
    pre = None
    if arch.images:
        pre = (preprocessing_from_hf(json.loads((src / PREPROCESSOR_FILE).read_text()), f"'{src / PREPROCESSOR_FILE}'")
               if (src / PREPROCESSOR_FILE).is_file() else None)
        if pre is not None:
            if pre.image_size != recipe_fields["image_size"]:
                raise UserError(f"'{src / PREPROCESSOR_FILE}' gives {pre.image_size} px images; the model takes "
                                f"{recipe_fields['image_size']} px")
            recipe_fields = {**recipe_fields, **preprocessing_fields(pre, family_name, f"'{src}'")}
    recipe = _recipe(family_name, recipe_fields, f"'{src}'")
    tok_path = tokenizer_path or src
    max_length = recipe_fields.get("max_text_length")
    tokenizer = _load_tokenizer(tok_path, max_length)
    text = config.get("text_config", config)
    eos = text.get("eos_token_id") if family_name == "clip" else None
    _check_tokenizer(tokenizer, recipe_fields.get("vocab_size"), eos, f"'{src}'", str(tok_path))
    origin = {"path": str(src.resolve()), "format": "hf", "architecture": (config.get("architectures") or [None])[0],
              "files": source_hashes([src])}
    return _Prepared(model, recipe, tokenizer, origin, _tokenizer_origin(tok_path), pre, initialised, dropped)


def _prepare_vlforge(src: Path, family_name: str, tokenizer_path: Path | None) -> _Prepared:
    """A folder a vlforge family wrote (a trained model, an export): its family file names family and recipe."""
    from vlforge.components.models.convert.hf_processor import model_preprocessing
    from vlforge.components.models.registry import read_family_file

    family, recipe = read_family_file(src)
    if family.name != family_name:
        raise UserError(f"'{src}' holds a '{family.name}' model, not a '{family_name}' one")
    _refuse_pickles(src)
    model = family.load(src)
    tok_path = tokenizer_path or src
    tokenizer = _load_tokenizer(tok_path, recipe.max_text_length)
    if len(tokenizer) > (getattr(recipe, "vocab_size", None) or len(tokenizer)):
        raise UserError(f"tokenizer '{tok_path}' has {len(tokenizer)} tokens; the model '{src}' embeds {recipe.vocab_size}")
    origin = {"path": str(src.resolve()), "format": "vlforge", "files": source_hashes([src])}
    return _Prepared(model, recipe, tokenizer, origin, _tokenizer_origin(tok_path), model_preprocessing(src))


def _prepare_open_clip(src: Path, config_file: Path | None, tokenizer_path: Path | None) -> _Prepared:
    from transformers import CLIPConfig, CLIPModel

    from vlforge.components.models.convert.hf_checkpoint import HF_ARCHITECTURES
    from vlforge.components.models.convert.open_clip import hf_clip_config, open_clip_to_hf_state, read_open_clip

    model_cfg, preprocess_cfg, state = read_open_clip(src, config_file)
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    tok_path = tokenizer_path or (src if src.is_dir() else None)
    if tok_path is None:
        raise UserError(f"an open_clip checkpoint file carries no tokenizer: give --tokenizer DIR for '{src}'")
    tokenizer = _load_tokenizer(tok_path, int(text.get("context_length", 77)))
    hf_state = open_clip_to_hf_state(state, int(vision.get("layers", 12)), int(text.get("layers", 12)), f"'{src}'")
    config = CLIPConfig(**hf_clip_config(model_cfg, special_token_ids(tokenizer)))
    model = CLIPModel(config)
    try:
        model.load_state_dict(hf_state, strict=True)
    except RuntimeError as exc:  # a shape that does not fit the config
        raise UserError(f"'{src}': the state dict does not fit the open_clip config: "
                        f"{str(exc).strip().splitlines()[-1].strip()}") from None
    model.eval()
    config_dict = config.to_dict()
    recipe_fields = HF_ARCHITECTURES["clip"].recipe_fields(config_dict, f"'{src}'")
    size = preprocess_cfg.get("size", vision.get("image_size", 224))
    clip = get_family("clip")  # open_clip's defaults are OpenAI's mean and std, as the clip family's
    resize = preprocess_cfg.get("resize_mode", "shortest")
    pre = Preprocessing(int(size[0] if isinstance(size, (list, tuple)) else size),
                        tuple(preprocess_cfg.get("mean", clip.image_mean)), tuple(preprocess_cfg.get("std", clip.image_std)),
                        str(preprocess_cfg.get("interpolation", "bicubic")), OPEN_CLIP_RESIZE.get(resize, resize))
    if pre.image_size != recipe_fields["image_size"]:
        raise UserError(f"'{src}': preprocess size {pre.image_size} px; the model takes {recipe_fields['image_size']} px")
    recipe_fields = {**recipe_fields, **preprocessing_fields(pre, "clip", f"'{src}'")}
    _check_tokenizer(tokenizer, int(recipe_fields["vocab_size"]), config.text_config.eos_token_id, f"'{src}'", str(tok_path))
    sources = [src] + ([config_file] if config_file is not None and not src.is_dir() else [])
    origin = {"path": str(src.resolve()), "format": "open_clip", "files": source_hashes(sources),
              "open_clip_config": model_cfg}
    return _Prepared(model, _recipe("clip", recipe_fields, f"'{src}'"), tokenizer, origin, _tokenizer_origin(tok_path), pre)


def _tokenizer_origin(path: Path) -> dict[str, Any]:
    return {"path": str(path.resolve()), "files": source_hashes([path])}


def _is_open_clip(src: Path, config_file: Path | None) -> bool:
    from vlforge.components.models.convert.open_clip import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS

    return src.is_file() or config_file is not None or (src / OPEN_CLIP_CONFIG).is_file() or (src / OPEN_CLIP_WEIGHTS).is_file()


def _default_name(src: Path, family: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{family}-{src.stem if src.is_file() else src.resolve().name}").strip("-.")


def run_import(src: Path | str, family_name: str, catalog: Catalog, *, name: str | None = None,
               tokenizer: Path | str | None = None, openclip_config: Path | str | None = None) -> ImportResult:
    """Register the checkpoint at ``src`` as a ``family_name`` model and its tokenizer beside it (cached by the
    source files' hashes). One-line UserErrors, with nothing registered, for a source that is not what the
    family takes, pickled objects, a missing tokenizer, or keys that do not fit."""
    src = Path(src)
    get_family(family_name)
    if not src.exists():
        raise UserError(f"'{src}' does not exist")
    tok_path = Path(tokenizer) if tokenizer is not None else None
    config_path = Path(openclip_config) if openclip_config is not None else None
    if _is_open_clip(src, config_path):
        if family_name != "clip":
            raise UserError(f"'{src}' is an open_clip checkpoint; only family 'clip' takes one (not '{family_name}')")
        prepared = _prepare_open_clip(src, config_path, tok_path)
    elif (src / FAMILY_FILE).is_file():
        prepared = _prepare_vlforge(src, family_name, tok_path)
    else:
        prepared = _prepare_hf(src, family_name, tok_path)
    name = name or _default_name(src, family_name)
    family = get_family(family_name)

    tok_config = {"origin": prepared.tokenizer_origin, "max_length": prepared.tokenizer.model_max_length}
    tok_key = stage_key(STAGE, {}, {"what": "tokenizer", **tok_config})

    def write_tokenizer(folder: Path) -> Output:
        prepared.tokenizer.save_pretrained(folder)
        return Output("tokenizer", f"{name}-tokenizer", folder, tok_config, [], {"vocab_size": len(prepared.tokenizer)})

    tok_result = run_stage(STAGE, tok_key, catalog, write_tokenizer)
    tok_art: Artifact = tok_result.artifact
    origin = {**prepared.origin, "initialised": prepared.initialised, "dropped": prepared.dropped}
    config = {"family": family_name, "recipe": "imported", "values": prepared.recipe.model_dump(mode="json"),
              "origin": origin, **({"preprocessing": prepared.preprocessing.as_dict()} if prepared.preprocessing else {})}
    key = stage_key(STAGE, {"tokenizer": tok_art.id}, {"what": "model", **config}, [family_name])

    def write_model(folder: Path) -> Output:
        from vlforge.components.tokenizer import copy_tokenizer

        family.save(prepared.model, folder, prepared.recipe)
        copy_tokenizer(catalog.path(tok_art.id), folder)
        params = sum(p.numel() for p in prepared.model.parameters())
        return Output("model", name, folder, config, [tok_art.id], {"parameters": params}, family_name)

    return ImportResult(run_stage(STAGE, key, catalog, write_model), tok_result)
