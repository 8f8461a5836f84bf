"""Child-process entry point for img2dataset (see crawl.py for why it runs apart).

Importing this module installs the crawl's guarded urllib opener (``guard.install_from_env``). That happens at
import, not in ``main``: img2dataset's multiprocessing distributor spawns workers that re-import this module as
``__mp_main__`` (the ``__main__`` block does not run there), and those workers are where every fetch happens."""
from __future__ import annotations

import json
import os
import sys

from vlforge.components.data.guard import install_from_env

install_from_env()


def main() -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if not os.environ.get("VLFORGE_FETCH_POLICY"):  # refuse to crawl unguarded
        raise SystemExit("img2dataset_child: VLFORGE_FETCH_POLICY is not set")
    args = json.loads(sys.argv[1])
    ray_address = args.pop("_vlforge_ray_address", None)
    if ray_address:
        connect_ray(ray_address)
    from img2dataset import download

    download(**args)


def connect_ray(address: str) -> None:
    """Join the cluster so img2dataset's ray distributor runs the download tasks there; each Ray worker process
    installs the guarded opener from the same policy before it fetches anything."""
    import ray
    from vlforge.components.data.guard import POLICY_ENV
    from vlforge.components.training.ray_runtime import ray_env

    env_vars = {**ray_env(), POLICY_ENV: os.environ[POLICY_ENV], "NO_ALBUMENTATIONS_UPDATE": "1",
                "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    ray.init(address=address, logging_level="ERROR",
             runtime_env={"env_vars": env_vars, "worker_process_setup_hook": "vlforge.components.data.guard.install_from_env"})


if __name__ == "__main__":
    main()
