"""prefect.yaml describes the same flows vlforge deploys: every entrypoint imports, and its parameters bind."""
import importlib
import importlib.util
import inspect

import yaml
from cli_harness import REPO
from vlforge.deployments import FLOWS


def test_prefect_yaml_entrypoints_and_parameters() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = set()
    for dep in spec["deployments"]:
        path, _, attr = dep["entrypoint"].partition(":")
        module = importlib.util.spec_from_file_location("entry", REPO / path)
        assert module is not None and (REPO / path).is_file(), path
        dotted = "vlforge." + path.removesuffix(".py").replace("/", ".") + "." + attr
        assert dotted in FLOWS.values(), dotted  # the same flows `vlforge deploy` serves
        flow = getattr(importlib.import_module(dotted.rpartition(".")[0]), attr)
        inspect.signature(flow.fn).bind(**dep.get("parameters", {}))  # raises if a parameter is wrong
        names.add(dep["name"])
        for sched in dep.get("schedules", []):
            from prefect.client.schemas.schedules import CronSchedule

            CronSchedule(cron=sched["cron"])
    assert {"nightly", "ingest", "train", "eval"} <= names


