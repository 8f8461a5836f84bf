"""Stage retries: a transient failure is retried with exponential backoff, a user error fails at once."""
import json
import os
import subprocess
import sys

from cli_harness import REPO

SCRIPT = r"""
import json, time
from prefect import flow, task
from vlforge.flows.common import TASK_OPTIONS
from vlforge.errors import UserError

opts = {k: v for k, v in TASK_OPTIONS.items() if k not in ("cache_key_fn", "persist_result")}
calls = {"flaky": [], "bad": []}

@task(**opts)
def flaky():
    calls["flaky"].append(time.monotonic())
    if len(calls["flaky"]) < 3:
        raise ConnectionError("transient")
    return "done"

@task(**opts)
def bad():
    calls["bad"].append(time.monotonic())
    raise UserError("--data 'x' is not a dataset")

@flow
def both():
    ok = flaky()
    state = bad(return_state=True)
    return ok, type(state.result(raise_on_failure=False)).__name__

ok, err = both()
gaps = [b - a for a, b in zip(calls["flaky"], calls["flaky"][1:])]
print(json.dumps({"ok": ok, "err": err, "flaky": len(calls["flaky"]), "bad": len(calls["bad"]), "gaps": gaps,
                  "delays": opts["retry_delay_seconds"]}))
"""


def test_transient_failures_retry_with_backoff_and_user_errors_do_not(tmp_path) -> None:
    env = {**os.environ, "VLFORGE_HOME": str(tmp_path / "home"), "VLFORGE_RETRY_DELAY_S": "0.5",
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ok"] == "done" and got["flaky"] == 3  # two retries
    assert got["bad"] == 1 and got["err"] == "UserError"  # no retry for a user mistake
    assert got["delays"] == [0.5, 1.0]  # exponential backoff
    # the second wait is longer: 1.0 s vs 0.5 s, each within 20% jitter, so at least 0.2 s more whatever the overhead
    assert got["gaps"][1] - got["gaps"][0] > 0.15, got["gaps"]
