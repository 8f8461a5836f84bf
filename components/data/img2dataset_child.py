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
    from img2dataset import download

    download(**json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()
