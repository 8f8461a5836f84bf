"""Tiny checkpoints written the way other libraries write them, for the import and export tests: a transformers
``CLIPModel`` saved with ``save_pretrained`` (with its tokenizer and ``preprocessor_config.json``), an open_clip
CLIP state dict in open_clip's key layout (``src/open_clip/model.py``, ``transformer.py``), and open_clip's forward
pass written out with torch primitives, so a conversion is checked against the network, not against itself."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

CAPTIONS = ["a red circle", "a blue square on the left", "two green triangles", "a small yellow star"]
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

# a tiny ViT + causal text CLIP as an open_clip model config (model_configs/*.json layout)
OPEN_CLIP_CFG = {"embed_dim": 16, "quick_gelu": True,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
                 "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2}}


def tiny_tokenizer(folder: Path, max_length: int = 16) -> Path:
    from vlforge.components.tokenizer import TokenizerConfig, train_tokenizer

    return train_tokenizer(CAPTIONS, folder, TokenizerConfig(vocab_size=64, max_length=max_length))


def tiny_hf_clip(folder: Path, tokenizer_dir: Path, image_size: int = 32, mean: list[float] = OPENAI_MEAN) -> Path:
    """A ``CLIPModel`` as someone else's ``save_pretrained`` writes it, with its tokenizer and image processor."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
    config = CLIPConfig(text_config={**sizes, "vocab_size": 64, "max_position_embeddings": 16,
                                     "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                                     "eos_token_id": tok.eos_token_id},
                        vision_config={**sizes, "image_size": image_size, "patch_size": 8}, projection_dim=16)
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                       image_mean=mean, image_std=OPENAI_STD).save_pretrained(folder)
    return folder


def _block_shapes(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}ln_1.weight": (width,), f"{prefix}ln_1.bias": (width,),
            f"{prefix}attn.in_proj_weight": (3 * width, width), f"{prefix}attn.in_proj_bias": (3 * width,),
            f"{prefix}attn.out_proj.weight": (width, width), f"{prefix}attn.out_proj.bias": (width,),
            f"{prefix}ln_2.weight": (width,), f"{prefix}ln_2.bias": (width,),
            f"{prefix}mlp.c_fc.weight": (4 * width, width), f"{prefix}mlp.c_fc.bias": (4 * width,),
            f"{prefix}mlp.c_proj.weight": (width, 4 * width), f"{prefix}mlp.c_proj.bias": (width,)}


def open_clip_state(cfg: dict = OPEN_CLIP_CFG, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under open_clip's CLIP key names and shapes (LayerNorm weights near 1)."""
    v, t, e = cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"]
    grid = v["image_size"] // v["patch_size"]
    shapes = {"visual.class_embedding": (v["width"],), "visual.conv1.weight": (v["width"], 3, v["patch_size"], v["patch_size"]),
              "visual.positional_embedding": (grid * grid + 1, v["width"]), "visual.ln_pre.weight": (v["width"],),
              "visual.ln_pre.bias": (v["width"],), "visual.ln_post.weight": (v["width"],),
              "visual.ln_post.bias": (v["width"],), "visual.proj": (v["width"], e),
              "token_embedding.weight": (t["vocab_size"], t["width"]),
              "positional_embedding": (t["context_length"], t["width"]), "ln_final.weight": (t["width"],),
              "ln_final.bias": (t["width"],), "text_projection": (t["width"], e), "logit_scale": ()}
    for i in range(v["layers"]):
        shapes.update(_block_shapes(f"visual.transformer.resblocks.{i}.", v["width"]))
    for i in range(t["layers"]):
        shapes.update(_block_shapes(f"transformer.resblocks.{i}.", t["width"]))
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        value = torch.randn(shape, generator=gen) * 0.2
        state[key] = value + 1 if key.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")) else value
    state["logit_scale"] = torch.tensor(2.6592)
    return state


def write_open_clip_hub(folder: Path, state: dict[str, torch.Tensor], cfg: dict = OPEN_CLIP_CFG,
                        preprocess: dict | None = None) -> Path:
    """open_clip's hub export layout: ``open_clip_config.json`` + ``open_clip_model.safetensors``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "open_clip_model.safetensors"))
    pre = preprocess or {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}))
    return folder


# ------------------------------------------------------------------- open_clip's forward, in torch primitives
def _act(x: torch.Tensor, quick: bool) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x) if quick else F.gelu(x)


def _blocks(x: torch.Tensor, sd: dict, prefix: str, layers: int, heads: int, quick: bool,
            mask: torch.Tensor | None) -> torch.Tensor:
    width = x.shape[-1]
    for i in range(layers):
        p = f"{prefix}{i}."
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], 1e-5).transpose(0, 1)
        attn, _ = F.multi_head_attention_forward(h, h, h, width, heads, sd[p + "attn.in_proj_weight"],
                                                 sd[p + "attn.in_proj_bias"], None, None, False, 0.0,
                                                 sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"],
                                                 training=False, need_weights=False, attn_mask=mask)
        x = x + attn.transpose(0, 1)
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], 1e-5)
        h = F.linear(_act(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]), quick),
                     sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        x = x + h
    return x


@torch.no_grad()
def open_clip_image_features(sd: dict, pixels: torch.Tensor, cfg: dict = OPEN_CLIP_CFG) -> torch.Tensor:
    v = cfg["vision_cfg"]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=v["patch_size"]).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, (v["width"],), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"], 1e-5)
    x = _blocks(x, sd, "visual.transformer.resblocks.", v["layers"], v["width"] // v["head_width"], cfg["quick_gelu"], None)
    x = F.layer_norm(x[:, 0], (v["width"],), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"], 1e-5)
    return x @ sd["visual.proj"]


@torch.no_grad()
def open_clip_text_features(sd: dict, ids: torch.Tensor, cfg: dict = OPEN_CLIP_CFG) -> torch.Tensor:
    t = cfg["text_cfg"]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    n = ids.shape[1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    x = _blocks(x, sd, "transformer.resblocks.", t["layers"], t["heads"], cfg["quick_gelu"], causal)
    x = F.layer_norm(x, (t["width"],), sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)
    # pool_type argmax: the highest id (open_clip's end token); eos: the first eos_id
    at = (ids == t["eos_id"]).int().argmax(dim=-1) if t.get("pool_type") == "eos" else ids.argmax(dim=-1)
    return x[torch.arange(x.shape[0]), at] @ sd["text_projection"]
