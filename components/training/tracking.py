"""Experiment tracking of a training run: a recipe's ``tracking: [mlflow, tensorboard]`` (off by default).

The training loop (``loop.py``) makes one :class:`Tracker` on rank 0: it logs the recipe as parameters and every log
row's numbers as per-step metrics; the train stage (``components/stages/train.py``) reopens the same run after
registering the model and logs the catalog ids (model, dataset, tokenizer). MLflow's tracking URI comes from
``$VLFORGE_MLFLOW_URI``, by default a SQLite store ``sqlite:///$VLFORGE_HOME/mlflow.db`` that needs no server
(``mlflow ui --backend-store-uri sqlite:///...`` shows it); one MLflow run per training run, found again by its
``vlforge.run`` tag, so a resumed run keeps logging into the same one. TensorBoard event files go to
``$VLFORGE_HOME/tensorboard/<run>``. :func:`check_tracking` runs at plan time, before any work."""
from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlforge.errors import UserError
from vlforge.settings import vlforge_home

BACKENDS = ("mlflow", "tensorboard")
EXPERIMENT = "vlforge"
RUN_TAG = "vlforge.run"


def mlflow_uri() -> str:
    return os.environ.get("VLFORGE_MLFLOW_URI") or f"sqlite:///{vlforge_home() / 'mlflow.db'}"


def tensorboard_dir(run_name: str) -> Path:
    return vlforge_home() / "tensorboard" / run_name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _make_sqlite_folder(uri: str) -> None:
    """SQLite creates its file but not the folder it lies in. MLflow's and alembic's INFO lines on creating a store
    ("Creating initial MLflow database tables...") are the framework's, not vlforge's: they log warnings only."""
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


def check_tracking(backends: Sequence[str]) -> None:
    """UserError (one line) for an unknown backend or an MLflow tracking URI that cannot be reached. An HTTP server
    must answer ``/health``; any other store (SQLite, a folder, a database URL) must answer a query."""
    for name in backends:
        if name not in BACKENDS:
            raise UserError(f"recipe field 'tracking': unknown backend '{name}' (backends: {', '.join(BACKENDS)})")
    if "mlflow" not in backends:
        return
    uri = mlflow_uri()
    try:
        if uri.startswith(("http://", "https://")):
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:  # noqa: S310 - user's URI
                if resp.status != 200:
                    raise OSError(f"HTTP {resp.status}")
        else:
            _make_sqlite_folder(uri)
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - whatever the store says, the user's URI is what is wrong
        raise UserError(f"MLflow tracking URI '{uri}' (VLFORGE_MLFLOW_URI) is unreachable: {_first_line(exc)}") from None


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


class Tracker:
    """Logs one training run to the recipe's tracking backends; with none it does nothing."""

    def __init__(self, backends: Sequence[str], run_name: str, *, uri: str | None = None,
                 log_dir: Path | None = None) -> None:
        """``uri`` and ``log_dir`` (default: :func:`mlflow_uri`, :func:`tensorboard_dir`): the driver resolves them
        and hands them to a Ray worker, whose environment and working folder may differ from the driver's."""
        self.backends, self.run_name = tuple(backends), run_name
        self._client: Any = None
        self._run_id: str | None = None
        self._writer: Any = None
        if "mlflow" in self.backends:
            from mlflow.tracking import MlflowClient

            uri = uri or mlflow_uri()
            _make_sqlite_folder(uri)
            self._client = MlflowClient(tracking_uri=uri)
            exp = self._client.get_experiment_by_name(EXPERIMENT)
            exp_id = exp.experiment_id if exp is not None else self._client.create_experiment(EXPERIMENT)
            found = self._client.search_runs([exp_id], filter_string=f"tags.`{RUN_TAG}` = '{run_name}'", max_results=1)
            self._run_id = found[0].info.run_id if found else \
                self._client.create_run(exp_id, run_name=run_name, tags={RUN_TAG: run_name}).info.run_id
        if "tensorboard" in self.backends:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir or tensorboard_dir(run_name)))

    @property
    def mlflow_run_id(self) -> str | None:
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Parameters as strings (lists and mappings as JSON); MLflow takes at most 100 per call."""
        flat = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in params.items()}
        if self._client is not None:
            from mlflow.entities import Param

            items = [Param(k, v[:6000]) for k, v in sorted(flat.items())]
            for i in range(0, len(items), 100):
                self._client.log_batch(self._run_id, params=items[i : i + 100])
        if self._writer is not None:
            table = "| parameter | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in sorted(flat.items()))
            self._writer.add_text("params", table, 0)
            self._writer.flush()

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """The numeric entries of ``metrics`` at ``step`` (lists, strings and ``step`` itself are left out)."""
        values = _numbers(metrics)
        if not values:
            return
        if self._client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self._client.log_batch(self._run_id, metrics=[Metric(k, v, now, step) for k, v in sorted(values.items())])
        if self._writer is not None:
            for k, v in sorted(values.items()):
                self._writer.add_scalar(k, v, step)
            self._writer.flush()

    def log_catalog_ids(self, ids: Mapping[str, str]) -> None:
        """The catalog ids the run made and read (``catalog.model``, ``catalog.dataset``, ...) as MLflow tags and a
        TensorBoard text."""
        if self._client is not None:
            for k, v in sorted(ids.items()):
                self._client.set_tag(self._run_id, f"catalog.{k}", v)
        if self._writer is not None:
            self._writer.add_text("catalog", "".join(f"- {k}: `{v}`\n" for k, v in sorted(ids.items())), 0)
            self._writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        if self._client is not None and self._run_id is not None:
            self._client.set_terminated(self._run_id, status=status)
        if self._writer is not None:
            self._writer.close()
