"""The ``LAYOUT:PATH`` sources, one module each: benchmark layouts (``karpathy``, ``imagefolder``, ``vqav2``,
``nlvr2``, ``glue``) and images held in archives (``wds`` shards, ``parquet-images``). The ingest stage
(``components/stages/ingest.py``) dispatches on the prefix here.

Three kinds: ``LAYOUTS`` read into rows at once (their images are files already; GLUE's rows are text, written as
a text-only dataset, ``TEXT_LAYOUTS``); ``ARCHIVE_LAYOUTS`` are fingerprinted from their files before any work
and their images extracted into the stage's work folder for the crawl."""
from __future__ import annotations

from pathlib import Path

from vlforge.components.sources.config import SourceConfig
from vlforge.components.sources.glue import load_glue
from vlforge.components.sources.imagefolder import load_class_folders
from vlforge.components.sources.karpathy import load_karpathy
from vlforge.components.sources.nlvr2 import load_nlvr2
from vlforge.components.sources.parquet_images import load_parquet_images, scan_parquet_images
from vlforge.components.sources.tables import SourceRows
from vlforge.components.sources.vqav2 import load_vqav2
from vlforge.components.sources.wds import load_wds, scan_wds

from vlforge.errors import UserError


def _optional_path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


# layout name -> rows of ``LAYOUT:PATH`` (PATH as written after the colon)
LAYOUTS = {
    "karpathy": lambda cfg, path: load_karpathy(Path(path).expanduser(), _optional_path(cfg.images)),
    "imagefolder": lambda cfg, path: load_class_folders(Path(path).expanduser(), _optional_path(cfg.classnames),
                                                        _optional_path(cfg.templates)),
    "vqav2": lambda cfg, path: load_vqav2(path, _optional_path(cfg.images)),
    "nlvr2": lambda cfg, path: load_nlvr2(Path(path).expanduser(), _optional_path(cfg.images)),
    "glue": lambda cfg, path: _text_rows(*load_glue(Path(path).expanduser())),
}
TEXT_LAYOUTS = ("glue",)  # text only: written as a dataset without images or crawl
# images inside archives: fingerprinted from the files (cheap), extracted into the stage's work folder for the crawl
ARCHIVE_LAYOUTS = {
    "wds": (lambda cfg, path: scan_wds(path), lambda cfg, path, work: load_wds(path, work)),
    "parquet-images": (
        lambda cfg, path: scan_parquet_images(Path(path).expanduser(), cfg.caption_col, cfg.label_col, cfg.key_col),
        lambda cfg, path, work: load_parquet_images(Path(path).expanduser(), work, cfg.caption_col, cfg.label_col,
                                                    cfg.key_col)),
}
IMAGES_LAYOUTS = ("karpathy", "vqav2", "nlvr2")  # the layouts that take ``images`` (--images DIR)


def _text_rows(table, description: dict, fingerprint: str) -> SourceRows:
    return SourceRows(table=table, fingerprint=fingerprint, description=description)


def layout_of(spec: str) -> tuple[str, str] | None:
    """``(layout, path)`` for a ``LAYOUT:PATH`` spec, else None."""
    prefix, sep, rest = spec.partition(":")
    return (prefix, rest) if sep and (prefix in LAYOUTS or prefix in ARCHIVE_LAYOUTS) else None


def check_layout_options(cfg: SourceConfig, layout: str | None) -> None:
    if cfg.images and layout not in IMAGES_LAYOUTS:
        raise UserError(f"--images goes with a {' or '.join(f'{k}:' for k in IMAGES_LAYOUTS)} source, not '{cfg.spec}'")
    if (cfg.classnames or cfg.templates) and layout != "imagefolder":
        raise UserError(f"--classnames and --templates go with an imagefolder: source, not '{cfg.spec}'")
