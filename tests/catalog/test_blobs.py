"""The content-addressed blob store on its own (vlforge.catalog.blobs): atomic read-only writes through one path,
fetches from a remote (a real fsspec folder) checked against their hash, uploads, the stat-cache check, and views."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from vlforge.catalog.blobs import BlobStore, SourceFile, hash_file, is_pickle, scratch_owner
from vlforge.catalog.remote import RemoteBlobStore

from vlforge.errors import UserError


def _source(tmp_path: Path, name: str, data: bytes) -> SourceFile:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return SourceFile(relpath=name, source=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def test_store_writes_a_read_only_blob_once_and_leaves_no_scratch(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "cat")
    src = _source(tmp_path, "w.bin", b"weights" * 100)
    row = blobs.store(src, "model 'm'")
    final = blobs.path(src.sha256)
    assert final == tmp_path / "cat" / "blobs" / "sha256" / src.sha256[:2] / src.sha256
    assert final.read_bytes() == b"weights" * 100 and stat.S_IMODE(final.stat().st_mode) == 0o444
    st = final.stat()
    assert row == (f"blobs/sha256/{src.sha256[:2]}/{src.sha256}", src.sha256, 700, st.st_mtime_ns, st.st_ino)
    assert blobs.store(src, "model 'm'") is None  # already there: nothing written
    assert blobs.has(src.sha256) and blobs.stored() == [final] and blobs.scratch() == []


def test_a_source_that_changed_since_it_was_hashed_never_becomes_a_blob(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "cat")
    src = _source(tmp_path, "w.bin", b"before")
    src.source.write_bytes(b"after!")  # same size, other bytes
    with pytest.raises(UserError, match="changed while it was being registered"):
        blobs.store(src, "model 'm'")
    assert not blobs.has(src.sha256) and blobs.scratch() == []


def test_fetch_checks_the_remote_copy_before_it_enters_the_cache(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    remote = RemoteBlobStore(f"file://{shared}")
    first = BlobStore(tmp_path / "a", remote)
    good, bad = _source(tmp_path, "good.bin", b"good bytes"), _source(tmp_path, "bad.bin", b"bad bytes!")
    rows = first.upload_sources([good, bad, good], "model 'm'", verified=set())
    assert len(rows) == 2 and first.remote_lacks({good.sha256: good.size, bad.sha256: bad.size}) == []
    assert first.remote_lacks({good.sha256: good.size + 1}) == [good.sha256]  # wrong size counts as absent
    corrupt = shared / "sha256" / bad.sha256[:2] / bad.sha256
    os.chmod(corrupt, 0o644)
    corrupt.write_bytes(b"tampered!!")

    second = BlobStore(tmp_path / "b", remote)
    fetched, size = second.fetch_missing([("good.bin", good.sha256, good.size)], "artifact m:1 (abc)")
    assert size == good.size and second.path(good.sha256).read_bytes() == b"good bytes"
    assert fetched == [second.check_row(second.path(good.sha256), good.sha256)]
    assert second.fetch_missing([("good.bin", good.sha256, good.size)], "artifact m:1 (abc)") == ([], 0)
    with pytest.raises(UserError, match=r"artifact m:1 \(abc\) is corrupt on the remote: file 'bad.bin'"):
        second.fetch(bad.sha256, "bad.bin", "artifact m:1 (abc)")
    with pytest.raises(UserError, match="is missing from the local catalog and from the remote"):
        second.fetch("0" * 64, "gone.bin", "artifact m:1 (abc)")
    assert not second.has(bad.sha256) and second.scratch() == []


def test_upload_refuses_a_local_blob_that_was_changed(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "a", RemoteBlobStore(f"file://{tmp_path / 'shared'}"))
    src = _source(tmp_path, "w.bin", b"original")
    blobs.store(src, "model 'm'")
    blob = blobs.path(src.sha256)
    os.chmod(blob, 0o644)
    blob.write_bytes(b"altered!")
    with pytest.raises(UserError, match="the catalog's copy of 'w.bin'.* is corrupt"):
        blobs.upload_sources([src], "model 'm'", verified=set())
    assert blobs.remote_lacks({src.sha256: src.size}) == [src.sha256]


def test_check_trusts_the_stat_cache_and_rehashes_anything_else(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "cat")
    src = _source(tmp_path, "w.bin", b"weights")
    row = blobs.store(src, "m")
    blob = blobs.path(src.sha256)
    known = {row[0]: row[1:]}
    assert blobs.check([("w.bin", src.sha256, blob)], known, "artifact m:1") == []  # trusted, not read
    assert blobs.check([("w.bin", src.sha256, blob)], {}, "artifact m:1") == [row]  # re-hashed, intact
    os.chmod(blob, 0o644)
    blob.write_bytes(b"WEIGHTS")
    with pytest.raises(UserError, match=r"artifact m:1 is corrupt: file 'w.bin' has sha256"):
        blobs.check([("w.bin", src.sha256, blob)], known, "artifact m:1")
    blob.unlink()
    with pytest.raises(UserError, match=r"artifact m:1 is damaged: file 'w.bin' is missing"):
        blobs.check([("w.bin", src.sha256, blob)], known, "artifact m:1")


def test_view_is_hard_links_to_the_blobs_read_only(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "cat")
    a, b = _source(tmp_path, "a.txt", b"alpha"), _source(tmp_path, "b.txt", b"beta")
    for src in (a, b):
        blobs.store(src, "m")
    files = [("a.txt", a.sha256), ("sub/b.txt", b.sha256), ("sub/again.txt", a.sha256)]
    view = blobs.build_view("f" * 64, files)
    assert view == blobs.view("f" * 64) and (view / "sub" / "b.txt").read_text() == "beta"
    assert os.path.samefile(view / "sub" / "again.txt", blobs.path(a.sha256))
    assert stat.S_IMODE((view / "sub").stat().st_mode) == 0o555
    assert [path for _rel, _sha, path in blobs.view_files("f" * 64, files)] == [
        blobs.path(a.sha256), blobs.path(b.sha256), blobs.path(a.sha256)]  # links stand for their blobs
    assert blobs.build_view("f" * 64, files) == view  # a second builder finds it done and leaves no scratch
    assert blobs.scratch() == []


def test_helpers(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"\x80\x04K\x01.")  # pickle.dumps(1, protocol=4)
    assert is_pickle(path) and hash_file(path) == (hashlib.sha256(b"\x80\x04K\x01.").hexdigest(), 5)
    path.write_bytes(b"safetensors")
    assert not is_pickle(path)
    host, _, pid = scratch_owner().rpartition(".")
    assert pid == str(os.getpid()) and "-" not in host
