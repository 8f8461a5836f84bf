"""Checks on infra/: every manifest parses and carries the fields KubeRay needs; every `vlforge ...` command that
infra/ names (RayJob entrypoints, the pipeline config they point at, the README, the Dockerfile, the scripts) uses
subcommands and options the CLI has; the Dockerfile installs the project as the Makefile does; the local-cluster
script parses and its no-cluster paths work. No Kubernetes or Docker here: the manifests are checked as data.
The slow test starts the two-node loopback Ray cluster for real and stops it."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer
import yaml
from vlforge.components.pipeline_config import load_pipeline_config

from vlforge.cli import app
from ray_cluster import cluster_env, two_node_cluster

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
CLUSTER_SH = INFRA / "ray" / "local-cluster.sh"
README = INFRA / "README.md"
VENV_BIN = Path(sys.executable).parent
VLFORGE = VENV_BIN / "vlforge"


# --------------------------------------------------------------------------------------------------- helpers
def _yaml_files() -> list[Path]:
    """The Kubernetes manifests (the compose file has its own tests: tests/infra/test_compose.py)."""
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file() and "compose" not in p.parts)


def _docs() -> list[tuple[Path, dict]]:
    out = []
    for path in _yaml_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


def _of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in _docs() if d.get("kind") == kind]


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", DOCKERFILE.read_text(), flags=re.M))


def _pods(spec: dict) -> list[tuple[str, dict]]:
    """(name, pod spec) of the head and every worker group of a RayCluster spec."""
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return pods


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _volume_at(pod: dict, container: dict, path: str) -> tuple[dict, PurePosixPath] | None:
    """The pod volume mounted at (a parent of) ``path`` in ``container`` and the path relative to the mount."""
    target = PurePosixPath(path)
    best = None
    for mount in container.get("volumeMounts", []):
        mp = PurePosixPath(mount["mountPath"])
        if (target == mp or mp in target.parents) and (best is None or len(mp.parts) > len(best[1].parts)):
            best = (mount, mp)
    if best is None:
        return None
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    assert best[0]["name"] in volumes, f"volumeMount '{best[0]['name']}' has no volume"
    return volumes[best[0]["name"]], target.relative_to(best[1])


# ------------------------------------------------------------------------------------------ vlforge commands
_SHELL_OPERATOR = set("();<>|&")


def _shell_words(fragment: str) -> list[str]:
    """The words of the first simple command in ``fragment``: shell-quoted, cut at an operator or redirection
    (and at a quote that never closes, as in `"vlforge run ..."` inside a YAML or JSON string)."""
    candidate = fragment
    while True:
        lexer = shlex.shlex(candidate, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:
            cut = max(candidate.rfind('"'), candidate.rfind("'"))
            assert cut > 0, f"cannot parse {fragment!r}"
            candidate = candidate[:cut]
            continue
        words: list[str] = []
        for token in tokens:
            if set(token) <= _SHELL_OPERATOR:
                if token[0] in "<>" and words and words[-1].isdigit():  # the 2 of 2>/dev/null
                    words.pop()
                break
            words.append(token)
        return words


def _commands_in_text(text: str) -> list[str]:
    """`vlforge <top-level command> ...` occurrences, to a backtick or the line's end (backslash continuations
    joined), as the shell would split them. Only the CLI's own top-level names count, so prose about vlforge
    does not."""
    names = "|".join(map(re.escape, sorted(typer.main.get_command(app).commands)))
    text = re.sub(r"\\\n\s*#?\s*", " ", text)
    return [shlex.join(_shell_words(m.group(0)))
            for m in re.finditer(rf"(?<![\w.-])vlforge\s+(?:{names}|--help)(?=[ \t]|$)[^`\n]*", text, flags=re.M)]


def _entrypoint_commands(entrypoint: str) -> list[str]:
    cmds = []
    for part in re.split(r"&&|\|\||;|\|", entrypoint):
        tokens = shlex.split(part)
        while tokens and re.fullmatch(r"\w+=.*", tokens[0]):  # VAR=value prefixes
            tokens.pop(0)
        if tokens and Path(tokens[0]).name == "vlforge":
            cmds.append(shlex.join(["vlforge", *tokens[1:]]))
    return cmds


def _all_commands() -> dict[str, list[str]]:
    """Every vlforge command infra/ names, by where it is named."""
    found: dict[str, list[str]] = {}
    for path, doc in _of_kind("RayJob"):
        for cmd in _entrypoint_commands(doc["spec"]["entrypoint"]):
            found.setdefault(cmd, []).append(f"{path.relative_to(ROOT)} entrypoint")
    for path in [README, CLUSTER_SH, *_yaml_files(), DOCKERFILE]:
        for cmd in _commands_in_text(path.read_text()):
            found.setdefault(cmd, []).append(str(path.relative_to(ROOT)))
    entry = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILE.read_text(), flags=re.M).group(1))
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", DOCKERFILE.read_text(), flags=re.M)
    if Path(entry[0]).name == "vlforge":
        argv = ["vlforge", *entry[1:], *(json.loads(cmd.group(1)) if cmd else [])]
        found.setdefault(shlex.join(argv), []).append("infra/docker/Dockerfile ENTRYPOINT + CMD")
    return found


def _is_group(cmd: Any) -> bool:
    # typer vendors its own click, so duck-type rather than isinstance(click.Group)
    return isinstance(getattr(cmd, "commands", None), dict)


def _resolve(argv: list[str]) -> tuple[list[str], Any, list[str]]:
    """Split ``vlforge a b --opt x`` into the subcommand path, its (click) command and the remaining arguments."""
    cmd = typer.main.get_command(app)
    path: list[str] = []
    rest = argv[1:]
    while _is_group(cmd) and rest and not rest[0].startswith("-"):
        sub = cmd.commands.get(rest[0])
        assert sub is not None, f"`vlforge {' '.join(path)}` has no subcommand '{rest[0]}'"
        path.append(rest.pop(0))
        cmd = sub
    return path, cmd, rest


@lru_cache(maxsize=None)
def _help(path: tuple[str, ...]) -> str:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run([str(VLFORGE), *path, "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, f"`vlforge {' '.join(path)} --help` exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def _check_command(command: str) -> None:
    argv = shlex.split(command)
    path, cmd, rest = _resolve(argv)
    help_text = _help(tuple(path))
    if rest == ["--help"] or (_is_group(cmd) and not rest):  # `vlforge run` names the group
        return
    assert not _is_group(cmd), f"`{command}` stops at a command group"
    options = {name: p for p in cmd.params if p.param_type_name == "option" for name in p.opts}
    positionals = []
    i = 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", help_text), \
                f"`{command}`: option {name} is not in `vlforge {' '.join(path)} --help`"
            assert name in options, f"`{command}`: {name} is not an option of `vlforge {' '.join(path)}`"
            if not options[name].is_flag and "=" not in token:
                assert i + 1 < len(rest), f"`{command}`: {name} needs a value"
                i += 1
        else:
            positionals.append(token)
        i += 1
    arity = sum(p.nargs if p.nargs > 0 else 10**6 for p in cmd.params if p.param_type_name == "argument")
    assert len(positionals) <= arity, f"`{command}`: unexpected arguments {positionals}"


# ------------------------------------------------------------------------------------------------- YAML
def test_every_yaml_under_infra_parses_into_kubernetes_objects():
    files = _yaml_files()
    assert {p.name for p in files} >= {"raycluster.yaml", "rayjob-train.yaml", "shared.yaml"}, files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} holds no document"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
            for key in ("apiVersion", "kind"):
                assert isinstance(doc.get(key), str) and doc[key], f"{path}: document without {key}"
            assert isinstance(doc.get("metadata", {}).get("name"), str), f"{path}: {doc['kind']} without metadata.name"
    names = [(d["kind"], d["metadata"]["name"]) for _, d in _docs()]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


def _check_cluster_spec(spec: dict, where: str) -> None:
    def check_params(params: Any, group: str) -> None:
        assert isinstance(params, dict), f"{where}: {group}.rayStartParams is missing or not a mapping"
        # KubeRay's CRD types rayStartParams as map[string]string: `num-cpus: 0` is rejected
        bad = {k: v for k, v in params.items() if not isinstance(v, str)}
        assert not bad, f"{where}: {group}.rayStartParams values must be strings: {bad}"

    head = spec["headGroupSpec"]
    check_params(head.get("rayStartParams"), "headGroupSpec")
    head_containers = head["template"]["spec"]["containers"]
    assert head_containers and isinstance(head_containers[0].get("image"), str) and head_containers[0]["image"], \
        f"{where}: head containers[0].image"
    groups = spec["workerGroupSpecs"]
    assert isinstance(groups, list) and groups, f"{where}: no workerGroupSpecs"
    assert len({g["groupName"] for g in groups}) == len(groups), f"{where}: groupName repeated"
    for g in groups:
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(g.get(key), int) and not isinstance(g[key], bool), f"{where}: {g.get('groupName')}.{key}"
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{where}: {g['groupName']} replica bounds"
        check_params(g.get("rayStartParams"), g["groupName"])
        containers = g["template"]["spec"]["containers"]
        assert containers and containers[0].get("image"), f"{where}: {g['groupName']} containers[0].image"

    assert spec.get("rayVersion") == _dockerfile_args().get("RAY_VERSION"), \
        f"{where}: rayVersion {spec.get('rayVersion')} != the Dockerfile's RAY_VERSION"

    pvcs = {d["metadata"]["name"]: d for _, d in _of_kind("PersistentVolumeClaim")}
    for name, pod in _pods(spec):
        container = pod["containers"][0]
        for section in ("requests", "limits"):
            res = container.get("resources", {}).get(section, {})
            assert "cpu" in res and "memory" in res, f"{where}: {name} has no cpu/memory {section}"
        env = _env(container)
        assert env.get("HF_HUB_OFFLINE") == "1", f"{where}: {name} without HF_HUB_OFFLINE=1"
        home = env.get("VLFORGE_HOME")
        assert home, f"{where}: {name} without VLFORGE_HOME"
        mounted = _volume_at(pod, container, home)
        assert mounted is not None and mounted[1] == PurePosixPath("."), \
            f"{where}: {name}: nothing is mounted at VLFORGE_HOME={home}"
        claim = mounted[0].get("persistentVolumeClaim", {}).get("claimName")
        assert claim in pvcs, f"{where}: {name}: VLFORGE_HOME is not a PVC defined under infra/k8s ({claim})"
        assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"], f"PVC {claim} is not ReadWriteMany"
        config_maps = {d["metadata"]["name"] for _, d in _of_kind("ConfigMap")}
        for vol in pod.get("volumes", []):
            if "configMap" in vol:
                assert vol["configMap"]["name"] in config_maps, f"{where}: {name}: unknown ConfigMap {vol['configMap']}"


def test_raycluster_has_what_kuberay_requires():
    clusters = _of_kind("RayCluster")
    assert len(clusters) == 1, clusters
    path, doc = clusters[0]
    assert doc["apiVersion"] == "ray.io/v1"
    _check_cluster_spec(doc["spec"], str(path.relative_to(ROOT)))


def test_rayjob_has_entrypoint_and_the_same_cluster_spec():
    jobs = _of_kind("RayJob")
    assert jobs, "no RayJob under infra/"
    (_, cluster), = _of_kind("RayCluster")
    for path, doc in jobs:
        where = str(path.relative_to(ROOT))
        spec = doc["spec"]
        assert doc["apiVersion"] == "ray.io/v1"
        assert isinstance(spec.get("entrypoint"), str) and spec["entrypoint"].strip(), f"{where}: no entrypoint"
        assert _entrypoint_commands(spec["entrypoint"]), f"{where}: the entrypoint runs no vlforge command"
        assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: shutdownAfterJobFinishes is not true"
        _check_cluster_spec(spec["rayClusterSpec"], where)
        assert spec["rayClusterSpec"] == cluster["spec"], f"{where}: rayClusterSpec differs from the RayCluster's spec"


def test_rayjob_config_files_exist_in_the_head_pod_and_are_valid_pipeline_configs(tmp_path):
    config_maps = {d["metadata"]["name"]: d for _, d in _of_kind("ConfigMap")}
    checked = 0
    for path, doc in _of_kind("RayJob"):
        pod = doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        for command in _entrypoint_commands(doc["spec"]["entrypoint"]):
            argv = shlex.split(command)
            for i, token in enumerate(argv):
                if token.split("=", 1)[0] != "--config":
                    continue
                config_path = token.split("=", 1)[1] if "=" in token else argv[i + 1]
                mounted = _volume_at(pod, pod["containers"][0], config_path)
                assert mounted is not None, f"{path.name}: nothing in the head pod is mounted at {config_path}"
                volume, rel = mounted
                assert "configMap" in volume, f"{path.name}: {config_path} is not from a ConfigMap; cannot check it"
                data = config_maps[volume["configMap"]["name"]]["data"]
                assert str(rel) in data, f"{path.name}: ConfigMap {volume['configMap']['name']} has no key {rel}"
                local = tmp_path / str(rel)
                local.write_text(data[str(rel)])
                cfg = load_pipeline_config(local)
                assert cfg.train.ray_address == "auto", "the job's pipeline should train on the job's Ray cluster"
                checked += 1
    assert checked or not any("run pipeline" in c for c in _all_commands()), "no pipeline config checked"


# -------------------------------------------------------------------------------------- vlforge commands
def test_every_vlforge_command_in_infra_exists_with_its_options():
    commands = _all_commands()
    assert any("entrypoint" in w for where in commands.values() for w in where), "no RayJob entrypoint found"
    assert any("README" in w for where in commands.values() for w in where), "the README names no vlforge command"
    assert VLFORGE.is_file(), f"no vlforge executable at {VLFORGE}"
    for command, where in sorted(commands.items()):
        try:
            _check_command(command)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n  (named in {', '.join(sorted(set(where)))})") from None


def test_the_command_checker_rejects_what_does_not_exist():
    with pytest.raises(AssertionError, match="no subcommand"):
        _check_command("vlforge run trian --family clip")
    with pytest.raises(AssertionError, match="--ray-adress"):
        _check_command("vlforge run train --family clip --data shapes --ray-adress auto")
    with pytest.raises(AssertionError, match="unexpected arguments"):
        _check_command("vlforge run train --family clip --data shapes extra")
    with pytest.raises(AssertionError, match="command group"):
        _check_command("vlforge run --json")
    assert _commands_in_text("run `vlforge run train --family clip` here; a vlforge run's log") == [
        "vlforge run train --family clip"]
    assert _commands_in_text('x: "vlforge run ingest --source \'a b\' --name s 2>/dev/null && echo"') == [
        "vlforge run ingest --source 'a b' --name s"]
    assert _commands_in_text("#   vlforge run train \\\n#     --data shapes # note") == [
        "vlforge run train --data shapes"]


# -------------------------------------------------------------------------------------------- Dockerfile
def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_installs_like_the_makefile_and_runs_vlforge():
    ins = _instructions()
    assert ins[0] == ("FROM", "python:3.11-slim"), ins[0]
    entry = [json.loads(rest) for word, rest in ins if word == "ENTRYPOINT"]
    assert entry and Path(entry[-1][0]).name == "vlforge", f"ENTRYPOINT {entry}"

    copied = set()
    for word, rest in ins:
        if word == "COPY":
            copied.update(s.rstrip("/") for s in shlex.split(rest)[:-1] if not s.startswith("--"))
    mapped = re.search(r"MAPPED\s*=\s*\(([^)]*)\)", (ROOT / "setup.py").read_text())
    assert mapped, "setup.py no longer declares MAPPED; update this test"
    packages = {"vlforge", *re.findall(r"[\"'](\w+)[\"']", mapped.group(1))}
    assert {"pyproject.toml", "setup.py"} <= copied, f"COPY {copied}"
    assert packages <= copied, f"the Dockerfile does not COPY {packages - copied}"

    runs = [rest for word, rest in ins if word == "RUN"]
    env = " ".join(rest for word, rest in ins if word == "ENV")
    assert re.search(r"\bHF_HUB_OFFLINE=1\b", env), "HF_HUB_OFFLINE=1 is not set"

    def first(pattern: str) -> int:
        hits = [i for i, r in enumerate(runs) if re.search(pattern, r)]
        assert hits, f"no RUN matches {pattern}"
        return hits[0]

    torch_at = first(r"pip install \"?torch==")
    project_at = first(r"pip install (-e )?\.(\s|$)")
    dataclasses_at = first(r"pip uninstall -y dataclasses")
    assert torch_at < project_at < dataclasses_at, "install order: torch pin, the project, then drop dataclasses"

    makefile = (ROOT / "Makefile").read_text()
    pin = re.search(r"TORCH_SPEC\s*\?=\s*torch==(\S+)", makefile)
    assert pin, "Makefile no longer pins TORCH_SPEC; update this test"
    assert _dockerfile_args().get("TORCH_VERSION") == pin.group(1), \
        "the Dockerfile's torch pin differs from the Makefile's"


# ------------------------------------------------------------------------------------- local-cluster.sh


def test_local_cluster_script_parses_and_handles_no_cluster():
    bash = shutil.which("bash")
    assert bash, "bash is needed for infra/ray/local-cluster.sh"
    proc = subprocess.run([bash, "-n", str(CLUSTER_SH)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    text = CLUSTER_SH.read_text()
    assert "set -euo pipefail" in text and "RAY_AUTH_MODE=disabled" in text
    # `ray stop` ends every Ray process on the machine, not just this cluster's
    assert not re.search(r"^\s*[^#\n]*\bray\"?\s+stop\b", text, flags=re.M | re.I), "the script runs `ray stop`"

    tmp_dir = tempfile.mkdtemp(prefix="vlft", dir="/tmp")
    try:
        env = cluster_env(tmp_dir)

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([bash, str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=30, env=env)

        usage = run()
        assert usage.returncode == 2 and "usage" in usage.stderr
        status = run("status")
        assert status.returncode == 1 and "not running" in status.stderr, status
        stop = run("stop")
        assert stop.returncode == 0 and "nothing running" in stop.stdout, stop
        assert run("address").stdout.strip() == "127.0.0.2:6390"
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.timeout(240)
def test_local_cluster_starts_two_nodes_and_stops():
    with two_node_cluster() as cluster:
        status = cluster.script("status", timeout=60)
        assert status.returncode == 0, status.stderr[-3000:]
        active = status.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
        assert len(re.findall(r"^\s*1 node_", active, flags=re.M)) == 2, status.stdout

        # what `vlforge run train --ray-address 127.0.0.2:PORT` does: a driver on this machine joins both nodes
        probe = (f"import ray; ray.init(address='{cluster.address}', logging_level='ERROR'); "
                 "print(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))")
        joined = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=90,
                                env={**cluster.env, "RAY_AUTH_MODE": "disabled"})
        assert joined.returncode == 0, joined.stderr[-3000:]
        assert joined.stdout.strip().splitlines()[-1] == "['127.0.0.2', '127.0.0.3']", joined.stdout
    assert cluster.stop_result.returncode == 0, cluster.stop_result.stderr
    assert not cluster.left, f"processes left after stop: {cluster.left}"
