"""Child-process entry point for img2dataset (see crawl.py for why it runs apart)."""
from __future__ import annotations

import json
import os
import sys


def main() -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    download(**json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()
