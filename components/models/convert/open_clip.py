"""open_clip <-> Hugging Face ``CLIPModel``: the state-dict key layout, the config, and the checkpoint files.

open_clip's ``CLIP`` (Ilharco et al., github.com/mlfoundations/open_clip, ``src/open_clip/model.py`` and
``transformer.py``) and transformers' ``CLIPModel`` compute the same network (Radford et al., 2021) with other
names: open_clip keeps each attention's q/k/v as one ``in_proj_weight`` (3w x w), its projections as matrices the
features are right-multiplied by (``x @ proj``: the transpose of a ``Linear`` weight), the text tower at the top
level (``token_embedding``, ``transformer``, ``ln_final``) and the vision tower under ``visual.``. Its activation
is exact GELU unless the model config says ``quick_gelu`` (OpenAI's checkpoints), its text features are pooled at
the highest token id (``pool_type: argmax``, the end-of-text token of its BPE vocabulary) or at the first
``eos_id`` (``pool_type: eos``); ``logit_scale`` is the log of the temperature's inverse in both.

Only the plain ViT + causal-text CLIP converts; a config option that changes the network (layer scale,
attentional pooling, a timm or Hugging Face tower, SigLIP's logit bias, CoCa) is refused by name. The
functions over dicts are pure; ``read_open_clip`` / ``write_open_clip`` do the files (tensors only: safetensors
or ``torch.load(weights_only=True)``)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from vlforge.errors import UserError

OPEN_CLIP_CONFIG = "open_clip_config.json"  # {"model_cfg": ..., "preprocess_cfg": ...}, open_clip's hub export
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"

# Options this conversion reads (or that change nothing in the network, e.g. the tokenizer's or dropout's);
# any other option must keep open_clip's default, or the network is not a plain CLIP.
_VISION_READ = {"image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size", "patch_dropout",
                "output_tokens"}
_VISION_DEFAULTS: dict[str, Any] = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False,
                                    "pos_embed_type": "learnable", "final_ln_after_pool": False, "pool_type": "tok",
                                    "timm_model_name": None, "act_kwargs": None, "norm_kwargs": None,
                                    "block_type": None, "qk_norm": False, "scaled_cosine_attn": False,
                                    "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
                                    "scale_fc": False, "image_seq_len": None}
_TEXT_READ = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pad_id", "bos_id", "eos_id",
              "pool_type", "hf_tokenizer_name", "tokenizer_kwargs", "tokenizer_mode", "tokenizer_type", "tiktoken_name",
              "output_tokens", "variable_text"}
_TEXT_DEFAULTS: dict[str, Any] = {"text_arch": "clip", "ls_init_value": None, "embed_cls": False,
                                  "no_causal_mask": False, "final_ln_after_pool": False, "proj_bias": False,
                                  "proj_type": "linear", "act_kwargs": None, "norm_kwargs": None, "block_type": None,
                                  "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                                  "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
                                  "hf_model_name": None, "hf_model_pretrained": True}
_TOP_READ = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "cast_dtype", "init_logit_scale"}
_TOP_DEFAULTS: dict[str, Any] = {"custom_text": False, "init_logit_bias": None, "multimodal_cfg": None,
                                 "nonscalar_logit_scale": False}


def check_model_cfg(cfg: dict[str, Any], where: str) -> None:
    """UserError naming the first option of an open_clip model config that this conversion cannot carry."""
    for part, read, defaults in ((cfg, _TOP_READ, _TOP_DEFAULTS), (cfg.get("vision_cfg") or {}, _VISION_READ, _VISION_DEFAULTS),
                                 (cfg.get("text_cfg") or {}, _TEXT_READ, _TEXT_DEFAULTS)):
        for key, value in part.items():
            if key in read:
                continue
            if key not in defaults:
                raise UserError(f"{where}: unknown open_clip option '{key}'")
            if value != defaults[key] and not (key == "multimodal_cfg" and not value):
                raise UserError(f"{where}: open_clip option '{key}': {value!r} is not a plain CLIP (only {defaults[key]!r} converts)")
    for name in ("vision_cfg", "text_cfg"):
        if not isinstance(cfg.get(name), dict):
            raise UserError(f"{where}: no '{name}' in the open_clip model config")
    if isinstance(cfg["vision_cfg"].get("layers"), (list, tuple)):
        raise UserError(f"{where}: a ResNet image tower (vision_cfg.layers {cfg['vision_cfg']['layers']}); only ViT converts")
    if isinstance(cfg["vision_cfg"].get("image_size", 224), (list, tuple)):
        raise UserError(f"{where}: a non-square image size {cfg['vision_cfg']['image_size']}")
    if cfg["text_cfg"].get("pool_type", "argmax") not in ("argmax", "eos"):
        raise UserError(f"{where}: text pool_type '{cfg['text_cfg']['pool_type']}' (only argmax and eos convert)")


# ----------------------------------------------------------------------------------------------- keys
def _block_pairs(oc: str, hf: str) -> list[tuple[str, tuple[str, ...], str]]:
    pairs: list[tuple[str, tuple[str, ...], str]] = [
        (f"{oc}attn.in_proj_weight", tuple(f"{hf}self_attn.{x}_proj.weight" for x in "qkv"), "split3"),
        (f"{oc}attn.in_proj_bias", tuple(f"{hf}self_attn.{x}_proj.bias" for x in "qkv"), "split3"),
    ]
    for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
        pairs += [(f"{oc}{ours}.{p}", (f"{hf}{theirs}.{p}",), "same") for p in ("weight", "bias")]
    return pairs


def key_pairs(vision_layers: int, text_layers: int) -> list[tuple[str, tuple[str, ...], str]]:
    """Every open_clip key with the Hugging Face key(s) it becomes and how: ``same``, ``T`` (a right-multiplied
    matrix <-> a Linear weight) or ``split3`` (fused q/k/v <-> three projections)."""
    pairs: list[tuple[str, tuple[str, ...], str]] = [
        ("visual.class_embedding", ("vision_model.embeddings.class_embedding",), "same"),
        ("visual.conv1.weight", ("vision_model.embeddings.patch_embedding.weight",), "same"),
        ("visual.positional_embedding", ("vision_model.embeddings.position_embedding.weight",), "same"),
        ("visual.proj", ("visual_projection.weight",), "T"),
        ("token_embedding.weight", ("text_model.embeddings.token_embedding.weight",), "same"),
        ("positional_embedding", ("text_model.embeddings.position_embedding.weight",), "same"),
        ("text_projection", ("text_projection.weight",), "T"),
        ("logit_scale", ("logit_scale",), "same"),
    ]
    for oc, hf in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                   ("ln_final", "text_model.final_layer_norm")):
        pairs += [(f"{oc}.{p}", (f"{hf}.{p}",), "same") for p in ("weight", "bias")]
    for i in range(vision_layers):
        pairs += _block_pairs(f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.")
    for i in range(text_layers):
        pairs += _block_pairs(f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.")
    return pairs


_BUFFERS = ("attn_mask", "position_ids")  # recomputed by both libraries; older checkpoints may carry them


def _check_keys(state: dict[str, torch.Tensor], wanted: set[str], where: str) -> None:
    present = {k for k in state if not k.endswith(_BUFFERS)}
    missing, unexpected = sorted(wanted - present), sorted(present - wanted)
    if missing or unexpected:
        parts = [f"missing {len(missing)} key(s): {', '.join(missing[:4])}" if missing else "",
                 f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:4])}" if unexpected else ""]
        raise UserError(f"{where}: the state dict does not fit the config: {'; '.join(p for p in parts if p)}")


def open_clip_to_hf_state(state: dict[str, torch.Tensor], vision_layers: int, text_layers: int,
                          where: str = "open_clip checkpoint") -> dict[str, torch.Tensor]:
    """An open_clip CLIP state dict (``module.`` prefixes of a data-parallel run removed) as ``CLIPModel``'s."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    pairs = key_pairs(vision_layers, text_layers)
    _check_keys(state, {oc for oc, _, _ in pairs}, where)
    out: dict[str, torch.Tensor] = {}
    for oc, hf, how in pairs:
        value = state[oc]
        if how == "T":
            out[hf[0]] = value.t().contiguous()
        elif how == "split3":
            for name, part in zip(hf, value.chunk(3, dim=0)):
                out[name] = part.contiguous()
        else:
            out[hf[0]] = value.reshape(()) if oc == "logit_scale" else value
    return out


def hf_to_open_clip_state(state: dict[str, torch.Tensor], vision_layers: int, text_layers: int,
                          where: str = "CLIP checkpoint") -> dict[str, torch.Tensor]:
    """A ``CLIPModel`` state dict in open_clip's layout (the inverse of ``open_clip_to_hf_state``)."""
    pairs = key_pairs(vision_layers, text_layers)
    _check_keys(state, {k for _, hf, _ in pairs for k in hf}, where)
    out: dict[str, torch.Tensor] = {}
    for oc, hf, how in pairs:
        if how == "T":
            out[oc] = state[hf[0]].t().contiguous()
        elif how == "split3":
            out[oc] = torch.cat([state[k] for k in hf], dim=0)
        else:
            out[oc] = state[hf[0]]
    return out


# ----------------------------------------------------------------------------------------------- configs
def hf_clip_config(cfg: dict[str, Any], special_ids: dict[str, int]) -> dict[str, Any]:
    """``CLIPConfig`` keyword arguments for an open_clip model config; ``special_ids`` are the tokenizer's (pad,
    bos, eos). Argmax pooling becomes ``eos_token_id=2``, transformers' own argmax case, unless the tokenizer's
    end token is its highest id (then pooling at the first end token is the same position)."""
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    v_width, t_width = int(vision.get("width", 768)), int(text.get("width", 512))
    vocab = int(text.get("vocab_size", 49408))
    if text.get("pool_type", "argmax") == "eos":
        eos = int(text.get("eos_id", 2))
    else:
        eos = special_ids["eos"] if special_ids.get("eos") == vocab - 1 else 2
    embed = int(cfg["embed_dim"])
    text_config = {"vocab_size": vocab, "hidden_size": t_width, "num_hidden_layers": int(text.get("layers", 12)),
                   "num_attention_heads": int(text.get("heads", 8)),
                   "intermediate_size": int(t_width * float(text.get("mlp_ratio", 4.0))),
                   "max_position_embeddings": int(text.get("context_length", 77)), "hidden_act": act,
                   "layer_norm_eps": 1e-5, "projection_dim": embed, "eos_token_id": eos,
                   "pad_token_id": special_ids.get("pad", int(text.get("pad_id", 0))),
                   "bos_token_id": special_ids.get("bos", eos)}
    vision_config = {"hidden_size": v_width, "num_hidden_layers": int(vision.get("layers", 12)),
                     "num_attention_heads": v_width // int(vision.get("head_width", 64)),
                     "intermediate_size": int(v_width * float(vision.get("mlp_ratio", 4.0))),
                     "image_size": int(vision.get("image_size", 224)), "patch_size": int(vision.get("patch_size", 16)),
                     "hidden_act": act, "layer_norm_eps": 1e-5, "projection_dim": embed}
    return {"text_config": text_config, "vision_config": vision_config, "projection_dim": embed}


def open_clip_model_cfg(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """An open_clip model config for a ``CLIPModel`` config (``config.json``)."""
    text, vision = hf["text_config"], hf["vision_config"]
    acts = {text.get("hidden_act", "quick_gelu"), vision.get("hidden_act", "quick_gelu")}
    if len(acts) > 1 or not acts <= {"gelu", "quick_gelu"}:
        raise UserError(f"{where}: activation(s) {sorted(acts)}; open_clip has gelu or quick_gelu for both towers")
    eos = int(text.get("eos_token_id", 2))
    return {
        "embed_dim": int(hf.get("projection_dim", text.get("projection_dim", 512))),
        "quick_gelu": acts == {"quick_gelu"},
        "vision_cfg": {"image_size": vision["image_size"], "layers": vision["num_hidden_layers"],
                       "width": vision["hidden_size"], "head_width": vision["hidden_size"] // vision["num_attention_heads"],
                       "mlp_ratio": vision["intermediate_size"] / vision["hidden_size"], "patch_size": vision["patch_size"]},
        "text_cfg": {"context_length": text["max_position_embeddings"], "vocab_size": text["vocab_size"],
                     "width": text["hidden_size"], "heads": text["num_attention_heads"],
                     "layers": text["num_hidden_layers"], "mlp_ratio": text["intermediate_size"] / text["hidden_size"],
                     "pad_id": int(text.get("pad_token_id") or 0),
                     **({"pool_type": "argmax"} if eos == 2 else {"pool_type": "eos", "eos_id": eos})},
    }


# ----------------------------------------------------------------------------------------------- files
def load_tensors(path: Path) -> dict[str, Any]:
    """The tensors in a safetensors file or a torch checkpoint; UserError for anything holding other objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a corrupt file is the user's input
            raise UserError(f"'{path}' is not a readable safetensors file: {str(exc).splitlines()[0]}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"'{path}' holds objects other than tensors (refused: only safetensors or a weights-only "
                        f"torch checkpoint load): {first}") from None


def checkpoint_state(loaded: Any, where: str) -> dict[str, torch.Tensor]:
    """The state dict of a loaded checkpoint: the dict itself, or open_clip's trainer's ``state_dict`` entry."""
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"'{where}' holds no state dict of tensors")
    return state


def read_open_clip(src: Path, config_file: Path | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """``(model_cfg, preprocess_cfg, state_dict)`` of an open_clip checkpoint: a hub-export folder
    (``open_clip_config.json`` + ``open_clip_model.safetensors``) or a ``.pt``/``.safetensors`` file with its model
    config given (a bare model-config JSON as in open_clip's ``model_configs/``, or a hub ``open_clip_config.json``)."""
    src = Path(src)
    if src.is_dir():
        config_file = config_file or src / OPEN_CLIP_CONFIG
        weights = src / OPEN_CLIP_WEIGHTS
        if not weights.is_file():
            raise UserError(f"'{src}' holds no {OPEN_CLIP_WEIGHTS}")
    else:
        weights = src
        if config_file is None:
            raise UserError(f"'{src}' is an open_clip checkpoint file: name its model config with --openclip-config")
    if not Path(config_file).is_file():
        raise UserError(f"open_clip model config '{config_file}' does not exist")
    try:
        config = json.loads(Path(config_file).read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"open_clip model config '{config_file}' is not JSON: {exc}") from None
    model_cfg = config.get("model_cfg", config)
    check_model_cfg(model_cfg, f"'{config_file}'")
    return model_cfg, config.get("preprocess_cfg", {}), checkpoint_state(load_tensors(weights), str(weights))


def write_open_clip(model_dir: Path, out_dir: Path, preprocess: Any) -> None:
    """Write a ``CLIPModel`` directory's weights as open_clip's hub export into ``out_dir``; ``preprocess`` is the
    model's ``Preprocessing`` (its resize as open_clip's ``resize_mode``: squash, or shortest for shortest-crop)."""
    from safetensors.torch import load_file, save_file

    config = json.loads((Path(model_dir) / "config.json").read_text())
    if config.get("model_type") != "clip":
        raise UserError(f"cannot export as open_clip: '{model_dir}' holds a '{config.get('model_type')}' model, "
                        "not a CLIPModel (a CLIP with a pretrained Hugging Face text tower does not convert)")
    model_cfg = open_clip_model_cfg(config, str(model_dir))
    state = load_file(str(Path(model_dir) / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.endswith(_BUFFERS)}
    converted = hf_to_open_clip_state(state, model_cfg["vision_cfg"]["layers"], model_cfg["text_cfg"]["layers"], str(model_dir))
    save_file({k: v.contiguous() for k, v in converted.items()}, str(Path(out_dir) / OPEN_CLIP_WEIGHTS))
    preprocess_cfg = {"size": preprocess.image_size, "mean": list(preprocess.mean), "std": list(preprocess.std),
                      "interpolation": preprocess.interpolation,
                      "resize_mode": "shortest" if preprocess.resize == "shortest-crop" else "squash"}
    (Path(out_dir) / OPEN_CLIP_CONFIG).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg},
                                                             indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------- tokenizer
SOT, EOT = "<start_of_text>", "<end_of_text>"
# open_clip's SimpleTokenizer: contractions, runs of letters, single digits, runs of other non-space characters
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_OPEN_CLIP_MERGES = 49152 - 256 - 2  # merges its vocabulary keeps (bpe_simple_vocab_16e6: 48,894)


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte, in the order open_clip's vocabulary lists them: the bytes that
    print as themselves first, then the others as chr(256 + n)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in set(kept)]
    return [chr(b) for b in kept] + [chr(256 + n) for n in range(len(others))]


def bpe_vocab_tokenizer(path: Path, context_length: int) -> Any:
    """open_clip's BPE vocabulary file (``bpe_simple_vocab_16e6.txt.gz``: a header line, then one merge a line) as a
    transformers fast tokenizer giving open_clip's ids: every byte and byte + ``</w>``, then each merge, then
    ``<start_of_text>`` and ``<end_of_text>``; texts as ``<start_of_text> ... <end_of_text>``, padded with the end
    token (a causal text tower ignores what follows it). Text is NFC-normalised, whitespace-collapsed and
    lowercased; open_clip also runs ftfy's mojibake repair, which this does not (plain text is unaffected)."""
    import gzip

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    opener = gzip.open if Path(path).suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"'{path}' is not an open_clip BPE vocabulary: {exc}") from None
    merges = [tuple(line.split()) for line in lines[1:_OPEN_CLIP_MERGES + 1] if line.strip()]
    if not merges or any(len(m) != 2 for m in merges):
        raise UserError(f"'{path}' is not an open_clip BPE vocabulary (a header line, then 'a b' merges a line)")
    alphabet = _byte_alphabet()
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m) for m in merges), SOT, EOT]
    vocab = {token: i for i, token in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Strip(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single=f"{SOT} $A {EOT}", special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SOT, eos_token=EOT, pad_token=EOT, unk_token=None,
                                   model_max_length=context_length)
