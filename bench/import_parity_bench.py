"""Import parity: an open_clip checkpoint made by open_clip itself gives the same embeddings, tokens and retrieval
under vlforge after ``vlforge import model`` as under open_clip (issue 18; the aim is a max abs difference < 1e-4).

    .venv/bin/python bench/import_parity_bench.py [--peer-venv .bench-venvs/openclip] [--images 16]

The open_clip side (``peer``) runs in open_clip's own venv and imports nothing from vlforge: it builds a tiny
quick-GELU ViT CLIP with open_clip's ``create_model_and_transforms`` from a registered model config (32 px, 2+2
layers, width 64, open_clip's real 49,408-token BPE vocabulary, 77 tokens), writes it both ways open_clip does
(the hub layout of ``save_config_for_hf`` + ``open_clip_model.safetensors``, and its trainer's ``.pt`` with a
``module.``-prefixed ``state_dict``), and embeds square random images and captions with open_clip's own preprocess
and tokenizer. This side imports both checkpoints (``--tokenizer`` = open_clip's ``bpe_simple_vocab_16e6.txt.gz``),
embeds the same images with vlforge's ``ImageTransform`` and tokenizer and compares. The images are square at the
model's size, so open_clip's shortest-side resize + centre crop and vlforge's whole-image resize give the same
pixels. Last, the hub import is exported again (``--format open_clip``) and open_clip loads that folder
(``create_model_and_transforms("local-dir:...")``) and embeds the same inputs. Results:
bench/results/import-parity.json and a markdown table on stdout. The weights are random (moved off their
initial values), so the retrieval compared is near chance: what it checks is that both sides rank alike."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "vlforge-import-tiny"
MODEL_CFG = {"embed_dim": 32, "quick_gelu": True,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
CAPTIONS = ["a photo of a red circle", "two blue squares on the left", "a green triangle above a star",
            "an orange hexagon, small", "Three YELLOW stars!", "a purple circle next to a grey square",
            "the black triangle", "a white star on a dark background"]


def recall_at_1(img: list[list[float]], txt: list[list[float]]) -> float:
    """Image -> text R@1 with caption i the match of image i (plain Python: both venvs run it)."""
    hits = 0
    for i, a in enumerate(img):
        scores = [sum(x * y for x, y in zip(a, b)) for b in txt]
        hits += max(range(len(scores)), key=scores.__getitem__) == i
    return hits / len(img)


# ----------------------------------------------------------------------------------- open_clip's side (peer venv)
def peer(out: Path, n_images: int) -> None:
    import numpy as np
    import open_clip
    import torch
    from open_clip.push_to_hf_hub import save_config_for_hf
    from PIL import Image
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{MODEL_NAME}.json").write_text(json.dumps(MODEL_CFG))
    open_clip.add_model_config(out / f"{MODEL_NAME}.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME)
    with torch.no_grad():  # move the weights off their init values (LayerNorms at exactly 1, zero biases)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    hub = out / "hub"
    hub.mkdir()
    save_file(model.state_dict(), str(hub / "open_clip_model.safetensors"))
    save_config_for_hf(model, hub / "open_clip_config.json", model_config=MODEL_CFG)
    torch.save({"epoch": 1, "name": MODEL_NAME, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               out / "epoch_1.pt")
    rng = np.random.RandomState(0)
    for i in range(n_images):
        Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(out / f"image-{i}.png")
    texts = [CAPTIONS[i % len(CAPTIONS)] + ("" if i < len(CAPTIONS) else f" number {i}") for i in range(n_images)]
    vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    result = {**_peer_embed(model, preprocess, tokenizer, out, texts), "texts": texts, "vocab": str(vocab),
              "open_clip": open_clip.__version__, "torch": torch.__version__}
    (out / "peer.json").write_text(json.dumps(result))


def _peer_embed(model, preprocess, tokenizer, folder: Path, texts: list[str]) -> dict:
    import torch
    from PIL import Image

    tokens = tokenizer(texts)
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(folder / f"image-{i}.png").convert("RGB")) for i in range(len(texts))])
        img = model.encode_image(pixels, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
    return {"tokens": tokens.tolist(), "pixels": pixels.tolist(), "image": img.tolist(), "text": txt.tolist(),
            "i2t_r1": recall_at_1(img.tolist(), txt.tolist())}


def peer_reload(out: Path, exported: Path) -> None:
    """open_clip loads vlforge's ``--format open_clip`` export of the import and embeds the same inputs."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{exported}")
    model.eval()
    texts = json.loads((out / "peer.json").read_text())["texts"]
    tokenizer = open_clip.get_tokenizer(f"local-dir:{exported}")
    (out / "reloaded.json").write_text(json.dumps(_peer_embed(model, preprocess, tokenizer, out, texts)))


# ----------------------------------------------------------------------------------- vlforge's side
def ours(peer_dir: Path, peer_result: dict) -> dict:
    import torch

    from vlforge.catalog import Catalog
    from vlforge.catalog.export import export
    from vlforge.components.data.loader import ImageTransform, decode_image
    from vlforge.components.models.registry import get_family
    from vlforge.components.stages.imports import run_import
    from vlforge.components.tokenizer import load_tokenizer

    catalog = Catalog(Path(os.environ["VLFORGE_HOME"]) / "catalog")
    family = get_family("clip")
    vocab = Path(peer_result["vocab"])
    cfg = peer_dir / f"{MODEL_NAME}.json"
    rows = {}
    for label, src, extra in (("hub folder", peer_dir / "hub", {}), ("trainer .pt", peer_dir / "epoch_1.pt",
                                                                       {"openclip_config": cfg})):
        art = run_import(src, "clip", catalog, tokenizer=vocab, **extra).model.artifact
        folder = catalog.path(art.id)
        model = family.load(folder).eval()
        transform = ImageTransform(32, family.image_mean, family.image_std)
        images = [decode_image((peer_dir / f"image-{i}.png").read_bytes()) for i in range(len(peer_result["texts"]))]
        pixels = torch.stack([transform(im) for im in images])
        enc = load_tokenizer(folder)(peer_result["texts"], padding="max_length", truncation=True, max_length=77,
                                     return_tensors="pt")
        with torch.no_grad():
            img = family.encode_images(model, pixels)
            txt = family.encode_texts(model, enc["input_ids"], enc["attention_mask"])
        theirs_tokens = torch.tensor(peer_result["tokens"])
        real = enc["attention_mask"].bool()  # open_clip pads with id 0, vlforge's import with the end token
        rows[label] = {
            "tokens_equal": bool(torch.equal(enc["input_ids"][real], theirs_tokens[real])
                                 and torch.equal(real.sum(1), (theirs_tokens != 0).sum(1))),
            "pixels_max_abs_diff": float((pixels - torch.tensor(peer_result["pixels"])).abs().max()),
            "image_embedding_max_abs_diff": float((img - torch.tensor(peer_result["image"])).abs().max()),
            "text_embedding_max_abs_diff": float((txt - torch.tensor(peer_result["text"])).abs().max()),
            "i2t_r1_vlforge": recall_at_1(img.tolist(), txt.tolist()), "i2t_r1_open_clip": peer_result["i2t_r1"],
        }
        if label == "hub folder":
            export(catalog, art.id, peer_dir / "exported", "open_clip")
    return rows


def _max_diff(a: list, b: list) -> float:
    import torch

    return float((torch.tensor(a) - torch.tensor(b)).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", nargs="?", default="ours", choices=["ours", "peer", "peer-reload"])
    parser.add_argument("--peer-venv", type=Path, default=REPO / ".bench-venvs" / "openclip")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--out", type=Path, help="peer: the folder to write")
    args = parser.parse_args()
    if args.side == "peer":
        peer(args.out, args.images)
        return
    if args.side == "peer-reload":
        peer_reload(args.out, args.out / "exported")
        return
    python = args.peer_venv / "bin" / "python"
    if not python.exists():
        sys.exit(f"error: open_clip's venv is missing at {args.peer_venv} (bench/openclip_bench.py --setup-peer makes it)")
    with tempfile.TemporaryDirectory() as tmp:
        peer_dir = Path(tmp) / "peer"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

        def run_peer(side: str) -> None:
            proc = subprocess.run([str(python), __file__, side, "--out", str(peer_dir), "--images", str(args.images)],
                                  capture_output=True, text=True, env=env, cwd=tmp)
            if proc.returncode != 0:
                sys.exit(f"error: the open_clip side failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")

        run_peer("peer")
        peer_result = json.loads((peer_dir / "peer.json").read_text())
        os.environ["VLFORGE_HOME"] = str(Path(tmp) / "home")
        rows = ours(peer_dir, peer_result)
        run_peer("peer-reload")  # open_clip loads vlforge's open_clip export of the hub import
        back = json.loads((peer_dir / "reloaded.json").read_text())
        rows["open_clip export, loaded by open_clip"] = {
            "tokens_equal": back["tokens"] == peer_result["tokens"],
            "pixels_max_abs_diff": _max_diff(back["pixels"], peer_result["pixels"]),
            "image_embedding_max_abs_diff": _max_diff(back["image"], peer_result["image"]),
            "text_embedding_max_abs_diff": _max_diff(back["text"], peer_result["text"]),
            "i2t_r1_vlforge": rows["hub folder"]["i2t_r1_vlforge"], "i2t_r1_open_clip": back["i2t_r1"]}
    result = {"open_clip": peer_result["open_clip"], "peer_torch": peer_result["torch"], "images": args.images,
              "model_cfg": MODEL_CFG, "rows": rows}
    out = REPO / "bench" / "results" / "import-parity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    keys = list(next(iter(rows.values())))
    print("| source | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{v:.2e}" if isinstance(v, float) and "diff" in k else str(v)
                                           for k, v in row.items()) + " |")


if __name__ == "__main__":
    main()
