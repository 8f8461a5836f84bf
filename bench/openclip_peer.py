"""The open_clip side of bench/openclip_bench.py and bench/gpu_bench.py. Runs inside open_clip's own virtual
environment (``.bench-venvs/openclip``: torch 2.14.1, torchvision 0.29.1, open_clip_torch 3.3.0, webdataset 0.2.86),
never the project's; it imports nothing from vlforge.

    <venv>/bin/python bench/openclip_peer.py info  [--model-config FILE] --model NAME --out FILE
    <venv>/bin/python bench/openclip_peer.py train [--model-config FILE] --model NAME --threads N --out FILE \\
        -- <open_clip_train.main arguments>
    <venv>/bin/python bench/openclip_peer.py embed [--model-config FILE] --model NAME --checkpoint PT \
        --sets FILE --out DIR

``info`` writes the model's parameter count and the tool versions. ``train`` registers the model config
(``open_clip.add_model_config``), sets the torch thread count, builds the model once to count its parameters, then
runs open_clip's own trainer (``open_clip_train.main.main``) unchanged. A logging handler stamps every
``Train Epoch`` record the trainer writes (``record.created``, microseconds) with the sample count it reports, so
the benchmark measures open_clip's logging windows the way the project's loop measures its own: samples trained
between two log records over the wall time between them (open_clip's own "/s" figure is the last batch alone, and
its "Batch (t)" average has millisecond resolution). ``--out`` receives one JSON object.

``embed`` loads a checkpoint the trainer saved and writes, for every set of ``--sets`` (JSON: name -> {"images":
[paths], "texts": [captions]}), ``<out>/<name>_images.npy`` and ``<out>/<name>_texts.npy``: open_clip's
``encode_image`` under its own eval transform and ``encode_text`` under its own tokenizer, L2-normalised, float32
(the quality comparison scores them in the project, with the code that scores vlforge's)."""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

TRAIN_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+)")


class WindowRecorder(logging.Handler):
    """Keeps (time, epoch, samples so far) for every training log record open_clip writes."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.marks: list[tuple[float, int, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = TRAIN_LINE.search(record.getMessage()) if record.levelno >= logging.INFO else None
        if m:
            self.marks.append((record.created, int(m.group(1)), int(m.group(2))))


def windows(marks: list[tuple[float, int, int]]) -> list[dict]:
    """Consecutive log records of one epoch -> windows of samples trained between them."""
    out = []
    for (t0, e0, n0), (t1, e1, n1) in zip(marks, marks[1:]):
        if e1 == e0 and n1 > n0 and t1 > t0:
            out.append({"samples": n1 - n0, "seconds": t1 - t0, "samples_per_s": (n1 - n0) / (t1 - t0)})
    return out


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("torch", "torchvision", "open_clip_torch", "webdataset"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = None
    return found


def count_params(model_name: str, precision: str = "fp32") -> int:
    import open_clip

    model = open_clip.create_model(model_name, pretrained=None, precision=precision, device="cpu")
    return sum(p.numel() for p in model.parameters())


def embed(model_name: str, checkpoint: Path, sets_file: Path, out_dir: Path, batch: int = 128) -> dict:
    """Each set's image and text embeddings from the trained ``checkpoint`` (the trainer's ``state_dict``)."""
    import numpy as np
    import open_clip
    import torch
    import torch.nn.functional as F
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None, device="cpu")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    with torch.no_grad():
        for name, s in json.loads(sets_file.read_text()).items():
            imgs, txts = [], []
            for i in range(0, len(s["images"]), batch):
                pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in s["images"][i:i + batch]])
                imgs.append(F.normalize(model.encode_image(pixels), dim=-1))
            for i in range(0, len(s["texts"]), batch):
                txts.append(F.normalize(model.encode_text(tokenizer(s["texts"][i:i + batch])), dim=-1))
            np.save(out_dir / f"{name}_images.npy", torch.cat(imgs).float().numpy())
            np.save(out_dir / f"{name}_texts.npy", torch.cat(txts).float().numpy())
            counts[name] = {"images": len(s["images"]), "texts": len(s["texts"])}
    return counts


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["info", "train", "embed"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-config", default=None, help="an open_clip model config JSON to register")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the training process")
    parser.add_argument("--out", required=True, help="a JSON file (info, train) or a folder (embed)")
    parser.add_argument("--checkpoint", default=None, help="embed: the trainer's epoch_N.pt")
    parser.add_argument("--sets", default=None, help="embed: JSON of name -> {images, texts}")
    args, rest = parser.parse_known_args()
    if rest[:1] == ["--"]:
        rest = rest[1:]
    out = Path(args.out)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import open_clip

    if args.model_config:
        open_clip.add_model_config(args.model_config)
    if args.mode == "embed":
        if not (args.checkpoint and args.sets):
            parser.error("embed needs --checkpoint and --sets")
        print(json.dumps(embed(args.model, Path(args.checkpoint), Path(args.sets), out)))
        return 0
    info = {"versions": versions(), "has_trainer": importlib.util.find_spec("open_clip_train.main") is not None,
            "params": count_params(args.model)}
    if args.mode == "info" or not info["has_trainer"]:
        write_json(out, info)
        return 0 if info["has_trainer"] or args.mode == "info" else 3
    from open_clip_train.main import main as train_main

    recorder = WindowRecorder()
    logging.getLogger().addHandler(recorder)
    start = time.time()
    rc = train_main(rest)
    info.update({"return": rc, "wall_s": time.time() - start, "marks": recorder.marks, "windows": windows(recorder.marks),
                 "threads": args.threads, "argv": rest})
    write_json(out, info)
    return 0 if rc in (None, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
