"""Process environment vlforge sets before Prefect, Ray or transformers are imported.

Offline by construction (``HF_HUB_OFFLINE``), Prefect's home, results and embedded server kept under
``$VLFORGE_HOME`` unless the user points elsewhere (``PREFECT_HOME``/``PREFECT_API_URL``), telemetry off, and the
server start-up timeout raised for slow cold starts on small machines (see the stack notes). A ``UserError`` that a
stage raises inside a Prefect flow or task reaches the user as vlforge's one line, without the traceback Prefect's
run loggers would print first (``quiet_user_errors``)."""
from __future__ import annotations

import logging
import os

from vlforge.errors import UserError
from vlforge.settings import vlforge_home

# the loggers Prefect's engines report a failed flow / task run on ("Encountered exception during execution", "Task
# run failed with exception ... Retries are exhausted"), each with the traceback
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def configure_environment() -> None:
    home = vlforge_home()
    defaults = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "WANDB_MODE": "disabled",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "prefect" / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # Prefect creates its home but not the folders above it
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)
    quiet_user_errors()


class _DropUserErrors(logging.Filter):
    """Drops a log record that carries a ``UserError`` (its exception, or one of its arguments): the CLI prints the
    error's one line itself; any other failure keeps Prefect's report and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        args = record.args if isinstance(record.args, tuple) else ()
        return not (isinstance(exc, UserError) or any(isinstance(a, UserError) for a in args))


def quiet_user_errors() -> None:
    """Install the filter on Prefect's run loggers (once; ``logging.config.dictConfig``, which Prefect runs on import,
    keeps a logger's filters)."""
    for name in PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropUserErrors) for f in logger.filters):
            logger.addFilter(_DropUserErrors())
