"""The dataset card: what a dataset artifact holds and how it got there, written into the artifact itself.

Written by the ingest stage (and any stage that makes a dataset) after sharding, read by ``vlforge catalog show``
(it prints ``README.md``) and published by the ingest flow as a Prefect markdown artifact. Files:

* ``README.md`` — counts per split, failures by reason, the funnel (rows in -> each removal -> samples out),
  caption and image statistics, and the figures below;
* ``card_captions.png`` — histogram of caption length in words;
* ``card_image_sizes.png`` — histogram of the original images' longer side (what was downloaded, before resize);
* ``card_grid.png`` — a grid of sample images with their captions.

Figures are written with fixed metadata so the same dataset gives the same bytes (the artifact id is a content
hash)."""
from __future__ import annotations

import io
import tarfile
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from vlforge.components.sources.tables import read_parquet

CARD_FILES = ("README.md", "card_captions.png", "card_image_sizes.png", "card_grid.png")
GRID_SAMPLES = 16
TILE = 128


def _histogram(values: list[float], path: Path, xlabel: str, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3), dpi=100)  # no pyplot: its import and global state cost ~0.5-1 s per ingest
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.hist(values, bins=min(40, max(5, len(set(values)))), color="#4C72B0")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})


def _first_samples(out: Path, shards: list[str], n: int) -> list[tuple[bytes, str]]:
    """The first ``n`` (image bytes, caption) pairs of the given shards, in shard order."""
    found: list[tuple[bytes, str]] = []
    for shard in shards:
        groups: dict[str, dict[str, bytes]] = {}
        with tarfile.open(out / shard) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                groups.setdefault(key, {})[ext] = tar.extractfile(member).read() if member.isfile() else b""
        for members in groups.values():
            image = next((members[e] for e in ("jpg", "png", "webp") if e in members), None)
            if image is not None:
                found.append((image, members.get("txt", b"").decode("utf-8", errors="replace")))
            if len(found) >= n:
                return found
    return found


def sample_grid(samples: list[tuple[bytes, str]], path: Path, columns: int = 4) -> None:
    """A PNG grid: each tile is the image (fit into TILE x TILE) above up to three lines of its caption."""
    rows = max(1, -(-len(samples) // columns))
    caption_h = 42
    grid = Image.new("RGB", (columns * TILE, rows * (TILE + caption_h)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, (data, caption) in enumerate(samples):
        x, y = (i % columns) * TILE, (i // columns) * (TILE + caption_h)
        try:
            with Image.open(io.BytesIO(data)) as im:
                thumb = im.convert("RGB")
                thumb.thumbnail((TILE - 4, TILE - 4))
        except Exception:  # noqa: BLE001 - a corrupt sample shows as a grey tile, not a failed card
            thumb = Image.new("RGB", (TILE - 4, TILE - 4), "#999999")
        grid.paste(thumb, (x + (TILE - thumb.width) // 2, y + (TILE - thumb.height) // 2))
        lines = textwrap.wrap(caption.replace("\n", " "), width=20)[:3] or ["(no caption)"]
        for j, line in enumerate(lines):
            draw.text((x + 3, y + TILE + 1 + 13 * j), line, fill="black", font=font)
    grid.save(path, "PNG")


def funnel_rows(manifest: dict) -> list[tuple[str, int, int]]:
    """(step, removed, remaining) from the rows attempted to the samples kept: a filter stage's own funnel when the
    manifest has one, else the crawl's (each failure reason removes its count)."""
    if manifest.get("funnel"):
        return [(f["rule"], f["removed"], f["remaining"]) for f in manifest["funnel"]]
    remaining = manifest["attempted"]
    rows = [("rows in the source", 0, remaining)]
    for reason, count in sorted(manifest["failures_by_reason"].items(), key=lambda kv: (-kv[1], kv[0])):
        remaining -= count
        rows.append((reason, count, remaining))
    return rows


def write_dataset_card(out: Path, name: str, source: str, manifest: dict) -> str:
    """Write the card's files into the dataset folder ``out`` (with shards, ``samples.parquet``, the manifest)
    and return the markdown."""
    index = read_parquet(out / "samples.parquet").to_pylist()
    words = [len(r["caption"].split()) for r in index]
    sides = [max(r.get("original_width") or r["width"], r.get("original_height") or r["height"]) for r in index
             if "width" in r]  # a text-only dataset (GLUE) has no images
    if index:
        _histogram(words, out / "card_captions.png", "caption length (words)", f"{name}: caption length")
    if sides:
        _histogram(sides, out / "card_image_sizes.png", "original image, longer side (px)", f"{name}: image size")
        shards = manifest["splits"]["train"]["shards"] + manifest["splits"]["validation"]["shards"]
        sample_grid(_first_samples(out, shards, GRID_SAMPLES), out / "card_grid.png")
    splits = "\n".join(f"| {s} | {v['samples']} | {len(v['shards'])} |" for s, v in manifest["splits"].items())
    failures = "\n".join(f"| {k} | {v} |" for k, v in manifest["failures_by_reason"].items()) or "| (none) | 0 |"
    funnel = "\n".join(f"| {step} | {removed} | {remaining} |" for step, removed, remaining in funnel_rows(manifest))

    def stats(values: list[int]) -> str:
        if not values:
            return "-"
        ordered = sorted(values)
        return f"min {ordered[0]}, median {ordered[len(ordered) // 2]}, max {ordered[-1]}"

    figures = ("![caption length](card_captions.png)\n" if index else "") + (
        "![image size](card_image_sizes.png)\n![samples](card_grid.png)\n" if sides else "")
    how = ("Text only: no images, no shards; the task's own splits." if manifest.get("format") == "text" else
           "Crawled with img2dataset into webdataset shards; split deterministically by sample key, or as the source "
           "splits it (a benchmark layout).")
    markdown = (
        f"# Dataset card: {name}\n\nSource: `{source}`.\n{how}\n\n"
        f"| split | samples | shards |\n|---|---|---|\n{splits}\n\n"
        f"Attempted {manifest['attempted']} rows; kept {manifest['samples']}.\n\n"
        f"## Failures by reason\n\n| reason | count |\n|---|---|\n{failures}\n\n"
        f"## Funnel\n\n| step | removed | remaining |\n|---|---|---|\n{funnel}\n\n"
        f"## Captions and images\n\nCaption length (words): {stats(words)}.\n"
        f"Original image, longer side (px): {stats(sides)}.\n"
        f"Labels: {', '.join(manifest.get('labels') or []) or 'none'}. "
        f"Scene facts: {'yes' if manifest.get('has_facts') else 'no'}.\n\n{figures}\n"
        f"Licence: that of the source's images and captions; check it before redistributing.\n"
    )
    (out / "README.md").write_text(markdown)
    return markdown
