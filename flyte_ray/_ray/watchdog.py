"""Watch attempts that have not (knowingly) started: speak when they wait long, and move spot
attempts that no live node can run any more.

Ray keeps work that no live node offers pending forever without a word (``ray-here.md``,
pitfall 5). Executors register each submitted attempt with :class:`PendingWatch` until it starts
or ends; one daemon thread per process looks at them every :data:`CHECK_EVERY_S` seconds:

* **Spot capacity gone.** A spot attempt that may move (a spot wait is set, no
  ``max_queued_time``, and no node type the cluster can launch would offer it) and whose request
  no live node offers any more cannot be running and cannot start: typically the retry of a
  preempted attempt, submitted while the last spot node was still draining. The thread marks it
  *gone* and cancels its Ray task; the executor reads the mark and records ``spot_unavailable``
  (the attempt moves to on-demand, no budget used) instead of a cancellation. The check is by the
  cached cluster view, one per distinct request, confirmed by a fresh GCS look before acting —
  so a fan-out of 100,000 pending attempts costs a few dict operations per check, not a GCS call
  each, and a per-attempt timer is never needed. An attempt submitted before the capacity was
  seen gone gets a second of grace: it may be running on the node that just died, whose loss
  Ray reports as the attempt's failure (a preemption, counted as such).
* **Long waits.** Once per attempt, after :data:`WARN_PENDING_AFTER` seconds, it logs which
  resources no live node offers and what happens next (the spot wait, ``max_queued_time``, or
  nothing: Ray keeps it pending until such a node joins).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, NamedTuple, Optional

import ray

from .._core.process import PROCESS
from .._core.records import AttemptRequest, Market
from .node_types import fits
from .placement import cluster_view, describe, request_of

__all__ = ["PendingWatch", "pending_watch", "Gone", "WARN_PENDING_AFTER", "CHECK_EVERY_S"]

logger = logging.getLogger("flyte_ray")

WARN_PENDING_AFTER = 60.0  # seconds an attempt may wait before we say what no node offers
CHECK_EVERY_S = 5.0  # how often the thread looks (the cluster view's TTL is the same)
GONE_GRACE_S = 1.0  # see PendingWatch.check: Ray reports a dead node's tasks well within it


class Gone(NamedTuple):
    """Why the watch cancelled a pending spot attempt."""

    missing: list
    waited: float


class _Item:
    __slots__ = ("fqn", "req", "opts", "since", "warned", "node_types", "movable")

    def __init__(self, fqn: str, req: AttemptRequest, opts: dict, node_types: tuple) -> None:
        self.fqn, self.req, self.opts, self.node_types = fqn, req, opts, node_types
        self.since = time.monotonic()
        self.warned = False
        self.movable: Any = ...  # worked out by the thread, off the hot path: request_key()

    def request_key(self) -> Optional[tuple]:
        """The request as a hashable key when losing its spot capacity moves it, else None."""
        if self.movable is ...:
            req, key = self.req, None
            if req.market == Market.SPOT and req.spot_wait is not None and req.max_queued_time is None:
                request = request_of(self.opts)
                if not any(fits(request, res, declared_only=True) for _, res in self.node_types):
                    key = tuple(sorted(request.items()))
            self.movable = key
        return self.movable


class PendingWatch:
    """Attempts not known to have started, and the thread that watches them (a process part)."""

    reset_order = 40

    def __init__(self) -> None:
        self.items: dict[Any, _Item] = {}
        self.gone: dict[Any, Gone] = {}
        self.missing_since: dict[tuple, float] = {}  # request -> when the watch first saw no live node offer it
        self.lock = threading.Lock()
        self.thread: Optional[threading.Thread] = None

    def reset(self) -> None:
        self.items = {}
        self.gone = {}
        self.missing_since = {}

    def add(self, key: Any, fqn: str, req: AttemptRequest, opts: dict, node_types: tuple = ()) -> None:
        """Watch ``key`` (an ObjectRef or a streaming generator: what ``ray.cancel`` takes) until
        :meth:`discard`. ``node_types``: what the cluster can launch (a launchable spot type means
        the attempt waits for the autoscaler rather than moving)."""
        self.items[key] = _Item(fqn, req, opts, node_types)
        if self.thread is None or not self.thread.is_alive():
            with self.lock:
                if self.thread is None or not self.thread.is_alive():
                    self.thread = threading.Thread(target=self._run, name="flyte-ray-watchdog", daemon=True)
                    self.thread.start()

    def discard(self, key: Any) -> None:
        self.items.pop(key, None)
        self.gone.pop(key, None)

    def take_gone(self, key: Any) -> Optional[Gone]:
        """The mark the thread left when it cancelled ``key`` because its spot capacity is gone."""
        return self.gone.pop(key, None)

    def _run(self) -> None:
        while True:
            # sooner while attempts wait out their grace (see check)
            time.sleep(GONE_GRACE_S if self.missing_since else CHECK_EVERY_S)
            if not ray.is_initialized():  # after a shutdown, a Ray call here would start Ray again
                continue
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a GCS hiccup: look again next time
                logger.debug("pending-attempt check failed", exc_info=True)

    def check(self) -> None:
        """One look at the pending attempts (the thread's body; blocking GCS calls)."""
        now = time.monotonic()
        view = cluster_view()
        by_request: dict[tuple, list] = {}
        for key, item in list(self.items.items()):
            request_key = item.request_key()
            if request_key is not None:
                by_request.setdefault(request_key, []).append((key, item))
        for gone_key in [k for k in self.missing_since if k not in by_request]:
            del self.missing_since[gone_key]  # nothing of it is pending any more
        for request_key, group in by_request.items():
            request = dict(request_key)
            # By every live node, draining ones too: a plain attempt may be running on one (and
            # runs on until its node goes).
            if not view.missing_cached(request):
                self.missing_since.pop(request_key, None)
                continue
            missing = view.missing(request)  # the cache may be a few seconds old: confirm
            if not missing:
                self.missing_since.pop(request_key, None)
                continue
            first = self.missing_since.setdefault(request_key, now)
            for key, item in group:
                # An attempt submitted before its capacity was seen gone may be *running* on the
                # node that just died: Ray reports that as the node's failure (a preemption)
                # within moments (the GCS tells owners of a dead node's tasks as it marks the node
                # dead), so it gets GONE_GRACE_S (the thread looks again after that); cancelling
                # it first would record a preemption as spot_unavailable. One submitted after
                # cannot have started.
                if item.since < first and now - first < GONE_GRACE_S:
                    continue
                if self.items.pop(key, None) is None:  # it ended meanwhile
                    continue
                self.gone[key] = Gone(missing, now - item.since)
                try:
                    ray.cancel(key, force=True)
                except Exception:  # noqa: BLE001 - it finished meanwhile: its result wins
                    self.gone.pop(key, None)
        for item in list(self.items.values()):
            if item.warned or now - item.since < WARN_PENDING_AFTER:
                continue
            item.warned = True
            missing = view.missing(request_of(item.opts))
            if missing:
                logger.warning(
                    "%s attempt %d (%s, queue %s) has waited %.0fs to start: no live node offers %s. %s",
                    item.fqn,
                    item.req.attempt,
                    item.req.market,
                    item.req.queue,
                    now - item.since,
                    describe(missing),
                    _next_step(item.req),
                )


def _next_step(req: AttemptRequest) -> str:
    if req.max_queued_time is not None:
        return f"It gives up after max_queued_time={req.max_queued_time:g}s."
    if req.market == Market.SPOT and req.spot_wait is not None:
        return f"It moves to on-demand after spot_wait={req.spot_wait:g}s (init(spot_wait=...))."
    return "Ray keeps it pending until such a node joins (autoscaler) — or set Timeout(max_queued_time=...) to give up."


def pending_watch() -> PendingWatch:
    return PROCESS.part(PendingWatch)
