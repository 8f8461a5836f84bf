"""Every catalog registration also shows in the Prefect UI: flows publish a table and a link artifact per entry
under a stable key (vlforge.flows.common.publish_catalog_entry), run here in a real flow on Prefect's ephemeral
server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from catalog_seed import seed_lineage
from vlforge.catalog import Catalog
from vlforge.flows.common import catalog_artifact_key

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = """
import json, sys
from vlforge.environment import configure_environment
configure_environment()  # Prefect's home under VLFORGE_HOME and a startup timeout fit for a busy machine
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from vlforge.flows.common import publish_catalog_entry

@flow(name="publish-test")
def publish(ids: list[str]) -> list[str]:
    return [publish_catalog_entry(i) for i in ids]

keys = publish(sys.argv[1:])
wanted = sorted(set(keys) | {k + "-page" for k in keys})
with get_client(sync_client=True) as client:
    found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=wanted)))
print(json.dumps({"keys": keys, "artifacts": [
    {"key": a.key, "type": a.type, "data": a.data, "description": a.description} for a in found]}))
"""


@pytest.mark.slow
def test_registrations_appear_as_prefect_artifacts(home: Path, tmp_path: Path) -> None:
    arts = seed_lineage(Catalog(home / "catalog"), tmp_path / "work")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "VLFORGE_HOME": str(home), "VLFORGE_CATALOG_URL": "http://127.0.0.1:9999/"}
    ids = [arts["model1"].id, arts["model"].id, arts["dataset"].id]
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *ids], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["keys"] == ["catalog-model-clip-shapes-mini", "catalog-model-clip-shapes-mini",
                              "catalog-dataset-shapes-mini"]
    assert catalog_artifact_key("model", "clip_Shapes.v2") == "catalog-model-clip-shapes-v2"
    by_key: dict[str, list[dict]] = {}
    for artifact in result["artifacts"]:
        by_key.setdefault(artifact["key"], []).append(artifact)
    tables = by_key["catalog-model-clip-shapes-mini"]
    assert len(tables) == 2 and {t["type"] for t in tables} == {"table"}  # one key, both versions in its history
    rows = json.loads(tables[0]["data"]) if isinstance(tables[0]["data"], str) else tables[0]["data"]
    fields = {row["field"]: row["value"] for row in rows}
    assert fields["id"] in (arts["model1"].id, arts["model"].id) and "metric i2t_r1" in fields
    links = by_key["catalog-model-clip-shapes-mini-page"]
    assert {link["type"] for link in links} == {"markdown"} or {link["type"] for link in links} == {"link"}
    assert any(f"http://127.0.0.1:9999/a/{arts['model'].id}" in str(link["data"]) for link in links)
    assert len(by_key["catalog-dataset-shapes-mini"]) == 1
