"""Starting or joining Ray with every address on loopback.

Locally vlforge starts a private Ray instance on a loopback address (127.0.0.2) (never the machine's LAN interface) with token
auth off, no dashboard and no usage stats. Given an address (``--ray-address``, ``train.ray_address`` in a pipeline
config, or the ``VLFORGE_RAY_ADDRESS`` / ``RAY_ADDRESS`` environment variables) it joins that existing cluster.

Quiet by default: the user sees vlforge's own lines (progress bar, result tables, errors), not Ray's. The driver
does not subscribe to its workers' stdout/stderr (``log_to_driver=False``: Ray Train's controller and worker lines
such as ``Reporting training result ...`` and ``Checkpoint successfully created ...``, and the core workers' C++
lines such as ``core_worker.cc ... PreemptionWatcher``; they stay in the session's log files), the driver's ``ray``
loggers show errors only, and Ray Train logs at ERROR (``RunConfig(logging_config=...)``: ``train_logging_config``).
A failure still reaches the user: a worker's exception comes back to the driver as the exception ``fit`` or
``ray.get`` raises. ``VLFORGE_VERBOSE=1`` (``vlforge --verbose``) restores Ray's lines."""
from __future__ import annotations

import logging
import os
from typing import Any

from vlforge.settings import verbose as verbose_enabled

# Ray replaces 127.0.0.1 with the machine's LAN address; any other loopback address is kept as given.
LOOPBACK_NODE_IP = "127.0.0.2"


TRAIN_POLL_INTERVAL_S = "0.25"


def ray_env() -> dict[str, str]:
    return {
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "1",
        "RAY_TRAIN_V2_ENABLED": os.environ.get("RAY_TRAIN_V2_ENABLED", "1"),
        # Ray Train's controller polls its workers (and collects their reports) every this many seconds; at Ray's
        # default of 2 s a short run spends several such waits starting, checkpointing and finishing (4-6 s of a
        # 2-step run measured here). A poll is one small remote call per worker.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
                                                            TRAIN_POLL_INTERVAL_S),
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


# Ray's Python loggers in the driver; quiet, each shows errors only (configure_logging sets only ``ray``'s level).
RAY_LOGGERS = ("ray", "ray.train", "ray.tune", "ray.data")


def ray_init_options(verbose: bool | None = None) -> dict[str, Any]:
    """The logging and runtime-env arguments of ``ray.init``: quiet unless ``verbose`` (default: ``VLFORGE_VERBOSE``)."""
    import ray

    verbose = verbose_enabled() if verbose is None else verbose
    # Ray Train's placement-group cleaner polls the state API, which needs the dashboard we don't start; its
    # warnings every few seconds would bury real output, so Ray's own workers log errors only, verbose or not.
    return {"configure_logging": True, "logging_level": "WARNING" if verbose else "ERROR", "log_to_driver": verbose,
            "logging_config": ray.LoggingConfig(encoding="TEXT", log_level="ERROR"),
            "runtime_env": {"env_vars": ray_env()}}


def train_logging_config(verbose: bool | None = None) -> dict[str, Any]:
    """``RunConfig`` keyword for Ray Train's own logs (``ray.train`` in its controller and workers): Ray's default
    (INFO) when verbose, ERROR otherwise; nothing where ``RunConfig`` has no ``logging_config`` (Ray Train V1)."""
    import dataclasses

    import ray.train

    verbose = verbose_enabled() if verbose is None else verbose
    if not hasattr(ray.train, "LoggingConfig") or "logging_config" not in {
            f.name for f in dataclasses.fields(ray.train.RunConfig)}:
        return {}
    return {"logging_config": ray.train.LoggingConfig(log_level="INFO" if verbose else "ERROR")}


def quiet_ray_loggers(verbose: bool | None = None) -> None:
    """Quiet: Ray's Python loggers in this process show errors only. Verbose: left as Ray set them."""
    if verbose_enabled() if verbose is None else verbose:
        return
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray once per process: to ``address`` if given, else a local instance on loopback."""
    for key, value in ray_env().items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        quiet_ray_loggers()
        return
    address = address or os.environ.get("VLFORGE_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
    common = ray_init_options()
    if address:
        check_ray_address(address)
        ray.init(address=address, **common)
    else:
        # Ray Train's preemption watcher (an actor per run) follows a cloud node's drain notice; a private local
        # instance has none to follow
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ray.init(
            address="local",
            _node_ip_address=LOOPBACK_NODE_IP,
            num_cpus=num_cpus or os.cpu_count() or 2,
            include_dashboard=False,
            **common,
        )
    quiet_ray_loggers()


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
