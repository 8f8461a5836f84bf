"""Starting or joining Ray with every address on loopback.

Locally vlforge starts a private Ray instance on a loopback address (127.0.0.2) (never the machine's LAN interface) with token
auth off, no dashboard and no usage stats. Given an address (``--ray-address``, ``train.ray_address`` in a pipeline
config, or the ``VLFORGE_RAY_ADDRESS`` / ``RAY_ADDRESS`` environment variables) it joins that existing cluster."""
from __future__ import annotations

import os

# Ray replaces 127.0.0.1 with the machine's LAN address; any other loopback address is kept as given.
LOOPBACK_NODE_IP = "127.0.0.2"


def ray_env() -> dict[str, str]:
    return {
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "1",
        "RAY_TRAIN_V2_ENABLED": os.environ.get("RAY_TRAIN_V2_ENABLED", "1"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def check_ray_address(address: str | None, timeout: float = 3.0) -> None:
    """UserError unless ``address`` (``host:port`` of a Ray head's GCS, or ``auto``/``local``/``ray://...``) answers."""
    if not address or address in ("auto", "local") or address.startswith("ray://"):
        return
    import socket

    from vlforge.errors import UserError

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UserError(f"Ray address '{address}' is not HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"Ray address '{address}' is unreachable: {exc.strerror or exc}") from None


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray once per process: to ``address`` if given, else a local instance on loopback."""
    for key, value in ray_env().items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("VLFORGE_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
    # Ray Train's placement-group cleaner polls the state API, which needs the dashboard we don't start; its
    # warnings every few seconds would bury real output, so Ray's own workers log errors only.
    common = {"configure_logging": True, "logging_level": "WARNING", "log_to_driver": True,
              "logging_config": ray.LoggingConfig(encoding="TEXT", log_level="ERROR"),
              "runtime_env": {"env_vars": ray_env()}}
    if address:
        check_ray_address(address)
        ray.init(address=address, **common)
    else:
        ray.init(
            address="local",
            _node_ip_address=LOOPBACK_NODE_IP,
            num_cpus=num_cpus or os.cpu_count() or 2,
            include_dashboard=False,
            **common,
        )


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
