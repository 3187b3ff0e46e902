"""Say when an attempt has waited long to start because no live node offers what it asks for.

Ray keeps such work pending forever without a word (``ray-here.md``, pitfall 5). Executors
register each submitted attempt with :class:`PendingWatch` until it starts or ends; a daemon
thread checks every few seconds and, once per attempt, after :data:`WARN_PENDING_AFTER` seconds,
logs which resources no live node offers.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

import ray

from .._core.process import PROCESS
from .._core.records import AttemptRequest
from .placement import cluster_view, describe, request_of

__all__ = ["PendingWatch", "pending_watch", "WARN_PENDING_AFTER"]

logger = logging.getLogger("flyte_ray")

WARN_PENDING_AFTER = 60.0  # seconds an attempt may wait before we say what no node offers


class PendingWatch:
    """Attempts not known to have started, and the thread that watches them (a process part)."""

    reset_order = 40

    def __init__(self) -> None:
        self.items: dict[Any, list] = {}
        self.lock = threading.Lock()
        self.thread: Optional[threading.Thread] = None

    def reset(self) -> None:
        self.items = {}

    def add(self, key: Any, fqn: str, req: AttemptRequest, opts: dict) -> None:
        self.items[key] = [fqn, req, opts, time.monotonic()]
        if self.thread is None or not self.thread.is_alive():
            with self.lock:
                if self.thread is None or not self.thread.is_alive():
                    self.thread = threading.Thread(target=self._run, name="flyte-ray-watchdog", daemon=True)
                    self.thread.start()

    def discard(self, key: Any) -> None:
        self.items.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(5.0)
            now = time.monotonic()
            for item in list(self.items.values()):
                fqn, req, opts, since = item
                if now - since < WARN_PENDING_AFTER:
                    continue
                item[3] = float("inf")  # warn once
                if not ray.is_initialized():  # after a shutdown, a Ray call here would start Ray again
                    continue
                try:
                    missing = cluster_view().missing(request_of(opts))
                except Exception:  # noqa: BLE001
                    continue
                if missing:
                    logger.warning(
                        "%s attempt %d (%s, queue %s) has waited %.0fs to start: no live node offers %s. "
                        "Ray keeps it pending until such a node joins (autoscaler) — or set "
                        "Timeout(max_queued_time=...) to give up.",
                        fqn,
                        req.attempt,
                        req.market,
                        req.queue,
                        now - since,
                        describe(missing),
                    )


def pending_watch() -> PendingWatch:
    return PROCESS.part(PendingWatch)
