"""infra/compose/compose.yaml, checked without a Docker engine (CI has none): it parses, builds the repository's
Dockerfile, runs commands that exist, names the settings vlforge reads, shares the data volume between every
node that reads shards, matches prefect.yaml's work pool, and publishes nothing beyond loopback."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "infra" / "compose" / "compose.yaml"


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def command_of(service: dict) -> str:
    parts = service.get("entrypoint") or []
    return " ".join(parts if isinstance(parts, list) else [parts]) + " " + " ".join(service.get("command") or [])


def test_compose_builds_the_repository_image_and_has_the_stack() -> None:
    services = load()["services"]
    assert {"minio", "minio-init", "prefect-server", "prefect-worker", "ray-head", "ray-worker"} <= set(services)
    for name in ("prefect-server", "prefect-worker", "ray-head", "ray-worker"):
        build = services[name]["build"]
        dockerfile = (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile == REPO / "infra" / "docker" / "Dockerfile", name
    assert services["ray-worker"]["deploy"]["replicas"] >= 2
    assert "--address=ray-head:6379" in command_of(services["ray-worker"])
    assert "--head" in command_of(services["ray-head"]) and "--port=6379" in command_of(services["ray-head"])


def test_settings_named_are_the_ones_vlforge_reads() -> None:
    services = load()["services"]
    sources = "\n".join(p.read_text() for p in [*REPO.joinpath("vlforge").glob("*.py"), *REPO.joinpath("components").rglob("*.py"),
                                                 *REPO.joinpath("catalog").glob("*.py")])
    env = services["prefect-worker"]["environment"]
    prefect_yaml = (REPO / "prefect.yaml").read_text()
    for key in env:
        if key.startswith("VLFORGE_"):
            read = f'"{key}"' in sources or f"{{{{ ${key} }}}}" in prefect_yaml
            assert read, f"{key} is set in compose.yaml but neither vlforge nor prefect.yaml reads it"
    assert env["VLFORGE_RAY_ADDRESS"] == "ray-head:6379"
    assert env["VLFORGE_CATALOG_REMOTE"].startswith("s3://") and env["VLFORGE_RAY_STORAGE"].startswith("s3://")
    bucket = env["VLFORGE_CATALOG_REMOTE"][len("s3://"):].split("/")[0]
    assert f"store/{bucket}" in command_of(services["minio-init"])  # the bucket the init job creates
    assert env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]


def test_every_shard_reader_mounts_the_data_volume_at_vlforge_home() -> None:
    services = load()["services"]
    for name in ("ray-head", "ray-worker", "prefect-worker"):
        home = services[name]["environment"]["VLFORGE_HOME"]
        assert f"vlforge-data:{home}" in services[name]["volumes"], name


def test_work_pool_and_deployments_match_prefect_yaml() -> None:
    worker = command_of(load()["services"]["prefect-worker"])
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert len(pools) == 1
    pool = pools.pop()
    assert f"work-pool create {pool}" in worker and f"worker start --pool {pool}" in worker
    assert "deploy --all" in worker
    dockerfile = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^COPY .*prefect\.yaml", dockerfile, flags=re.M), "the image lacks prefect.yaml"
    assert load()["services"]["prefect-worker"]["working_dir"] == "/opt/vlforge"
    assert "WORKDIR /opt/vlforge" in dockerfile


def test_ports_are_published_on_loopback_only() -> None:
    for name, service in load()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
