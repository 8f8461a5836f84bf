"""Writes this folder's tiny open_clip checkpoint with open_clip itself, and what open_clip computes from it.

    .bench-venvs/openclip/bin/python tests/data/open_clip_tiny/make.py

Runs in open_clip's own venv (open_clip_torch 3.3.0, torch 2.14.1; see bench/openclip_bench.py --setup-peer).
The model: a quick-GELU ViT CLIP (32 px, patch 8, 2 + 2 layers, width 32, a 64-token vocabulary, 16 tokens)
built by ``open_clip.create_model`` from a registered config, its weights moved off their initial values, written
as open_clip's hub export (``open_clip_config.json`` by ``save_config_for_hf`` + ``open_clip_model.safetensors``).
``expected.safetensors`` holds two images' pixels, four token sequences (start 3, end 4: the test tokenizer's ids)
and open_clip's normalised ``encode_image`` / ``encode_text`` of them."""
import json
from pathlib import Path

import open_clip
import torch
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
NAME = "vlforge-test-tiny"
CFG = {"embed_dim": 16, "quick_gelu": True,
       "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
       "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2}}

config_file = HERE / "build" / f"{NAME}.json"
config_file.parent.mkdir(exist_ok=True)
config_file.write_text(json.dumps(CFG))
open_clip.add_model_config(config_file)
torch.manual_seed(0)
model = open_clip.create_model(NAME).eval()
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
save_file(model.state_dict(), str(HERE / "open_clip_model.safetensors"))
save_config_for_hf(model, HERE / "open_clip_config.json", model_config=CFG)
pixels = torch.randn(2, 3, 32, 32)
ids = torch.zeros(4, 16, dtype=torch.long)
for row, length in enumerate((5, 9, 14, 16)):
    ids[row, :length] = torch.randint(5, 64, (length,))
    ids[row, 0], ids[row, length - 1] = 3, 4
with torch.no_grad():
    expected = {"pixels": pixels, "input_ids": ids, "image_embeds": model.encode_image(pixels, normalize=True),
                "text_embeds": model.encode_text(ids, normalize=True)}
save_file(expected, str(HERE / "expected.safetensors"))
for f in config_file.parent.iterdir():
    f.unlink()
config_file.parent.rmdir()
