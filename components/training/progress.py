"""Live training progress on the driver.

Rank 0 of the Ray Train workers puts each training-log row (every ``log_every`` steps) on a Ray queue, an actor,
so this works on a remote cluster too; a thread in the driver shows the rows as a rich progress bar on stderr (step,
loss, samples/s, time left) while ``TorchTrainer.fit`` blocks. Ray Train's own ``report`` is not used for this: it
holds one unread report per worker and collects every 2 s, which would throttle the loop (see ``loop.py``).

On by default when stderr is a terminal; ``VLFORGE_PROGRESS=1`` forces it on (e.g. into a log file) and
``VLFORGE_PROGRESS=0`` off. A row that cannot be queued is dropped: progress never slows or breaks training."""
from __future__ import annotations

import os
import sys
import threading
from typing import Any

QUEUE_SIZE = 256


def progress_enabled() -> bool:
    flag = os.environ.get("VLFORGE_PROGRESS", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    return flag in ("1", "true", "yes", "on") or sys.stderr.isatty()


def publish(queue: Any, row: dict) -> None:
    """Worker side: queue one log row without waiting; drop it if the queue is full or gone."""
    if queue is None:
        return
    try:
        queue.put_nowait(row)
    except Exception:  # noqa: BLE001 - a full or dead progress queue must not stop training
        pass


class TrainingProgress:
    """Driver side: ``with TrainingProgress(steps, "clip") as p:`` pass ``p.queue`` to the workers, then fit."""

    def __init__(self, total_steps: int, description: str, enabled: bool | None = None) -> None:
        self.total_steps, self.description = total_steps, description
        self.enabled = progress_enabled() if enabled is None else enabled
        self.queue: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None

    def __enter__(self) -> TrainingProgress:
        if not self.enabled:
            return self
        from ray.util.queue import Queue
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.queue = Queue(maxsize=QUEUE_SIZE, actor_options={"num_cpus": 0})
        self._bar = Progress(TextColumn("train {task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} samples/s"),
                             TimeRemainingColumn(), console=Console(stderr=True))
        self._task = self._bar.add_task(self.description, total=self.total_steps, loss="-", speed="-")
        self._bar.start()
        self._thread = threading.Thread(target=self._follow, name="vlforge-train-progress", daemon=True)
        self._thread.start()
        return self

    def _show(self, row: dict) -> None:
        self._bar.update(self._task, completed=int(row.get("step", 0)), loss=f"{float(row.get('loss', float('nan'))):.4f}",
                         speed=f"{float(row.get('samples_per_s', 0.0)):.0f}")

    def _follow(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                self._show(self.queue.get(block=True, timeout=0.5))
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue actor went away (Ray shut down): stop following
                return

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            for row in self.queue.get_nowait_batch(self.queue.qsize()):
                self._show(row)
        except Exception:  # noqa: BLE001 - rows left behind only make the bar less current
            pass
        self._bar.stop()
        try:
            self.queue.shutdown()
        except Exception:  # noqa: BLE001
            pass
