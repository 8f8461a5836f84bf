"""Deployments of vlforge's flows with schedules, declared in a YAML file (``schedules.yaml``)::

    deployments:
      - flow: pipeline            # pipeline | ingest | train | eval
        name: nightly-shapes
        cron: "0 2 * * *"         # or: interval: 3600 (seconds)
        parameters: {config: {source: {spec: "builtin:shapes?n=2000"}}}

``vlforge deploy --schedules FILE`` registers them with the running Prefect server and serves them (this process
runs the scheduled flow runs until stopped). Teams with work pools use ``prefect.yaml`` instead."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlforge.errors import UserError

FLOWS = {
    "pipeline": "vlforge.flows.pipeline.pipeline_flow",
    "ingest": "vlforge.flows.ingest.ingest_flow",
    "train": "vlforge.flows.train.train_flow",
    "eval": "vlforge.flows.evaluate.eval_flow",
}


class DeploymentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flow: str
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    cron: str | None = None
    interval: float | None = Field(None, gt=0)
    parameters: dict[str, Any] = Field(default_factory=dict)
    paused: bool = False

    @model_validator(mode="after")
    def _one_schedule(self) -> "DeploymentSpec":
        if self.cron is not None and self.interval is not None:
            raise ValueError("give cron or interval, not both")
        return self


class ScheduleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deployments: list[DeploymentSpec]


DEFAULT_SCHEDULES = ScheduleFile(deployments=[DeploymentSpec(flow="pipeline", name="nightly", cron="0 2 * * *")])


def load_schedules(path: Path | None) -> ScheduleFile:
    if path is None:
        return DEFAULT_SCHEDULES
    if not path.is_file():
        raise UserError(f"schedule file '{path}' does not exist")
    try:
        spec = ScheduleFile(**(yaml.safe_load(path.read_text()) or {}))
    except yaml.YAMLError as exc:
        raise UserError(f"schedule file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    except (ValidationError, TypeError) as exc:
        if isinstance(exc, ValidationError):
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise UserError(f"schedule file '{path}': {where}: {err['msg']}") from None
        raise UserError(f"schedule file '{path}' must hold a mapping with a 'deployments' list") from None
    from prefect.client.schemas.schedules import CronSchedule

    for i, dep in enumerate(spec.deployments):
        if dep.flow not in FLOWS:
            raise UserError(f"schedule file '{path}': deployment '{dep.name}' names unknown flow '{dep.flow}' (flows: {', '.join(FLOWS)})")
        if dep.cron is not None:
            try:
                CronSchedule(cron=dep.cron)
            except (ValidationError, ValueError):
                raise UserError(f"schedule file '{path}': deployment '{dep.name}' has an invalid cron '{dep.cron}'") from None
    return spec


def _flow(dotted: str) -> Any:
    import importlib

    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def build_deployments(spec: ScheduleFile) -> list[Any]:
    from prefect.deployments.runner import EntrypointType

    deployments = []
    for dep in spec.deployments:
        flow = _flow(FLOWS[dep.flow])
        deployments.append(
            flow.to_deployment(
                name=dep.name, cron=dep.cron, interval=dep.interval, parameters=dep.parameters, paused=dep.paused,
                tags=["vlforge"], entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments


def serve(spec: ScheduleFile, limit: int = 1) -> None:
    """Serve until stopped; at most ``limit`` flow runs at once (a pipeline run can take the whole machine)."""
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(spec), print_starting_message=True, limit=limit)
