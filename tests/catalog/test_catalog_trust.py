"""The catalog's trust guarantees (vlforge.catalog.store + maintenance + export): search and filters, tags and
aliases, corruption caught by verify and by loading, gc that never touches what artifacts reach, a damaged index,
no pickles, model export, and 8 processes x 200 registrations at once."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import time
from pathlib import Path

import pytest
from catalog_seed import XSS, seed_lineage
from safetensors.numpy import load_file
from vlforge.catalog import Catalog, Query
from vlforge.catalog.blobs import scratch_owner
from vlforge.catalog.export import export
from vlforge.catalog.index import Index
from vlforge.catalog.maintenance import gc, verify

from vlforge.errors import UserError


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Catalog, dict]:
    catalog = Catalog(tmp_path / "catalog")
    return catalog, seed_lineage(catalog, tmp_path / "work")


def _names(artifacts: list) -> list[str]:
    return [f"{a.name}:{a.version}" for a in artifacts]


def test_search_filters_sort_and_count(seeded: tuple[Catalog, dict]) -> None:
    catalog, arts = seeded
    assert _names(catalog.search(Query(kind="model"))) == ["clip-shapes-mini:2", "clip-shapes-mini:1"]
    assert _names(catalog.search(Query(family="clip", sort_metric="i2t_r1", ascending=True))) == [
        "clip-shapes-mini:1", "clip-shapes-mini-eval:1", "clip-shapes-mini:2"]  # equal r1: newest first
    assert _names(catalog.search(Query(sort_metric="i2t_r1"), limit=2)) == ["clip-shapes-mini-eval:1",
                                                                            "clip-shapes-mini:2"]
    # artifacts without the sort metric come last, newest first
    assert _names(catalog.search(Query(sort_metric="i2t_r1")))[-2:] == ["shapes-mini-tokenizer:1", "shapes-mini:1"]
    assert _names(catalog.search(Query(metric_above=(("i2t_r1", 0.3), ("t2i_r1", 0.1))))) == ["clip-shapes-mini-eval:1"]
    assert _names(catalog.search(Query(text="tokenizer"))) == ["shapes-mini-tokenizer:1"]
    assert _names(catalog.search(Query(text=arts["model1"].id[:8]))) == ["clip-shapes-mini:1"]
    assert catalog.search(Query(text="%")) == []  # LIKE wildcards are literal
    assert catalog.count(Query(text="shapes")) == 5
    assert catalog.count(Query(since="2999-01-01")) == 0
    assert catalog.count(Query(since=arts["dataset"].created_at)) == 5
    assert _names(catalog.search(offset=1, limit=1)) == ["clip-shapes-mini:2"]
    with pytest.raises(UserError, match="invalid time 'yesterday'"):
        catalog.search(Query(since="yesterday"))
    with pytest.raises(UserError, match="invalid metric name"):
        catalog.search(Query(sort_metric="x'); DROP TABLE artifacts; --"))
    assert catalog.facets()["kind"] == ["dataset", "eval", "model", "tokenizer"]


def test_tags_and_aliases(seeded: tuple[Catalog, dict]) -> None:
    catalog, arts = seeded
    assert catalog.tag("clip-shapes-mini:1", ["paper", "baseline"]).tags == ["baseline", "paper"]
    assert _names(catalog.search(Query(tag="paper"))) == ["clip-shapes-mini:1"]
    assert catalog.tag("clip-shapes-mini:1", ["paper"], remove=True).tags == ["baseline"]
    with pytest.raises(UserError, match="invalid tag"):
        catalog.tag("clip-shapes-mini", ["<b>"])
    catalog.set_alias("clip-shapes-mini", "production", "clip-shapes-mini:1")
    assert _names(catalog.search(Query(alias="production"))) == ["clip-shapes-mini:1"]
    assert catalog.remove_alias("clip-shapes-mini", "production") == arts["model1"].id
    with pytest.raises(UserError, match="has no alias 'production'"):
        catalog.remove_alias("clip-shapes-mini", "production")
    with pytest.raises(UserError, match="managed by the catalog"):
        catalog.remove_alias("clip-shapes-mini", "latest")
    with pytest.raises(UserError, match="unknown artifact reference 'nope'"):
        catalog.set_alias("nope", "production", "nope")


def test_lineage_both_ways(seeded: tuple[Catalog, dict]) -> None:
    catalog, arts = seeded
    down = catalog.descendants_tree("shapes-mini")
    assert [c["artifact"].kind for c in down["children"]] == ["tokenizer", "model", "model", "eval"]
    tokenizer = down["children"][0]
    assert _names([c["artifact"] for c in tokenizer["children"]]) == ["clip-shapes-mini:1", "clip-shapes-mini:2"]
    up = catalog.lineage_tree("clip-shapes-mini-eval")
    assert [p["artifact"].id for p in up["parents"]] == [arts["model"].id, arts["dataset"].id]


def _corrupt(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    time.sleep(0.01)  # a fresh mtime even on coarse clocks
    path.write_bytes(bytes(data))


def test_changed_blob_is_caught_by_verify_and_by_loading(seeded: tuple[Catalog, dict]) -> None:
    catalog, arts = seeded
    model = arts["model"]
    view = catalog.path(model.id)  # materialised and trusted before the damage
    weights = next(f for f in model.files if f.path == "model.safetensors")
    assert verify(catalog).ok
    _corrupt(catalog.root / "blobs" / "sha256" / weights.sha256[:2] / weights.sha256)

    report = verify(catalog)
    assert [(p.status, p.sha256) for p in report.problems] == [("corrupt", weights.sha256)]
    assert report.problems[0].artifacts == [f"clip-shapes-mini:2 ({model.short_id}) model.safetensors"]
    with pytest.raises(UserError, match=r"clip-shapes-mini:2 .* is corrupt: file 'model.safetensors'"):
        catalog.path(model.id)
    with pytest.raises(UserError, match="is corrupt"):
        export(catalog, model.id, view.parent.parent / "out")
    assert catalog.path(arts["model1"].id).is_dir()  # the other version is intact and still loads


def test_changed_copy_in_a_view_is_caught(seeded: tuple[Catalog, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, arts = seeded
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError("no links here")))
    view = catalog.path(arts["tokenizer"].id)
    _corrupt(view / "tokenizer.json")
    with pytest.raises(UserError, match="is corrupt: file 'tokenizer.json'"):
        catalog.path(arts["tokenizer"].id)
    assert [p.status for p in verify(catalog).problems] == ["corrupt"]


def test_missing_blob_is_reported(seeded: tuple[Catalog, dict]) -> None:
    catalog, arts = seeded
    sha = arts["tokenizer"].files[0].sha256
    (catalog.root / "blobs" / "sha256" / sha[:2] / sha).unlink()
    assert [p.status for p in verify(catalog).problems] == ["missing"]
    with pytest.raises(UserError, match="is missing from the catalog"):
        catalog.path("shapes-mini-tokenizer")


def test_gc_removes_orphans_and_dead_scratch_only(seeded: tuple[Catalog, dict], tmp_path: Path) -> None:
    catalog, _arts = seeded
    blobs_before = sorted(p for p in (catalog.root / "blobs").rglob("*") if p.is_file())
    orphan = catalog.root / "blobs" / "sha256" / "ab" / ("ab" * 32)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a killed registration")
    host = scratch_owner().rpartition(".")[0]
    dead = catalog.root / "tmp" / f"{host}.999999999-abc-x.part"
    live = catalog.root / "tmp" / f"{host}.{os.getpid()}-abc-y.part"
    dead_view = catalog.root / "views" / f".building-{host}.999999999-abc-1"
    for path in (dead, live):
        path.write_bytes(b"partial")
    (dead_view / "sub").mkdir(parents=True)

    dry = gc(catalog, dry_run=True)
    assert dry.blobs == [orphan.relative_to(catalog.root).as_posix()]
    assert sorted(dry.scratch) == sorted(p.relative_to(catalog.root).as_posix() for p in (dead, dead_view))
    assert orphan.exists() and dead.exists() and dead_view.exists()

    done = gc(catalog)
    assert done.blobs == dry.blobs and done.bytes == dry.bytes
    assert not orphan.exists() and not dead.exists() and not dead_view.exists() and live.exists()
    assert sorted(p for p in (catalog.root / "blobs").rglob("*") if p.is_file()) == blobs_before
    assert verify(catalog).ok
    assert gc(catalog).blobs == []


def test_registration_survives_gc_between_blob_and_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = Catalog(tmp_path / "catalog")
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.txt").write_text("weights")
    real_commit = Index.commit
    swept: list[list[str]] = []

    def gc_then_commit(self, pending, checks, blob_present):
        if not swept:
            swept.append(gc(catalog).blobs)  # the blob is stored but not yet referenced: gc removes it
        return real_commit(self, pending, checks, blob_present)

    monkeypatch.setattr(Index, "commit", gc_then_commit)
    art = catalog.register(kind="model", name="m", files=src, config={})
    assert len(swept[0]) == 1
    assert (catalog.path(art.id) / "w.txt").read_text() == "weights"
    assert verify(catalog).ok


def test_corrupt_index_is_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    Catalog(root)
    (root / "index.sqlite").write_bytes(b"this is not sqlite " * 200)
    for name in ("index.sqlite-wal", "index.sqlite-shm"):
        (root / name).unlink(missing_ok=True)
    with pytest.raises(UserError) as excinfo:
        Catalog(root)
    assert "\n" not in str(excinfo.value) and "is corrupt" in str(excinfo.value)


def test_pickles_are_refused_and_checkpoints_are_safetensors(seeded: tuple[Catalog, dict], tmp_path: Path) -> None:
    catalog, _arts = seeded
    import torch

    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"w": torch.zeros(2)}, bad / "pytorch_model.bin")
    with pytest.raises(UserError, match="'pytorch_model.bin' is a Python pickle"):
        catalog.register(kind="model", name="bad", files=bad, config={})
    (bad / "pytorch_model.bin").unlink()
    (bad / "state.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UserError, match="'state.pkl' is a Python pickle"):
        catalog.register(kind="model", name="bad", files=bad, config={})
    assert catalog.search(Query(name="bad")) == []
    # every stored blob of every model is pickle-free, and the weights load through safetensors
    for model in catalog.search(Query(kind="model")):
        view = catalog.path(model.id)
        for entry in model.files:
            head = (view / entry.path).read_bytes()[:2]
            assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), entry.path
        assert load_file(str(view / "model.safetensors"))["w"][0, 0] == model.version


def test_export_writes_hf_folder_with_card(seeded: tuple[Catalog, dict], tmp_path: Path) -> None:
    catalog, arts = seeded
    out = export(catalog, "clip-shapes-mini", tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "loss.png", "model.safetensors",
                                                     "train_log.jsonl"]
    card = (out / "README.md").read_text()
    for fragment in ("# clip-shapes-mini (version 2)", "**clip**", "## Data", "shapes-mini", "## Licence of the data",
                     '"lr": 0.0003', "| clip-shapes-mini-eval:1 | t2i_r1 | 0.4 |", "## Lineage",
                     f"made from dataset shapes-mini:1 `{arts['dataset'].short_id}`"):
        assert fragment in card, fragment
    assert load_file(str(out / "model.safetensors"))["w"][0, 0] == 2
    (out / "config.json").write_text("{}")  # an export is the user's own copy, writable, not the blob
    assert verify(catalog).ok
    with pytest.raises(UserError, match="exists and is not an empty folder"):
        export(catalog, "clip-shapes-mini", out)
    (tmp_path / "empty").mkdir()
    assert export(catalog, "shapes-mini", tmp_path / "empty").is_dir()
    assert XSS in (tmp_path / "empty" / "README.md").read_text()  # the dataset's own card kept below
    assert not [p for p in tmp_path.iterdir() if ".export-" in p.name]


def _register_batch(root: str, worker: int, count: int, barrier) -> None:
    catalog = Catalog(root)
    src = Path(root).parent / f"src-{worker}"
    src.mkdir()
    barrier.wait()
    for i in range(count):
        own = src / f"{i}.txt"
        own.write_text(f"{worker}-{i}")
        catalog.register(kind="model", name=f"m{worker % 2}", files={"own.txt": own}, config={"w": worker, "i": i},
                         metrics={"i": i})


def test_eight_processes_register_1600_artifacts(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    Catalog(root)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(8)
    started = time.monotonic()
    procs = [ctx.Process(target=_register_batch, args=(str(root), w, 200, barrier)) for w in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    elapsed = time.monotonic() - started
    assert [proc.exitcode for proc in procs] == [0] * 8
    catalog = Catalog(root)
    assert catalog.count() == 1600
    for name in ("m0", "m1"):
        versions = sorted(a.version for a in catalog.search(Query(name=name)))
        assert versions == list(range(1, 801))
    seen = set()
    for art in catalog.search():
        content = (catalog.path(art.id) / "own.txt").read_text()
        assert content == f"{art.config['w']}-{art.config['i']}"
        seen.add(content)
    assert len(seen) == 1600
    assert verify(catalog).ok and gc(catalog, dry_run=True).blobs == []
    print(f"8 x 200 registrations in {elapsed:.1f}s")
