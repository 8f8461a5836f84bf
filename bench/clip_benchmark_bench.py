"""Retrieval and zero-shot classification: vlforge's numbers against CLIP_benchmark's and plain transformers' for
the same CLIP on the same images, captions, class names and templates, in one run (issue 19; aim: within 0.1 pt).

    .venv/bin/python bench/clip_benchmark_bench.py [--images 400] [--per-class 40] [--steps 300]
    .venv/bin/python bench/clip_benchmark_bench.py --setup-only   # just create the reference venv

The reference runs in its own venv, ``.bench-venvs/clipbench`` (created here on first use: ``python -m venv`` +
``pip install`` of the pins below; clip_benchmark pulls torchvision, open_clip, pycocoevalcap, webdataset,
scikit-learn and transformers, so never the project's venv), and imports nothing from vlforge.

This side trains a small CLIP with vlforge on the shared emoji set (``../shared/data/emoji-noto``, ingested as a
local-paths table; Ray Train, one worker), writes two benchmark fixtures from the same emoji and ingests them as
benchmark sources: a Karpathy file (``karpathy:``; images under ``val2014/``, up to three distinct captions each:
the emoji's name, its keywords, "a <category> emoji: <name>") and class folders (``imagefolder:``,
``test/<category>/``, the nine emoji categories as classes, with ``--templates``). vlforge scores them with its eval
stage (tasks ``retrieval`` and ``zero_shot_classification``, split ``test``) and exports the model twice,
``--format open_clip`` and ``--format hf``. Ingest keeps the emoji's own pixels (64 px PNG, ``resize_mode=no``), so
all sides decode the same pixels.

The reference side, in its venv: CLIP_benchmark's ``build_dataset("mscoco_captions", ...)`` over the same images
and a COCO caption file with the same captions (torchvision's ``CocoCaptions``), ``ImageFolder`` over the class
folders (what its builder uses for folder datasets) with the same class names and templates (``{c}`` form), the
model from the open_clip export (``create_model_and_transforms("local-dir:...")`` and ``get_tokenizer``, as
CLIP_benchmark's ``load_open_clip`` does), then ``clip_benchmark.metrics.zeroshot_retrieval.evaluate`` (R@1/5/10)
and ``zeroshot_classification.evaluate``. The transformers side, in the same venv: ``CLIPModel``,
``AutoImageProcessor`` and ``AutoTokenizer`` from the hf export (``padding="max_length", truncation=True``) wrapped
as a model with ``encode_image``/``encode_text`` and scored by the same two CLIP_benchmark functions. Both run in
float32 (``amp=False``: CLIP_benchmark's default autocast is bfloat16 on a CPU, which changes the embeddings).

One protocol difference stays, and is measured apart: open_clip's ``HFTokenizer`` cleans every text before
tokenizing (``ftfy.fix_text``, ``html.unescape``, whitespace), which turns the CLDR names' curly quotes (``men’s
room``, ``“service charge”``) straight; vlforge's tokenizer, trained on the raw captions, tokenizes what it is
given. So CLIP_benchmark is run twice on the open_clip export: as open_clip loads it, and with that cleaning
switched off (``clean_fn`` the identity). The aim is held by the second and by transformers; the first is
reported with the captions the cleaning changed.

Results: bench/results/clip-benchmark.json and a markdown table (vlforge, CLIP_benchmark, transformers, max
difference in points) on stdout."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_venv  # noqa: E402 - the shared set-up of the reference venvs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO / ".bench-venvs" / "clipbench"
EMOJI = REPO.parent / "shared" / "data" / "emoji-noto"
# requests: clip_benchmark's dataset builder imports it without declaring it; numpy < 2.4: its ``accuracy`` calls
# float() on a one-element array, which numpy 2.4 refuses (TypeError)
PEER_PINS = ["torch==2.14.1", "torchvision==0.29.1", "open_clip_torch==3.3.0", "clip_benchmark==1.6.2", "requests",
             "numpy==2.3.5"]
TEMPLATES = ["a {}.", "a photo of a {}.", "an emoji of the {} group.", "{}"]  # vlforge's form; CLIP_benchmark's: {c}
RETRIEVAL = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
ZERO_SHOT = ["acc1", "acc5", "mean_per_class_recall"]
METRICS = RETRIEVAL + ZERO_SHOT
SIDES = ("clip_benchmark", "clip_benchmark_uncleaned", "transformers")
# the sides held to the aim: open_clip's own text cleaning is a protocol difference (see ``peer``)
CHECKED = ("clip_benchmark_uncleaned", "transformers")
# CLIP_benchmark's names: "text_retrieval" is image->text (texts retrieved for an image)
REFERENCE_NAMES = {f"i2t_r{k}": f"text_retrieval_recall@{k}" for k in (1, 5, 10)} | {
    f"t2i_r{k}": f"image_retrieval_recall@{k}" for k in (1, 5, 10)}
TOLERANCE_POINTS = 0.1
# a small CLIP that learns the emoji in minutes on two CPU cores (32 px: every side resizes the 64 px emoji)
TRAIN_SIZES = {"image_size": 32, "patch_size": 8, "max_text_length": 24, "embed_dim": 64, "vision_width": 64,
               "vision_layers": 2, "vision_heads": 2, "text_width": 64, "text_layers": 2, "text_heads": 2,
               "batch_size": 64, "lr": 2e-3, "warmup_steps": 20, "num_workers": 1, "log_every": 50,
               "checkpoint_every": 1000}
# ingest keeps the emoji's own pixels: no resize, lossless PNG (quality is PNG's compression level there, 0-9)
CRAWL = {"image_size": 64, "resize_mode": "no", "encode_format": "png", "encode_quality": 3, "processes": 1}


# ------------------------------------------------------------------------------------------- fixtures (this side)
def emoji_rows(emoji_dir: Path = EMOJI) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(emoji_dir / "pairs.parquet").to_pylist()


def class_folder(category: str) -> str:
    """The emoji category as a folder name (``imagefolder:`` turns ``_`` back into spaces)."""
    return category.replace(" & ", "_and_").replace(" ", "_")


def write_fixtures(out: Path, n_images: int, per_class: int, emoji_dir: Path = EMOJI) -> dict:
    """The retrieval fixture (a Karpathy file and the same captions as a COCO caption file, images in
    ``val2014/``) and the classification fixture (``classes/test/<category>/``), from every k-th emoji so all
    categories appear. Captions are made distinct over the whole fixture: equal captions tie, and ties are broken
    by position, which the sides need not share."""
    rows = emoji_rows(emoji_dir)
    step = max(1, len(rows) // max(1, n_images))
    picked = rows[::step][:n_images]
    images = out / "retrieval" / "val2014"
    images.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    entries, coco_images, coco_annotations = [], [], []
    for i, row in enumerate(picked):
        name = Path(row["path"]).name
        shutil.copyfile(emoji_dir / row["path"], images / name)
        candidates = [row["caption"], row["keywords"] or "", f"a {row['category'].lower()} emoji: {row['caption']}"]
        captions = []
        for c in (" ".join(c.split()) for c in candidates):
            if c and c.lower() not in seen:
                seen.add(c.lower())
                captions.append(c)
        if not captions:
            captions = [f"{row['caption']} ({row['key']})"]
        entries.append({"filepath": "val2014", "filename": name, "imgid": i, "split": "test",
                        "sentences": [{"raw": c, "tokens": c.split()} for c in captions]})
        coco_images.append({"id": i, "file_name": name})
        for c in captions:  # pycocotools keys annotations by id: each needs its own
            coco_annotations.append({"id": len(coco_annotations), "image_id": i, "caption": c})
    karpathy = out / "retrieval" / "dataset_emoji.json"
    karpathy.write_text(json.dumps({"dataset": "emoji", "images": entries}))
    coco = out / "retrieval" / "coco_test_karpathy.json"
    coco.write_text(json.dumps({"images": coco_images, "annotations": coco_annotations}))

    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    classes_root = out / "classes"
    for category, members in sorted(by_category.items()):
        folder = classes_root / "test" / class_folder(category)
        folder.mkdir(parents=True, exist_ok=True)
        for row in members[:: max(1, len(members) // per_class)][:per_class]:
            shutil.copyfile(emoji_dir / row["path"], folder / Path(row["path"]).name)
    folders = sorted(p.name for p in (classes_root / "test").iterdir())
    templates = out / "templates.txt"
    templates.write_text("\n".join(TEMPLATES) + "\n")
    return {"karpathy": str(karpathy), "coco": str(coco), "coco_images": str(images), "classes": str(classes_root),
            "classnames": [f.replace("_", " ") for f in folders], "templates_file": str(templates),
            "templates": TEMPLATES, "images": len(entries), "captions": len(coco_annotations),
            "class_images": sum(1 for _ in (classes_root / "test").rglob("*.png"))}


# ------------------------------------------------------------------------------------------------ vlforge's side
def ingest_fixtures(catalog, fixtures: dict) -> tuple[str, str]:
    """The two fixtures as vlforge datasets (their ids)."""
    from vlforge.components.data.crawl import CrawlConfig
    from vlforge.components.data.shard import ShardConfig
    from vlforge.components.sources.config import SourceConfig
    from vlforge.components.stages import run_ingest

    crawl, shard = CrawlConfig(**CRAWL), ShardConfig(samples_per_shard=512)
    retrieval = run_ingest(SourceConfig(spec=f"karpathy:{fixtures['karpathy']}", name="emoji-karpathy"), crawl, shard,
                           catalog).artifact
    classes = run_ingest(SourceConfig(spec=f"imagefolder:{fixtures['classes']}", name="emoji-classes",
                                      templates=fixtures["templates_file"]), crawl, shard, catalog).artifact
    return retrieval.id, classes.id


def train_clip(catalog, steps: int, emoji_dir: Path = EMOJI) -> str:
    """A small CLIP trained by vlforge on the whole emoji set (its model id)."""
    from vlforge.components.data.crawl import CrawlConfig
    from vlforge.components.data.shard import ShardConfig
    from vlforge.components.sources.config import SourceConfig
    from vlforge.components.stages import run_ingest, run_tokenizer, run_train
    from vlforge.components.tokenizer import TokenizerConfig

    data = run_ingest(SourceConfig(spec=str(emoji_dir / "pairs.parquet"), name="emoji", label_col="category",
                                   key_col="key"), CrawlConfig(**CRAWL),
                      ShardConfig(samples_per_shard=512, validation_fraction=0.0), catalog).artifact
    tok = run_tokenizer(data.id, TokenizerConfig(vocab_size=1024), catalog).artifact
    return run_train("clip", "tiny", {**TRAIN_SIZES, "steps": steps}, data.id, tok.id, catalog).artifact.id


def tiny_clip(catalog, texts: list[str], seed: int = 0) -> str:
    """A tiny untrained CLIP (random weights, a BPE tokenizer trained on ``texts``) registered as a model (its id):
    the test's stand-in for a trained one (near-chance numbers, but every step of the comparison the same)."""
    import torch

    from vlforge.components.models.registry import get_family, special_token_ids
    from vlforge.components.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="vlforge-tiny-clip-"))
    try:
        train_tokenizer(texts, folder, TokenizerConfig(vocab_size=256, max_length=TRAIN_SIZES["max_text_length"]))
        tokenizer = load_tokenizer(folder)
        family = get_family("clip")
        sizes = {k: TRAIN_SIZES[k] for k in ("image_size", "patch_size", "max_text_length")}
        recipe = family.recipe("tiny", {**sizes, "embed_dim": 32, "vision_width": 32, "vision_layers": 1,
                                        "vision_heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2})
        torch.manual_seed(seed)
        model = family.build_model(recipe, len(tokenizer), special_token_ids(tokenizer))
        with torch.no_grad():  # off the init values (LayerNorms at 1, zero biases), so every weight matters
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        family.save(model, folder, recipe)
        return catalog.register(kind="model", name="clip-tiny-random", family="clip", files=folder,
                                config={"family": "clip", "recipe": "tiny",
                                        "values": recipe.model_dump(mode="json")}).id
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def score_ours(catalog, model_id: str, retrieval_id: str, classes_id: str) -> dict:
    from vlforge.components.stages import run_eval

    ret = run_eval(model_id, retrieval_id, ["retrieval"], "test", catalog).artifact.metrics
    zs = run_eval(model_id, classes_id, ["zero_shot_classification"], "test", catalog).artifact.metrics
    return {**{k: ret[k] for k in RETRIEVAL}, **{k: zs[k] for k in ZERO_SHOT}}


# ------------------------------------------------------------------------------------- the reference (bench venv)
def peer(job_path: Path, out_path: Path) -> None:
    """CLIP_benchmark on the open_clip export and plain transformers on the hf export (runs in the bench venv)."""
    import clip_benchmark  # noqa: F401
    import open_clip
    import torch
    import transformers
    from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    job = json.loads(job_path.read_text())
    templates = [t.replace("{}", "{c}") for t in job["templates"]]

    def score(model, transform, tokenizer) -> dict:
        ds = build_dataset("mscoco_captions", root=str(Path(job["coco_images"]).parent), transform=transform,
                           split="test", annotation_file=job["coco"], task="zeroshot_retrieval")
        loader = DataLoader(ds, batch_size=64, shuffle=False, collate_fn=get_dataset_collate_fn("mscoco_captions"))
        ret = zeroshot_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
        folder = ImageFolder(root=str(Path(job["classes"]) / "test"), transform=transform)
        folder.classes = job["classnames"]
        loader = DataLoader(folder, batch_size=64, shuffle=False)
        zs = zeroshot_classification.evaluate(model, loader, tokenizer, folder.classes, templates, "cpu", amp=False)
        return {**{k: ret[v] for k, v in REFERENCE_NAMES.items()}, **{k: zs[k] for k in ZERO_SHOT}}

    start = time.perf_counter()
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{job['open_clip_dir']}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{job['open_clip_dir']}")
    result = {"clip_benchmark": score(model, preprocess, tokenizer),
              "clip_benchmark_seconds": time.perf_counter() - start,
              "open_clip_tokenizer": type(tokenizer).__name__, "open_clip_preprocess": str(preprocess)}
    # open_clip's HFTokenizer cleans every text first (ftfy.fix_text, html.unescape, whitespace): it turns curly
    # quotes straight, so a tokenizer that kept them reads other tokens. The same run without that cleaning:
    captions = [a["caption"] for a in json.loads(Path(job["coco"]).read_text())["annotations"]]
    clean = getattr(tokenizer, "clean_fn", lambda text: text)
    result["captions_open_clip_cleaning_changes"] = sorted({c for c in captions if clean(c) != c})
    tokenizer.clean_fn = lambda text: text
    result["clip_benchmark_uncleaned"] = score(model, preprocess, tokenizer)

    start = time.perf_counter()
    hf_dir = job["hf_dir"]
    hf_model = CLIPModel.from_pretrained(hf_dir).eval()
    processor = AutoImageProcessor.from_pretrained(hf_dir)
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)

    class TransformersCLIP(torch.nn.Module):
        """CLIPModel as CLIP_benchmark calls a model: ``encode_image`` / ``encode_text``."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def encode_image(self, pixels):
            return _features(self.inner.get_image_features(pixel_values=pixels))

        def encode_text(self, enc):
            return _features(self.inner.get_text_features(**enc))

    class Tokens(dict):
        """A tokenizer's tensors with the ``.to(device)`` CLIP_benchmark calls."""

        def to(self, device):
            return Tokens({k: v.to(device) for k, v in self.items()})

    def hf_tokenize(texts):
        enc = hf_tok(list(texts), padding="max_length", truncation=True, return_tensors="pt")
        return Tokens(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])

    def hf_transform(image):
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    result["transformers"] = score(TransformersCLIP(hf_model), hf_transform, hf_tokenize)
    result["transformers_seconds"] = time.perf_counter() - start
    result["image_processor"] = type(processor).__name__
    result["tokenizer"] = type(hf_tok).__name__
    result["versions"] = {"clip_benchmark": _dist_version("clip_benchmark"), "open_clip": open_clip.__version__,
                          "transformers": transformers.__version__, "torch": torch.__version__}
    out_path.write_text(json.dumps(result))


def _features(out):
    """The embedding tensor of ``get_*_features`` (a tensor, or a model output with ``pooler_output``)."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# ------------------------------------------------------------------------------------------------ the reference venv
def ensure_venv(venv: Path = DEFAULT_VENV) -> Path:
    """The reference venv's python, creating the venv and installing the pins when it is missing (about 2 min from
    the local package indexes; 5-6 GB: torchvision brings a CUDA build of torch)."""
    return reference_venv.ensure_venv(venv, PEER_PINS, "import clip_benchmark.datasets.builder, "
                                      "clip_benchmark.metrics.zeroshot_retrieval, transformers, numpy; float(numpy.ones(1))")


def run_reference(job: dict, venv: Path = DEFAULT_VENV) -> dict:
    """The reference's and transformers' scores for ``job`` (fixture paths and the two exports)."""
    py = ensure_venv(venv)
    with tempfile.TemporaryDirectory() as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_path.write_text(json.dumps(job))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1",
                                                                            "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run([str(py), str(Path(__file__).resolve()), "--_peer", str(job_path), str(out_path)],
                              capture_output=True, text=True, env=env, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(f"the reference side failed:\n{proc.stderr[-3000:]}")
        return json.loads(out_path.read_text())


# ----------------------------------------------------------------------------------------------------- the comparison
def compare(ours: dict, ref: dict) -> dict:
    """|difference| in points (100 x fraction) of each reference side's numbers from vlforge's; the max over the
    sides held to the aim (``CHECKED``), and over all sides."""
    diff = {side: {m: round(100 * abs(ref[side][m] - ours[m]), 6) for m in METRICS} for side in SIDES}
    return {"diff_points": diff, "max_diff_points": max(v for s in CHECKED for v in diff[s].values()),
            "max_diff_points_all_sides": max(v for d in diff.values() for v in d.values())}


def run_comparison(workdir: Path, *, n_images: int, per_class: int, steps: int | None,
                   venv: Path = DEFAULT_VENV) -> dict:
    """Fixtures, a model (trained for ``steps``, or the tiny random one when ``steps`` is None), vlforge's scores,
    both exports, the reference's scores and the differences. Sets VLFORGE_HOME to ``workdir/home``."""
    os.environ["VLFORGE_HOME"] = str(workdir / "home")
    from vlforge.catalog import Catalog
    from vlforge.catalog.export import export

    timing: dict[str, float] = {}
    start = time.perf_counter()
    catalog = Catalog(workdir / "home" / "catalog")
    fixtures = write_fixtures(workdir / "fixtures", n_images, per_class)
    retrieval_id, classes_id = ingest_fixtures(catalog, fixtures)
    timing["fixtures_and_ingest"] = time.perf_counter() - start
    start = time.perf_counter()
    if steps is None:
        karpathy = json.loads(Path(fixtures["karpathy"]).read_text())
        texts = [s["raw"] for e in karpathy["images"] for s in e["sentences"]] + fixtures["classnames"]
        model_id = tiny_clip(catalog, texts)
    else:
        model_id = train_clip(catalog, steps)
    timing["model"] = time.perf_counter() - start
    start = time.perf_counter()
    ours = score_ours(catalog, model_id, retrieval_id, classes_id)
    timing["vlforge_eval"] = time.perf_counter() - start
    open_clip_dir = export(catalog, model_id, workdir / "export-open_clip", "open_clip")
    hf_dir = export(catalog, model_id, workdir / "export-hf", "hf")
    start = time.perf_counter()
    ref = run_reference({**fixtures, "open_clip_dir": str(open_clip_dir), "hf_dir": str(hf_dir)}, venv)
    timing["reference_process"] = time.perf_counter() - start
    timing["clip_benchmark"] = ref.pop("clip_benchmark_seconds")
    timing["transformers"] = ref.pop("transformers_seconds")
    return {"fixtures": {k: fixtures[k] for k in ("images", "captions", "class_images", "classnames", "templates")},
            "model": {"trained_steps": steps, "sizes": TRAIN_SIZES if steps is not None else "tiny, random weights"},
            "vlforge": ours, **ref, **compare(ours, ref), "seconds": {k: round(v, 1) for k, v in timing.items()}}


def table(result: dict) -> str:
    lines = ["| metric | vlforge | CLIP_benchmark | CLIP_benchmark, text not cleaned | transformers | max diff (pt), "
             "last two |", "|---|---|---|---|---|---|"]
    for m in METRICS:
        values = [100 * result[side][m] for side in ("vlforge", *SIDES)]
        checked = [values[0]] + [100 * result[side][m] for side in CHECKED]
        lines.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {max(checked) - min(checked):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="retrieval images (every k-th emoji)")
    parser.add_argument("--per-class", type=int, default=40, help="classification images per emoji category")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the CLIP compared")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the reference's virtual environment")
    parser.add_argument("--setup-only", action="store_true", help="only create the reference venv")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "clip-benchmark.json")
    parser.add_argument("--_peer", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._peer:
        peer(*args._peer)
        return
    if args.setup_only:
        print(ensure_venv(args.venv))
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_comparison(Path(tmp), n_images=args.images, per_class=args.per_class, steps=args.steps,
                                venv=args.venv)
    result["seconds"]["total"] = round(time.perf_counter() - start, 1)
    result["tolerance_points"] = TOLERANCE_POINTS
    result["within_tolerance"] = result["max_diff_points"] <= TOLERANCE_POINTS
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nmax difference {result['max_diff_points']:.3f} points (aim <= {TOLERANCE_POINTS}); "
          f"{result['fixtures']['images']} images / {result['fixtures']['captions']} captions, "
          f"{result['fixtures']['class_images']} images in {len(result['fixtures']['classnames'])} classes; "
          f"image processor {result['image_processor']}, open_clip tokenizer {result['open_clip_tokenizer']}; "
          f"all sides, open_clip's text cleaning included: {result['max_diff_points_all_sides']:.3f} points "
          f"({len(result['captions_open_clip_cleaning_changes'])} captions changed by it); "
          f"{result['seconds']['total']:.0f} s")


if __name__ == "__main__":
    main()
