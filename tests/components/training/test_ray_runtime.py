import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
from vlforge.components.training.ray_runtime import ensure_ray
import ray
ensure_ray()
print(",".join(n["NodeManagerAddress"] for n in ray.nodes()))
"""


def test_local_ray_stays_on_loopback() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180, check=True).stdout
    addresses = out.strip().splitlines()[-1].split(",")
    assert addresses and all(a.startswith("127.") for a in addresses), addresses
