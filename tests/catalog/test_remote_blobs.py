"""The catalog's remote blob store (vlforge.catalog.remote) against a real S3-compatible server (moto's, on loopback):
registration uploads blobs before indexing, a machine that shares only the remote and a copy of the index gets
byte-identical files, a tampered or missing remote blob is caught, an unreachable endpoint or bad URL is one line,
and `vlforge catalog push` / `pull` do the same through the CLI."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from cli_harness import cli_json, run_cli
from moto_s3 import MotoS3, free_port, moto_s3_server
from vlforge.catalog import Catalog
from vlforge.catalog.maintenance import verify

from vlforge.errors import UserError

pytestmark = pytest.mark.timeout(300)

FILES = {
    "shards/00000.tar": os.urandom(3 * (1 << 20) + 17),  # several read chunks
    "shards/00001.tar": b"second shard",
    "manifest.json": b'{"samples": 2}',
    "README.md": b"# a dataset card\n",
    "copy-of-manifest.json": b'{"samples": 2}',  # same content: one blob
}


@pytest.fixture(scope="module")
def s3() -> MotoS3:
    with moto_s3_server() as server:
        yield server


@pytest.fixture
def bucket(s3: MotoS3, request: pytest.FixtureRequest) -> str:
    name = "vlf-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
    return s3.create_bucket(name)


def _tree(folder: Path, files: dict[str, bytes]) -> Path:
    for relpath, data in files.items():
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        (folder / relpath).write_bytes(data)
    return folder


def _register_pair(catalog: Catalog, work: Path) -> tuple:
    dataset = catalog.register(kind="dataset", name="shapes", files=_tree(work / "ds", FILES), config={"n": 2})
    weights = _tree(work / "m", {"w": b"weights" * 1000}) / "w"
    model = catalog.register(kind="model", name="clip-shapes", files={"model.safetensors": weights},
                             config={"lr": 1e-3}, parents=[dataset.id], family="clip")
    return dataset, model


def _second_machine(first: Catalog, root: Path, **remote: object) -> Catalog:
    """A catalog that shares nothing with ``first`` but the remote and a copy of its index."""
    first.backup_index(root / "index.sqlite")
    return Catalog(root, **remote)


def _one_line(excinfo: pytest.ExceptionInfo[UserError], *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_blobs_travel_through_s3_byte_identical(s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    remote = {"remote": f"s3://{bucket}/vlforge", "storage_options": s3.storage_options()}
    first = Catalog(tmp_path / "a", **remote)
    dataset, model = _register_pair(first, tmp_path / "work")

    shas = {entry.sha256 for art in (dataset, model) for entry in art.files}
    assert len(shas) == len(FILES)  # the two manifests share one blob; the model adds one
    assert s3.keys(bucket) == sorted(f"vlforge/sha256/{sha[:2]}/{sha}" for sha in shas)
    assert not s3.keys(bucket, "vlforge/tmp/"), "S3 PUTs are atomic: nothing goes through a scratch key"

    second = _second_machine(first, tmp_path / "b", **remote)
    assert not [p for p in (tmp_path / "b" / "blobs").rglob("*") if p.is_file()]
    assert verify(second).ok and verify(second).remote_only == len(shas)
    view = second.path("shapes")
    for relpath, data in FILES.items():
        assert (view / relpath).read_bytes() == data, relpath
    assert (second.path("clip-shapes") / "model.safetensors").read_bytes() == b"weights" * 1000
    assert second.get("clip-shapes").parents == [dataset.id]
    report = verify(second)
    assert report.ok and report.remote_only == 0 and report.files == len(shas)
    assert not list((tmp_path / "b" / "tmp").iterdir()), "no scratch file is left behind"

    # on the first machine too, a blob evicted from the local cache comes back from the remote
    evicted = next(e for e in model.files if e.path == "model.safetensors")
    blob = tmp_path / "a" / "blobs" / "sha256" / evicted.sha256[:2] / evicted.sha256
    blob.unlink()
    assert (first.path(model.id) / "model.safetensors").read_bytes() == b"weights" * 1000
    assert blob.is_file()

    # registering the same content again uploads nothing new and keeps one version
    again = first.register(kind="dataset", name="shapes", files=tmp_path / "work" / "ds", config={"n": 2})
    assert again.id == dataset.id and again.version == 1
    assert len(s3.keys(bucket)) == len(shas)


def test_tampered_remote_blob_is_caught(s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    remote = {"remote": f"s3://{bucket}/c", "storage_options": s3.storage_options()}
    first = Catalog(tmp_path / "a", **remote)
    dataset, _ = _register_pair(first, tmp_path / "work")
    entry = next(e for e in dataset.files if e.path == "shards/00001.tar")
    s3.client().put_object(Bucket=bucket, Key=f"c/sha256/{entry.sha256[:2]}/{entry.sha256}", Body=b"evil shard!!")

    second = _second_machine(first, tmp_path / "b", **remote)
    with pytest.raises(UserError) as excinfo:
        second.path("shapes")
    _one_line(excinfo, "shapes:1", dataset.short_id, "'shards/00001.tar'", "corrupt on the remote",
              f"s3://{bucket}/c/sha256/{entry.sha256[:2]}/{entry.sha256}")
    assert not (tmp_path / "b" / "blobs" / "sha256" / entry.sha256[:2] / entry.sha256).exists()
    assert not (tmp_path / "b" / "views" / dataset.id).exists()
    assert not list((tmp_path / "b" / "tmp").iterdir())

    s3.client().delete_object(Bucket=bucket, Key=f"c/sha256/{entry.sha256[:2]}/{entry.sha256}")
    with pytest.raises(UserError) as excinfo:
        second.pull("shapes")
    _one_line(excinfo, "shapes:1", "'shards/00001.tar'", "missing from the local catalog and from the remote")
    assert [p.status for p in verify(second).problems] == ["missing"]

    # the first machine still has it, and `push` restores the remote
    assert first.push(["shapes"])["uploaded"] == 1
    assert (second.path("shapes") / "shards/00001.tar").read_bytes() == FILES["shards/00001.tar"]


def test_unreachable_endpoint_and_bad_urls_are_one_line(s3: MotoS3, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    options = s3.storage_options(endpoint_url=dead, config_kwargs={"retries": {"max_attempts": 1}})
    catalog = Catalog(tmp_path / "a", remote="s3://vlf-bucket/p", storage_options=options)  # opening contacts nothing
    started = time.monotonic()
    with pytest.raises(UserError) as excinfo:
        catalog.register(kind="dataset", name="shapes", files=_tree(tmp_path / "ds", FILES), config={})
    _one_line(excinfo, "catalog remote 's3://vlf-bucket/p'", "Could not connect")
    assert time.monotonic() - started < 30
    assert catalog.list() == [], "nothing is registered before its blobs are on the remote"

    with pytest.raises(UserError) as excinfo:
        Catalog(tmp_path / "b", remote="s3://no-such-bucket-here/p", storage_options=s3.storage_options()).register(
            kind="dataset", name="shapes", files=tmp_path / "ds", config={})
    _one_line(excinfo, "catalog remote 's3://no-such-bucket-here/p'", "uploading blob")
    assert Catalog(tmp_path / "b").list() == []

    for url, fragment in (("nosuchscheme://bucket/p", "not usable"), ("s3://", "names no bucket")):
        with pytest.raises(UserError) as excinfo:
            Catalog(tmp_path / "c", remote=url)
        _one_line(excinfo, fragment)


def test_plain_folder_remote_writes_through_scratch(tmp_path: Path) -> None:
    """Any fsspec URL works; where writes are not atomic (a folder), blobs are moved into place whole."""
    shared = tmp_path / "shared"
    first = Catalog(tmp_path / "a", remote=f"file://{shared}")
    dataset, _ = _register_pair(first, tmp_path / "work")
    assert sorted(p.name for p in (shared / "sha256").rglob("*") if p.is_file()) == sorted(
        {e.sha256 for e in dataset.files} | {first.get("clip-shapes").files[0].sha256})
    assert not [p for p in (shared / "tmp").rglob("*") if p.is_file()]
    second = _second_machine(first, tmp_path / "b", remote=str(shared))
    assert (second.path(dataset.id) / "shards/00000.tar").read_bytes() == FILES["shards/00000.tar"]


def test_cli_push_and_pull(s3: MotoS3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home_a, home_b = tmp_path / "home-a", tmp_path / "home-b"
    local = Catalog(home_a / "catalog")  # registered before any remote was configured
    dataset, model = _register_pair(local, tmp_path / "work")

    proc = run_cli(["catalog", "push"], home_a, timeout=180)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines[-1].startswith("error: ") and "VLFORGE_CATALOG_REMOTE" in lines[-1], \
        proc.stderr

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VLFORGE_CATALOG_REMOTE", f"s3://{bucket}/team")
    pushed = cli_json(["catalog", "push", "clip-shapes"], home_a, timeout=180)
    assert pushed == {"artifacts": 1, "uploaded": 1, "present": 0, "bytes": 7000}
    pushed = cli_json(["catalog", "push"], home_a, timeout=180)
    assert pushed["artifacts"] == 2 and pushed["uploaded"] == len(FILES) - 1 and pushed["present"] == 1

    local.backup_index(home_b / "catalog" / "index.sqlite")
    pulled = cli_json(["catalog", "pull", "shapes", "clip-shapes"], home_b, timeout=180)
    assert [(p["id"], p["fetched"]) for p in pulled] == [(dataset.id, len(FILES) - 1), (model.id, 1)]
    for relpath, data in FILES.items():
        assert (Path(pulled[0]["path"]) / relpath).read_bytes() == data
    assert cli_json(["catalog", "verify"], home_b, timeout=180)["ok"] is True

    monkeypatch.setenv("VLFORGE_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    local.backup_index(tmp_path / "home-c" / "catalog" / "index.sqlite")
    proc = run_cli(["catalog", "pull", "clip-shapes"], tmp_path / "home-c", timeout=180)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith(f"error: catalog remote 's3://{bucket}/team'") and "Could not connect" in lines[-1], \
        proc.stderr
