"""`vlforge catalog ...` through the real CLI: filters and sort, show, lineage both ways, diff, alias set/rm, tag,
verify, gc, export, and the bad-input contract (one line, exit code 2, nothing changed)."""
from __future__ import annotations

from pathlib import Path

import pytest
from cli_harness import cli_json, load_module, run_cli
from vlforge.catalog import Catalog


seed_lineage = load_module("vlforge_tests_catalog_seed", Path(__file__).parent / "catalog" / "catalog_seed.py").seed_lineage


@pytest.fixture
def seeded(home: Path, tmp_path: Path) -> dict:
    return seed_lineage(Catalog(home / "catalog"), tmp_path / "work")


def _fails(args: list[str], home: Path, fragment: str) -> None:
    before = sorted((a.id, tuple(a.aliases), tuple(a.tags)) for a in Catalog(home / "catalog").search())
    proc = run_cli(args, home, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines and lines[-1].startswith("error: ") and fragment in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted((a.id, tuple(a.aliases), tuple(a.tags)) for a in Catalog(home / "catalog").search()) == before


def test_list_show_lineage_diff(home: Path, seeded: dict) -> None:
    listed = cli_json(["catalog", "list", "--family", "clip", "--sort", "i2t_r1", "--metric-above", "i2t_r1=0.3"], home)
    assert [(e["name"], e["version"]) for e in listed] == [("clip-shapes-mini-eval", 1), ("clip-shapes-mini", 2)]
    assert {"id", "kind", "name", "family", "parents", "config", "metrics", "files"} <= set(listed[0])

    shown = cli_json(["catalog", "show", "shapes-mini"], home)
    assert "<script>" in shown["card"] and shown["packages"] == {} and Path(shown["path"]).is_dir()

    lineage = cli_json(["catalog", "lineage", "clip-shapes-mini"], home)
    assert [p["name"] for p in lineage["tree"]["parents"]] == ["shapes-mini", "shapes-mini-tokenizer"]
    assert [c["name"] for c in lineage["children"]["children"]] == ["clip-shapes-mini-eval"]
    assert lineage["descendants"] == [seeded["eval"].id]

    diff = cli_json(["catalog", "diff", "clip-shapes-mini:1", "clip-shapes-mini:2"], home)
    assert diff["config"] == {"values.lr": [0.001, 0.0003]}
    assert diff["metrics"]["i2t_r1"] == {"a": 0.25, "b": 0.5, "delta": 0.25}
    assert diff["files"]["changed"] == ["model.safetensors", "train_log.jsonl"] and diff["parents"]["only_a"] == []


def test_alias_tag_verify_gc_export(home: Path, seeded: dict, tmp_path: Path) -> None:
    assert cli_json(["catalog", "alias", "set", "production", "clip-shapes-mini:1"], home)["id"] == seeded["model1"].id
    assert cli_json(["catalog", "tag", "clip-shapes-mini:1", "paper"], home)["tags"] == ["paper"]
    listed = cli_json(["catalog", "list", "--alias", "production", "--tag", "paper"], home)
    assert [e["id"] for e in listed] == [seeded["model1"].id]
    assert cli_json(["catalog", "alias", "rm", "production", "clip-shapes-mini"], home)["removed"] == seeded["model1"].id
    assert cli_json(["catalog", "list", "--alias", "production"], home) == []

    assert cli_json(["catalog", "verify"], home)["ok"] is True
    orphan = home / "catalog" / "blobs" / "sha256" / "00" / ("00" * 32)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"orphan")
    assert cli_json(["catalog", "gc", "--dry-run"], home)["blobs"] == [orphan.relative_to(home / "catalog").as_posix()]
    assert orphan.exists()
    assert len(cli_json(["catalog", "gc"], home)["blobs"]) == 1 and not orphan.exists()

    out = tmp_path / "hf"
    assert cli_json(["catalog", "export", "clip-shapes-mini", str(out)], home)["path"] == str(out.resolve())
    assert (out / "model.safetensors").is_file() and "## Lineage" in (out / "README.md").read_text()

    blob = next((home / "catalog" / "blobs").rglob(seeded["tokenizer"].files[0].sha256))
    blob.chmod(0o644)
    blob.write_text('{"model": "changed"}')
    proc = run_cli(["catalog", "verify", "--json"], home, timeout=120)
    assert proc.returncode == 1 and '"status": "corrupt"' in proc.stdout and "shapes-mini-tokenizer:1" in proc.stdout
    _fails(["catalog", "show", "shapes-mini-tokenizer"], home, "is corrupt: file 'tokenizer.json'")


def test_bad_input(home: Path, seeded: dict, tmp_path: Path) -> None:
    _fails(["catalog", "show", "nope"], home, "unknown artifact reference 'nope'")
    _fails(["catalog", "alias", "set", "production", "missing-model"], home, "unknown artifact reference 'missing-model'")
    _fails(["catalog", "alias", "rm", "latest", "clip-shapes-mini"], home, "managed by the catalog")
    _fails(["catalog", "list", "--metric-above", "i2t_r1"], home, "must be METRIC=NUMBER")
    _fails(["catalog", "list", "--since", "last week"], home, "invalid time 'last week'")
    _fails(["catalog", "diff", "clip-shapes-mini", "nope"], home, "unknown artifact reference 'nope'")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    _fails(["catalog", "export", "clip-shapes-mini", str(tmp_path / "full")], home, "is not an empty folder")
    (home / "catalog" / "index.sqlite").write_bytes(b"garbage " * 512)
    for name in ("index.sqlite-wal", "index.sqlite-shm"):
        (home / "catalog" / name).unlink(missing_ok=True)
    proc = run_cli(["catalog", "list"], home, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: catalog index")
    assert "Traceback" not in proc.stderr
