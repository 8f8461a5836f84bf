"""The catalog's SQLite index on its own (vlforge.catalog.index): all-or-nothing registration with versions and
``latest``, the blob-presence check under the write lock, reference resolution, lineage, the stat cache, backup."""
from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from pathlib import Path

import pytest
from vlforge.catalog.blobs import SourceFile
from vlforge.catalog.index import Index, Registration

from vlforge.errors import UserError


def _reg(name: str, salt: str, *, kind: str = "model", parents: tuple[str, ...] = (), files: int = 1,
         cache_key: str | None = None) -> Registration:
    sources = tuple(SourceFile(relpath=f"f{n}.bin", source=Path("/nonexistent"),
                               sha256=hashlib.sha256(f"{salt}-{n}".encode()).hexdigest(), size=n + 1)
                    for n in range(files))
    return Registration(id=hashlib.sha256(f"{name}/{salt}".encode()).hexdigest(), kind=kind, name=name, family=None,
                        files=sources, config_json='{"salt":"%s"}' % salt, metrics_json='{"r1":0.5}',
                        parents=parents, cache_key=cache_key, code_version=None, packages_json="{}")


def _present(_sha256: str) -> bool:
    return True


def test_commit_numbers_versions_moves_latest_and_is_idempotent(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    first, second = _reg("clip", "a", files=2), _reg("clip", "b", cache_key="k1")
    assert index.commit(first, [], _present) == [] and index.commit(second, [], _present) == []
    assert [(a.version, a.id) for a in index.list(name="clip")] == [(2, second.id), (1, first.id)]
    assert index.resolve("clip") == index.resolve("clip@latest") == second.id
    assert [f.path for f in index.get("clip:1").files] == ["f0.bin", "f1.bin"]
    again = _reg("clip", "a", cache_key="k2")  # same content under a new cache key: no new version
    assert index.commit(again, [], _present) == []
    assert len(index.list()) == 2 and index.find_by_cache_key("k2").id == first.id
    assert index.find_by_cache_key("k1").id == second.id and index.find_by_cache_key("nope") is None


def test_commit_with_a_missing_blob_inserts_nothing(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    pending = _reg("clip", "a", files=3)
    absent = pending.files[1].sha256
    assert index.commit(pending, [], lambda sha256: sha256 != absent) == [pending.files[1]]
    assert index.list() == [] and not index.exists(pending.id)


def test_commit_refuses_a_name_of_another_kind_and_unknown_parents(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    index.commit(_reg("shapes", "a", kind="dataset"), [], _present)
    with pytest.raises(UserError, match="the name is already used by kind 'dataset'"):
        index.commit(_reg("shapes", "b"), [], _present)
    with pytest.raises(UserError, match="parent '0+' is not in the catalog"):
        index.commit(_reg("clip", "a", parents=("0" * 64,)), [], _present)
    assert [a.name for a in index.list()] == ["shapes"]


def test_references_resolve_in_every_form(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    regs = [_reg("clip", str(n)) for n in range(40)]
    for reg in regs:
        index.commit(reg, [], _present)
    target = regs[3].id
    assert index.resolve(target) == index.resolve(target[:10]) == index.resolve("clip:4") == target
    index.set_alias("clip", "production", "clip:4")
    assert index.resolve("clip@production") == target and "production" in index.get(target).aliases
    twins = [dataclasses.replace(_reg("twin", str(n)), id="abcd" + f"{n:060x}") for n in range(2)]
    for reg in twins:
        index.commit(reg, [], _present)
    with pytest.raises(UserError, match="the prefix matches 2 ids; give more digits"):
        index.resolve("abcd")
    assert index.resolve("abcd" + "0" * 59 + "1") == twins[1].id
    with pytest.raises(UserError, match="name 'clip' has no version 99"):
        index.resolve("clip:99")
    with pytest.raises(UserError, match="has no alias 'staging'"):
        index.resolve("clip@staging")
    assert index.remove_alias("clip", "production") == target
    with pytest.raises(UserError, match="'latest' is managed by the catalog"):
        index.remove_alias("clip", "latest")


def test_lineage_walks_both_ways_nearest_first(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    data, tok = _reg("data", "d", kind="dataset"), _reg("tok", "t", kind="tokenizer")
    index.commit(data, [], _present)
    index.commit(tok, [], _present)
    model = _reg("model", "m", parents=(data.id, tok.id))
    index.commit(model, [], _present)
    report = _reg("eval", "e", kind="eval", parents=(model.id, data.id))
    index.commit(report, [], _present)
    assert [a.name for a in index.ancestors("eval")] == ["model", "data", "tok"]
    assert [a.name for a in index.descendants("data")] == ["model", "eval"]
    tree = index.lineage_tree("eval")
    assert [child["artifact"].name for child in tree["parents"]] == ["model", "data"]
    assert [child["artifact"].name for child in index.descendants_tree("data")["children"]] == ["model", "eval"]


def test_file_checks_round_trip_past_the_statement_chunk(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    rows = [(f"blobs/sha256/{n:04d}", f"{n:064x}", n, n * 10, n * 100) for n in range(1200)]
    index.record_checks(rows)
    known = index.file_checks([row[0] for row in rows] + ["blobs/sha256/absent"])
    assert len(known) == 1200 and known["blobs/sha256/0999"] == (f"{999:064x}", 999, 9990, 99900)
    index.record_checks([("blobs/sha256/0999", "f" * 64, 1, 2, 3)])  # a newer sighting replaces the row
    assert index.file_checks(["blobs/sha256/0999"]) == {"blobs/sha256/0999": ("f" * 64, 1, 2, 3)}


def test_backup_is_a_consistent_readable_copy_in_wal_mode(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    index.commit(_reg("clip", "a"), [], _present)
    with sqlite3.connect(tmp_path / "index.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    copy = Index(index.backup(tmp_path / "elsewhere" / "copy.sqlite"))
    assert [a.id for a in copy.list()] == [a.id for a in index.list()]
