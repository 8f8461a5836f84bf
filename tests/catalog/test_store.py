"""Tests for the artifact catalog (vlforge.catalog.store): addressing, idempotence, lineage, user errors,
multi-process registration and crash safety."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from vlforge.catalog import (
    Artifact,
    Catalog,
    FileEntry,
    detect_code_version,
    packages_snapshot,
)

from vlforge.errors import UserError


def _write_tree(folder: Path, files: dict[str, bytes]) -> Path:
    for relpath, data in files.items():
        target = folder / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder


def _blob_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "blobs").rglob("*") if p.is_file())


def _expected_id(kind: str, name: str, family: str | None, files: dict[str, bytes], config: dict,
                 parents: list[str], metrics: dict) -> str:
    identity = {
        "kind": kind, "name": name, "family": family,
        "files": {path: hashlib.sha256(data).hexdigest() for path, data in files.items()},
        "config": config, "parents": parents, "metrics": metrics,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _assert_user_error(excinfo: pytest.ExceptionInfo[UserError], *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(tmp_path / "catalog")


# ---------------------------------------------------------------------- registration and lookup


def test_register_directory_and_resolve_every_ref_form(catalog: Catalog, tmp_path: Path) -> None:
    contents = {"a.txt": b"alpha", "sub/b.bin": bytes(range(256)) * 10, ".hidden": b"h"}
    src = _write_tree(tmp_path / "src", contents)
    art = catalog.register(kind="dataset", name="laion-mini", files=src, config={"shards": 2},
                           metrics={"rows": 10, "loss": 0.5, "split": "train"}, family="laion",
                           cache_key="ck-1", code_version="abc123", packages={"pydantic": "2.0"})

    assert isinstance(art, Artifact)
    assert art.id == _expected_id("dataset", "laion-mini", "laion", contents, {"shards": 2}, [],
                                  {"rows": 10, "loss": 0.5, "split": "train"})
    assert art.short_id == art.id[:12]
    assert art.version == 1
    assert art.aliases == ["latest"]
    assert art.files == [FileEntry(path=p, sha256=hashlib.sha256(d).hexdigest(), size=len(d))
                         for p, d in sorted(contents.items())]
    assert (art.cache_key, art.code_version, art.packages) == ("ck-1", "abc123", {"pydantic": "2.0"})
    assert art.metrics == {"rows": 10, "loss": 0.5, "split": "train"}
    assert art.created_at.endswith("+00:00")

    for ref in (art.id, art.id.upper(), art.id[:4], art.short_id, "laion-mini", "laion-mini@latest",
                "laion-mini:1"):
        assert catalog.resolve(ref) == art.id, ref
        assert catalog.get(ref) == art, ref

    view = catalog.path("laion-mini")
    assert view == catalog.path(art.id)  # second call reuses the materialised folder
    assert sorted(p.relative_to(view).as_posix() for p in view.rglob("*") if p.is_file()) == sorted(contents)
    for relpath, data in contents.items():
        assert (view / relpath).read_bytes() == data
        assert stat.S_IMODE((view / relpath).stat().st_mode) == 0o444
    assert stat.S_IMODE(view.stat().st_mode) == 0o555
    for blob in _blob_files(catalog.root):
        assert stat.S_IMODE(blob.stat().st_mode) == 0o444
        assert blob.parent.name == blob.name[:2]
    assert not list((catalog.root / "tmp").iterdir())


def test_shared_file_is_stored_once(catalog: Catalog, tmp_path: Path) -> None:
    shared = b"the same bytes" * 1000
    one = _write_tree(tmp_path / "one", {"shared.bin": shared, "x.txt": b"one"})
    two = _write_tree(tmp_path / "two", {"copy/of/shared.bin": shared, "y.txt": b"two"})
    a = catalog.register(kind="dataset", name="a", files=one, config={})
    b = catalog.register(kind="dataset", name="b", files=two, config={})
    assert a.id != b.id
    assert len(_blob_files(catalog.root)) == 3
    assert (catalog.path("b") / "copy/of/shared.bin").read_bytes() == shared


def test_register_from_mapping(catalog: Catalog, tmp_path: Path) -> None:
    _write_tree(tmp_path, {"weights.safetensors": b"w", "cfg.json": b"{}"})
    art = catalog.register(kind="model", name="clip", config={},
                           files={"model/weights.safetensors": tmp_path / "weights.safetensors",
                                  "config.json": str(tmp_path / "cfg.json")})
    assert [f.path for f in art.files] == ["config.json", "model/weights.safetensors"]
    assert (catalog.path(art.id) / "model/weights.safetensors").read_bytes() == b"w"


def test_reregister_is_idempotent_and_new_content_is_a_new_version(catalog: Catalog, tmp_path: Path) -> None:
    src = _write_tree(tmp_path / "src", {"w.bin": b"weights"})
    first = catalog.register(kind="model", name="clip", files=src, config={"lr": 1e-3}, cache_key="k1",
                             code_version="c1")
    again = catalog.register(kind="model", name="clip", files=src, config={"lr": 1e-3}, cache_key="k1",
                             code_version="c2", packages={"torch": "9"})
    assert again == first
    assert again.version == 1 and again.code_version == "c1"
    assert [a.id for a in catalog.list()] == [first.id]

    second = catalog.register(kind="model", name="clip", files=src, config={"lr": 2e-3}, cache_key="k2")
    assert second.id != first.id
    assert second.version == 2
    assert catalog.resolve("clip@latest") == catalog.resolve("clip") == second.id
    assert catalog.resolve("clip:1") == first.id
    assert catalog.get(first.id).aliases == []
    assert catalog.get(second.id).aliases == ["latest"]
    assert [a.id for a in catalog.list()] == [second.id, first.id]
    assert [a.version for a in catalog.list(name="clip")] == [2, 1]

    # Re-registering old content returns the old entry and leaves `latest` alone.
    assert catalog.register(kind="model", name="clip", files=src, config={"lr": 1e-3}).id == first.id
    assert catalog.resolve("clip@latest") == second.id
    assert len(catalog.list()) == 2


def test_find_by_cache_key_and_list_filters(catalog: Catalog, tmp_path: Path) -> None:
    src = _write_tree(tmp_path / "src", {"f": b"x"})
    ds = catalog.register(kind="dataset", name="ds", files=src, config={}, cache_key="shared")
    m1 = catalog.register(kind="model", name="m", files=src, config={"v": 1}, cache_key="shared")
    assert catalog.find_by_cache_key("shared") == m1
    assert catalog.find_by_cache_key("nope") is None
    # The same content registered under a new cache key is found by that key too.
    assert catalog.register(kind="dataset", name="ds", files=src, config={}, cache_key="other") == ds
    assert catalog.find_by_cache_key("other") == ds
    assert [a.id for a in catalog.list(kind="model")] == [m1.id]
    assert [a.id for a in catalog.list(kind="dataset", name="ds")] == [ds.id]
    assert catalog.list(kind="eval") == []


def test_aliases(catalog: Catalog, tmp_path: Path) -> None:
    src = _write_tree(tmp_path / "src", {"f": b"x"})
    v1 = catalog.register(kind="model", name="clip", files=src, config={"v": 1})
    v2 = catalog.register(kind="model", name="clip", files=src, config={"v": 2})
    other = catalog.register(kind="model", name="siglip", files=src, config={})

    catalog.set_alias("clip", "production", "clip:1")
    assert catalog.resolve("clip@production") == v1.id
    assert catalog.get(v1.id).aliases == ["production"]
    catalog.set_alias("clip", "production", v2.short_id)
    assert catalog.get("clip@production").aliases == ["latest", "production"]
    assert catalog.get(v1.id).aliases == []

    with pytest.raises(UserError) as excinfo:
        catalog.set_alias("clip", "production", other.id)
    _assert_user_error(excinfo, "siglip", "clip")
    for bad in ("1st", "has space", "a@b", ""):
        with pytest.raises(UserError) as excinfo:
            catalog.set_alias("clip", bad, "clip:1")
        _assert_user_error(excinfo, repr(bad))
    with pytest.raises(UserError) as excinfo:
        catalog.resolve("clip@staging")
    _assert_user_error(excinfo, "'clip@staging'", "staging")
    assert catalog.resolve("clip@production") == v2.id


def test_concurrent_path_callers_get_one_valid_view(catalog: Catalog, tmp_path: Path) -> None:
    contents = {f"d{i}/f{j}": f"{i}-{j}".encode() for i in range(5) for j in range(20)}
    art = catalog.register(kind="dataset", name="ds", files=_write_tree(tmp_path / "src", contents), config={})
    barrier = threading.Barrier(8)

    def materialise() -> Path:
        barrier.wait(timeout=30)
        return catalog.path(art.id)

    with ThreadPoolExecutor(8) as pool:
        views = [f.result() for f in [pool.submit(materialise) for _ in range(8)]]
    assert set(views) == {catalog.root / "views" / art.id}
    for relpath, data in contents.items():
        assert (views[0] / relpath).read_bytes() == data
    assert [p.name for p in (catalog.root / "views").iterdir()] == [art.id]  # no half-built leftovers


def test_view_falls_back_to_copies_when_hardlinks_fail(catalog: Catalog, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    art = catalog.register(kind="dataset", name="ds", files=_write_tree(tmp_path / "src", {"a/b": b"bytes"}),
                           config={})

    def no_link(src: object, dst: object) -> None:
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_link)
    copied = catalog.path(art.id) / "a/b"
    assert copied.read_bytes() == b"bytes"
    assert copied.stat().st_nlink == 1 and stat.S_IMODE(copied.stat().st_mode) == 0o444


# ---------------------------------------------------------------------- lineage


def test_lineage(catalog: Catalog, tmp_path: Path) -> None:
    src = _write_tree(tmp_path / "src", {"f": b"x"})
    ds = catalog.register(kind="dataset", name="ds", files=src, config={})
    tok = catalog.register(kind="tokenizer", name="tok", files=src, config={}, parents=["ds"])
    model = catalog.register(kind="model", name="clip", files=src, config={}, parents=[tok.short_id, "ds@latest"])
    ev = catalog.register(kind="eval", name="zeroshot", files={}, config={}, parents=["clip:1"],
                          metrics={"top1": 0.42})

    assert model.parents == [tok.id, ds.id]
    assert ev.files == []
    assert [a.id for a in catalog.ancestors("zeroshot")] == [model.id, tok.id, ds.id]
    assert [a.id for a in catalog.ancestors(tok.id)] == [ds.id]
    assert catalog.ancestors(ds.id) == []
    assert [a.id for a in catalog.descendants("ds")] == [tok.id, model.id, ev.id]
    assert [a.id for a in catalog.descendants("clip")] == [ev.id]
    assert catalog.descendants(ev.id) == []

    tree = catalog.lineage_tree(ev.id)
    assert tree["artifact"] == catalog.get(ev.id)
    (model_node,) = tree["parents"]
    assert model_node["artifact"].id == model.id
    tok_node, ds_node = model_node["parents"]
    assert tok_node["artifact"].id == tok.id and ds_node["artifact"].id == ds.id
    assert [n["artifact"].id for n in tok_node["parents"]] == [ds.id]
    assert ds_node["parents"] == [] and tok_node["parents"][0]["parents"] == []
    assert isinstance(catalog.path(ev.id), Path) and not any(catalog.path(ev.id).iterdir())


# ---------------------------------------------------------------------- user errors


def _ids_sharing_a_prefix(files: dict[str, bytes]) -> tuple[dict, dict, str]:
    """Two configs whose artifact ids share their first 4 hex digits (birthday search over ids)."""
    seen: dict[str, int] = {}
    for i in range(200_000):
        prefix = _expected_id("model", "m", None, files, {"i": i}, [], {})[:4]
        if prefix in seen:
            return {"i": seen[prefix]}, {"i": i}, prefix
        seen[prefix] = i
    raise AssertionError("no shared prefix found")


def test_user_errors_leave_catalog_unchanged(catalog: Catalog, tmp_path: Path) -> None:
    files = {"f": b"x"}
    src = _write_tree(tmp_path / "src", files)
    config_a, config_b, prefix = _ids_sharing_a_prefix(files)
    a = catalog.register(kind="model", name="m", files=src, config=config_a)
    b = catalog.register(kind="model", name="m", files=src, config=config_b)
    assert a.id[:4] == b.id[:4] == prefix
    before = catalog.list()
    blobs_before = _blob_files(catalog.root)

    with pytest.raises(UserError) as excinfo:
        catalog.get(prefix)
    _assert_user_error(excinfo, repr(prefix), "ambiguous", "2")
    assert catalog.resolve(a.id[:12]) == a.id

    for ref in ("foo", "0000dead", "m:7", "nosuch:1", "nosuch@latest", "0" * 64):
        with pytest.raises(UserError) as excinfo:
            catalog.get(ref)
        _assert_user_error(excinfo, repr(ref), "unknown")
    with pytest.raises(UserError) as excinfo:
        catalog.path("foo")
    _assert_user_error(excinfo, "unknown artifact reference 'foo': no id, prefix or name matches")

    new_file = _write_tree(tmp_path / "new", {"g": b"brand new bytes"})
    with pytest.raises(UserError) as excinfo:
        catalog.register(kind="model", name="m2", files=new_file, config={}, parents=[a.id, "ghost"])
    _assert_user_error(excinfo, "'ghost'")
    assert _blob_files(catalog.root) == blobs_before  # parents are checked before any blob is written
    with pytest.raises(UserError) as excinfo:
        catalog.register(kind="model", name="m2", config={},
                         files={"ok": new_file / "g", "missing.bin": tmp_path / "missing.bin"})
    _assert_user_error(excinfo, "missing.bin", "does not exist")
    with pytest.raises(UserError) as excinfo:
        catalog.register(kind="model", name="m2", files=tmp_path / "no-such-dir", config={})
    _assert_user_error(excinfo, "no-such-dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as excinfo:
        catalog.register(kind="model", name="m2", files=tmp_path / "empty", config={})
    _assert_user_error(excinfo, "empty", "no files")
    with pytest.raises(UserError) as excinfo:
        catalog.register(kind="model", name="m2", files={"../escape": new_file / "g"}, config={})
    _assert_user_error(excinfo, "'../escape'")
    with pytest.raises(UserError) as excinfo:
        catalog.register(kind="model", name="m2", files=new_file, config={"opt": {"betas": {0.9, 0.99}}})
    _assert_user_error(excinfo, "config['opt']['betas']", "set")
    with pytest.raises(UserError) as excinfo:
        catalog.register(kind="model", name="m2", files=new_file, config={}, metrics={"loss": float("nan")})
    _assert_user_error(excinfo, "metrics['loss']")
    with pytest.raises(UserError) as excinfo:
        catalog.register(kind="Model", name="m2", files=new_file, config={})
    _assert_user_error(excinfo, "'Model'")
    with pytest.raises(UserError) as excinfo:
        catalog.register(kind="model", name="bad:name", files=new_file, config={})
    _assert_user_error(excinfo, "'bad:name'")
    with pytest.raises(UserError) as excinfo:
        catalog.register(kind="dataset", name="m", files=new_file, config={})
    _assert_user_error(excinfo, "'m'", "'model'")

    assert catalog.list() == before
    # Only the last error (kind clash) is detected inside the transaction, after the new blob was stored;
    # every earlier one was caught before anything was written.
    assert len(_blob_files(catalog.root)) == len(blobs_before) + 1


# ---------------------------------------------------------------------- concurrency and crashes


def _register_many(root: str, src_root: str, worker: int, count: int, barrier: multiprocessing.synchronize.Barrier
                   ) -> None:
    catalog = Catalog(root)
    folders = []
    for i in range(count):
        folders.append(_write_tree(Path(src_root) / f"w{worker}-{i}",
                                   {"shared.txt": b"common to all", "own.txt": f"{worker}-{i}".encode()}))
    barrier.wait(timeout=60)
    for i, folder in enumerate(folders):
        catalog.register(kind="model", name="clip", files=folder, config={"worker": worker, "i": i})


def test_concurrent_registration_from_four_processes(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    Catalog(root)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_register_many, args=(str(root), str(tmp_path / "src"), w, 25, barrier))
             for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]

    catalog = Catalog(root)
    entries = catalog.list(name="clip")
    assert len(entries) == 100
    assert sorted(a.version for a in entries) == list(range(1, 101))
    assert [a.version for a in entries] == list(range(100, 0, -1))  # newest first == highest version first
    assert len({a.id for a in entries}) == 100
    assert catalog.resolve("clip@latest") == entries[0].id
    for art in entries:
        view = catalog.path(f"clip:{art.version}")
        own = f"{art.config['worker']}-{art.config['i']}".encode()
        assert (view / "own.txt").read_bytes() == own
        assert (view / "shared.txt").read_bytes() == b"common to all"
    assert len(_blob_files(root)) == 101


def _register_and_hang(root: str, src: str, hook: str, ready: str) -> None:
    """Child process: register, but stop at ``hook`` of the index and sleep until killed (`commit`: after the
    blobs are written, before the transaction; `_insert`: inside the transaction, rows inserted, before COMMIT)."""
    from vlforge.catalog import index, store

    real = getattr(index.Index, hook)

    def hanging(self, *args, **kwargs):
        if hook == "_insert":
            real(self, *args, **kwargs)
        Path(ready).touch()
        time.sleep(120)
        raise AssertionError("should have been killed")

    setattr(index.Index, hook, hanging)
    store.Catalog(root).register(kind="model", name="clip", files=Path(src), config={"lr": 1})


@pytest.mark.parametrize("hook", ["commit", "_insert"])
def test_sigkill_mid_registration_leaves_nothing_visible(tmp_path: Path, hook: str) -> None:
    root = tmp_path / "catalog"
    src = _write_tree(tmp_path / "src", {"w.bin": b"weights" * 1000})
    Catalog(root)
    ready = tmp_path / "ready"
    proc = multiprocessing.get_context("spawn").Process(target=_register_and_hang,
                                                        args=(str(root), str(src), hook, str(ready)))
    proc.start()
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.is_alive() and time.monotonic() < deadline, "child never reached the hook"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL

    catalog = Catalog(root)
    assert len(_blob_files(root)) == 1  # the blob was written before the kill: an orphan, harmless
    assert catalog.list() == []
    with pytest.raises(UserError):
        catalog.resolve("clip")
    started = time.monotonic()
    art = catalog.register(kind="model", name="clip", files=src, config={"lr": 1})
    assert time.monotonic() - started < 5  # the dead writer's lock is gone, no busy wait
    assert art.version == 1
    assert [a.id for a in catalog.list()] == [art.id]
    assert (catalog.path("clip@latest") / "w.bin").read_bytes() == b"weights" * 1000


# ---------------------------------------------------------------------- helpers


def test_detect_code_version(tmp_path: Path) -> None:
    assert detect_code_version(tmp_path) is None
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    try:
        subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    (tmp_path / "a.txt").write_text("a")
    subprocess.run([*git, "add", "a.txt"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, check=True, capture_output=True,
                          text=True).stdout.strip()
    assert detect_code_version(tmp_path) == head
    (tmp_path / "a.txt").write_text("changed")
    assert detect_code_version(tmp_path) == f"{head}+dirty"


def test_packages_snapshot() -> None:
    snapshot = packages_snapshot(["pydantic", "surely-not-an-installed-package-xyz"])
    assert list(snapshot) == ["pydantic"]
    import pydantic

    assert snapshot["pydantic"] == pydantic.VERSION
