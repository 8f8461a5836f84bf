"""``vlforge import model`` and ``vlforge catalog export --format`` through the real CLI: ids as JSON, and
one-line errors with exit code 2 that register and write nothing."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from cli_harness import cli_json, run_cli
from tiny_checkpoints import OPEN_CLIP_CFG, open_clip_state, tiny_hf_clip, tiny_tokenizer
from vlforge.catalog import Catalog


def test_import_export_and_refusals_through_the_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = tiny_hf_clip(tmp_path / "hf", tiny_tokenizer(tmp_path / "tok"))
    ids = cli_json(["import", "model", str(src), "--family", "clip", "--name", "tiny-clip"], home, embedded=True)
    catalog = Catalog(home / "catalog")
    assert {(a.kind, a.id) for a in catalog.search()} == {("model", ids["model"]), ("tokenizer", ids["tokenizer"])}
    assert catalog.get("tiny-clip").parents == [ids["tokenizer"]]

    pickled = tmp_path / "epoch_1.pt"
    torch.save({"state_dict": open_clip_state(), "args": argparse.Namespace(lr=0.1)}, pickled)
    (tmp_path / "cfg.json").write_text(json.dumps(OPEN_CLIP_CFG))
    proc = run_cli(["import", "model", str(pickled), "--family", "clip", "--openclip-config", str(tmp_path / "cfg.json"),
                    "--tokenizer", str(src)], home, embedded=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "objects other than tensors" in proc.stderr

    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    proc = run_cli(["catalog", "export", "tiny-clip", str(full), "--format", "open_clip"], home, embedded=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is not an empty folder" in proc.stderr
    assert [p.name for p in full.iterdir()] == ["mine.txt"] and len(catalog.search()) == 2
