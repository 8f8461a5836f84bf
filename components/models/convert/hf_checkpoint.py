"""Hugging Face ``save_pretrained`` checkpoints that a family's model *is*: which architecture each family takes,
and the family recipe that describes such a checkpoint's shape.

The families named here build their model as a plain ``transformers`` class (``clip``: ``CLIPModel``;
``text-mlm``: ``BertForMaskedLM``; ``text-lm``: ``GPT2LMHeadModel``; ``text-bart``: ``BartForConditionalGeneration``;
``text-t5``: ``T5ForConditionalGeneration``),
or around one (``image-teacher``: ``ViTModel`` + a head), so a checkpoint of that class, written by anyone, is a
model of the family once a ``vlforge_family.json`` says so.
The recipe read from its config is what evaluation rebuilds for the untrained baseline and what a run continuing
from it starts with. A head the source lacks (BERT's masked-LM head on a bare ``BertModel`` such as
all-MiniLM-L6-v2) may be initialised fresh, and a head the family's model has not (``BertModel``'s pooler) left out,
where the family lists it; every other missing or unexpected key is an error that names it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlforge.errors import UserError


def _ratio(width: int, inner: int, where: str) -> int:
    if inner % width:
        raise UserError(f"{where}: MLP width {inner} is not a whole multiple of the width {width}")
    return inner // width


def _clip_recipe(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    text, vision = cfg["text_config"], cfg["vision_config"]
    ratio = _ratio(vision["hidden_size"], vision["intermediate_size"], where)
    if _ratio(text["hidden_size"], text["intermediate_size"], where) != ratio:
        raise UserError(f"{where}: the text and image towers have different MLP ratios; the clip recipe has one")
    return {"embed_dim": cfg.get("projection_dim", 512), "vision_width": vision["hidden_size"],
            "vision_layers": vision["num_hidden_layers"], "vision_heads": vision["num_attention_heads"],
            "text_width": text["hidden_size"], "text_layers": text["num_hidden_layers"],
            "text_heads": text["num_attention_heads"], "mlp_ratio": ratio, "image_size": vision["image_size"],
            "patch_size": vision["patch_size"], "max_text_length": text["max_position_embeddings"],
            "vocab_size": text["vocab_size"]}


def _bert_recipe(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    return {"hidden_size": cfg["hidden_size"], "num_layers": cfg["num_hidden_layers"],
            "num_heads": cfg["num_attention_heads"], "mlp_ratio": _ratio(cfg["hidden_size"], cfg["intermediate_size"], where),
            "max_position_embeddings": cfg["max_position_embeddings"], "vocab_size": cfg["vocab_size"],
            "dropout": cfg.get("hidden_dropout_prob", 0.1)}


def _gpt2_recipe(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    if cfg.get("n_inner") not in (None, 4 * cfg["n_embd"]):
        raise UserError(f"{where}: GPT-2 MLP width {cfg['n_inner']} is not 4 x {cfg['n_embd']} (the text-lm recipe's)")
    return {"hidden_size": cfg["n_embd"], "num_layers": cfg["n_layer"], "num_heads": cfg["n_head"],
            "n_positions": cfg["n_positions"], "vocab_size": cfg["vocab_size"], "dropout": cfg.get("resid_pdrop", 0.1)}


def _bart_recipe(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    if cfg["encoder_attention_heads"] != cfg["decoder_attention_heads"] or cfg["encoder_ffn_dim"] != cfg["decoder_ffn_dim"]:
        raise UserError(f"{where}: BART encoder and decoder differ in heads or MLP width; the text-bart recipe has one of each")
    return {"d_model": cfg["d_model"], "encoder_layers": cfg["encoder_layers"], "decoder_layers": cfg["decoder_layers"],
            "attention_heads": cfg["encoder_attention_heads"], "ffn_dim": cfg["encoder_ffn_dim"],
            "max_positions": cfg["max_position_embeddings"], "vocab_size": cfg["vocab_size"],
            "dropout": cfg.get("dropout", 0.1), "attention_dropout": cfg.get("attention_dropout", 0.0)}


def _t5_recipe(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    return {"d_model": cfg["d_model"], "d_kv": cfg["d_kv"], "d_ff": cfg["d_ff"], "num_layers": cfg["num_layers"],
            "num_decoder_layers": cfg.get("num_decoder_layers") or cfg["num_layers"], "num_heads": cfg["num_heads"],
            "relative_attention_num_buckets": cfg.get("relative_attention_num_buckets", 32),
            "feed_forward_proj": cfg.get("feed_forward_proj", "relu"),
            # T5 v1.1: transformers 5 writes scale_decoder_outputs false (its tie_word_embeddings is always true),
            # configs from transformers 4 say tie_word_embeddings false
            "tie_word_embeddings": cfg.get("scale_decoder_outputs", cfg.get("tie_word_embeddings", True)),
            "vocab_size": cfg["vocab_size"],
            "dropout": cfg.get("dropout_rate", 0.1)}


def _vit_recipe(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    return {"hidden_size": cfg["hidden_size"], "num_layers": cfg["num_hidden_layers"],
            "num_heads": cfg["num_attention_heads"], "mlp_ratio": _ratio(cfg["hidden_size"], cfg["intermediate_size"], where),
            "image_size": cfg["image_size"], "patch_size": cfg["patch_size"], "dropout": cfg.get("hidden_dropout_prob", 0.0)}


Loader = Callable[[Path], tuple[Any, dict[str, Any]]]  # folder -> (model, transformers' loading info)


def _from_pretrained(name: str) -> Loader:
    def load(src: Path) -> tuple[Any, dict[str, Any]]:
        import transformers

        return getattr(transformers, name).from_pretrained(src, local_files_only=True, output_loading_info=True)

    return load


def _load_vit_teacher(src: Path) -> tuple[Any, dict[str, Any]]:
    """A ViT (``ViTModel``, or ``ViTForImageClassification`` whose classifier is left out) as the image-teacher's
    model with the masked-image-modelling objective (its head and mask token start fresh): the config gets the
    fields the family keeps (``vit_config``)."""
    from transformers import ViTConfig

    from vlforge.components.models.image_teacher.family import LABEL_RULE, ImageTeacherModel

    config = ViTConfig.from_pretrained(src, local_files_only=True)
    if getattr(config, "vlforge_objective", None) is None:
        config.vlforge_objective, config.vlforge_num_classes = "mim", 64
        config.vlforge_class_names, config.vlforge_label_rule = None, LABEL_RULE
        config.encoder_stride = config.patch_size
    return ImageTeacherModel.from_pretrained(src, config=config, local_files_only=True, output_loading_info=True)


@dataclass(frozen=True)
class HFArchitecture:
    """What a family takes as a Hugging Face checkpoint."""

    model_type: str  # config.json's model_type
    load: Loader  # reads the folder as the family's model class
    recipe_fields: Callable[[dict[str, Any], str], dict[str, Any]]
    fresh_heads: tuple[str, ...] = ()  # key prefixes the source may lack (initialised with seed 0)
    dropped_heads: tuple[str, ...] = ()  # key prefixes the source may have that the family's model has not
    images: bool = False  # the family sees images (its preprocessing is the source's)


HF_ARCHITECTURES: dict[str, HFArchitecture] = {
    "clip": HFArchitecture("clip", _from_pretrained("CLIPModel"), _clip_recipe, images=True),
    "text-mlm": HFArchitecture("bert", _from_pretrained("BertForMaskedLM"), _bert_recipe, fresh_heads=("cls.",),
                               dropped_heads=("pooler.",)),
    "text-lm": HFArchitecture("gpt2", _from_pretrained("GPT2LMHeadModel"), _gpt2_recipe),
    "text-bart": HFArchitecture("bart", _from_pretrained("BartForConditionalGeneration"), _bart_recipe),
    "text-t5": HFArchitecture("t5", _from_pretrained("T5ForConditionalGeneration"), _t5_recipe),
    "image-teacher": HFArchitecture("vit", _load_vit_teacher, _vit_recipe, images=True,
                                    fresh_heads=("mim_head.", "vit.embeddings.mask_token"),
                                    dropped_heads=("pooler.", "vit.pooler.", "classifier.")),
}


def hf_architecture(family: str) -> HFArchitecture:
    if family not in HF_ARCHITECTURES:
        raise UserError(f"family '{family}' does not import Hugging Face checkpoints (families that do: "
                        f"{', '.join(HF_ARCHITECTURES)})")
    return HF_ARCHITECTURES[family]


def check_loading_info(info: dict[str, Any], arch: HFArchitecture, where: str) -> tuple[list[str], list[str]]:
    """``(keys initialised fresh, keys left out)`` (the heads ``arch`` allows); UserError naming missing,
    unexpected or mis-shaped keys."""
    def split(keys: list[str], allowed: tuple[str, ...]) -> tuple[list[str], list[str]]:
        ok = [k for k in keys if allowed and k.startswith(allowed)]
        return ok, [k for k in keys if k not in ok]

    fresh, missing = split(sorted(info.get("missing_keys") or []), arch.fresh_heads)
    dropped, unexpected = split(sorted(info.get("unexpected_keys") or []), arch.dropped_heads)
    mismatched = sorted(str(m[0]) if isinstance(m, (list, tuple)) else str(m) for m in info.get("mismatched_keys") or [])
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
        if keys:
            raise UserError(f"{where}: {len(keys)} {what} key(s) for a {arch.model_type} checkpoint: {', '.join(keys[:4])}")
    return fresh, dropped
