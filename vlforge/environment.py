"""Process environment vlforge sets before Prefect, Ray or transformers are imported.

Offline by construction (``HF_HUB_OFFLINE``), Prefect's home, results and embedded server kept under
``$VLFORGE_HOME`` unless the user points elsewhere (``PREFECT_HOME``/``PREFECT_API_URL``), telemetry off, and the
server start-up timeout raised for slow cold starts on small machines (see the stack notes)."""
from __future__ import annotations

import os

from vlforge.settings import vlforge_home


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
