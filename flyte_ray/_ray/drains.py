"""Ray node drains as the task side sees them: which nodes are draining, watched while attempts run.

A cloud's preemption notice reaches Ray as a *drain* of the node (the GCS ``DrainNode`` RPC with
reason PREEMPTION and a deadline: new work stops landing there, running work goes on) — from
flyte-ray's ``watch-preemption``, ``ray drain-node``, KubeRay or an autoscaler. Ray 2.60 has no
public "my node is draining" API for tasks, so everything that reads drains goes through
:func:`draining_nodes`, the one place that touches the private state API (``ray-here.md``);
``tests/test_notices.py`` fails loudly when a Ray upgrade changes it, and if it breaks at run
time flyte-ray falls back to "no notices" with one warning.

:class:`DrainMonitor` (a process part) polls that map every :data:`POLL_S` seconds, and only
while an attempt runs in this process:

* in a **worker** process it watches the worker's own node and sets the process's
  :class:`~flyte_ray._core.notice.PreemptionNotice` (``ctx().preemption``) — one poller per
  process, however many attempts run there;
* in a **supervising** process (driver, supervising actor) it is an attempt observer on the
  controller seam: it records when each node was first seen draining and its deadline, so an
  attempt whose node was drained and then died is classified ``preemption`` on any market (Ray
  itself records an unexpected termination when the node dies before the drain's deadline), and
  each attempt's record carries the notice (``notice_at``, ``notice_deadline``).

One poll is one GCS round trip (~0.2-0.3 ms measured here), once a second per process.
Draining a node (the node side) is :mod:`flyte_ray.preemption`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Optional

import ray

from .._core.notice import PreemptionNotice
from .._core.process import PROCESS
from .._core.records import AttemptRecord, AttemptRequest, Outcome

if TYPE_CHECKING:
    from .._core.call import Call

__all__ = [
    "draining_nodes",
    "DrainMonitor",
    "drain_monitor",
    "POLL_S",
]

logger = logging.getLogger("flyte_ray")


def _poll_s() -> float:
    try:
        v = float(os.environ.get("FLYTE_RAY_NOTICE_POLL_S", "1.0"))
    except ValueError:
        return 1.0
    return min(max(v, 0.05), 60.0)


POLL_S = _poll_s()  # how often a process with running attempts looks at Ray's draining-node map
_SEEN_MAX = 4096  # drained nodes remembered by one process (oldest forgotten first)

_warned = False


def draining_nodes() -> Optional[dict[str, Optional[float]]]:
    """Node id (hex) → drain deadline (epoch seconds, None when the drain named none) of every
    node Ray is draining now; ``{}`` when the GCS did not answer this time (a restart, a hiccup:
    the next look tries again); None when this Ray has no such map any more (after one warning:
    an upgrade changed the private API). Blocking; needs a connected Ray (a driver or a worker)."""
    try:
        # PRIVATE Ray API (ray 2.60): GlobalState.get_draining_nodes() -> {node_id_hex: deadline_ms}.
        # Ray Serve and Ray Train poll the same map. tests/test_notices.py guards its shape.
        from ray._private.state import state

        read = state.get_draining_nodes
    except (ImportError, AttributeError) as e:
        _api_gone(e)
        return None
    try:
        raw = read()
    except TypeError as e:  # its signature changed
        _api_gone(e)
        return None
    except Exception as e:  # noqa: BLE001 - the GCS did not answer: no news this time, not "off"
        logger.debug("draining-node map unreadable this time (%s: %s)", type(e).__name__, e)
        return {}
    try:
        return {str(k): (float(v) / 1000.0 if v else None) for k, v in dict(raw).items()}
    except (TypeError, ValueError) as e:  # its shape changed
        _api_gone(e)
        return None


def _api_gone(e: BaseException) -> None:
    global _warned
    if not _warned and ray.is_initialized():
        _warned = True
        logger.warning(
            "flyte-ray cannot read Ray's draining-node map (%s: %s): preemption notices are off in this "
            "process; preemptions are still handled when the node goes",
            type(e).__name__,
            e,
        )


def _client_mode() -> bool:
    try:
        return bool(ray.util.client.ray.is_connected())
    except Exception:  # noqa: BLE001
        return False


class DrainMonitor:
    """This process's poller of Ray's draining-node map (a process part; module docstring)."""

    reset_order = 35

    def __init__(self) -> None:
        self.notice = PreemptionNotice()  # this process's node: ctx().preemption
        self.node_id: Optional[str] = None  # set in worker processes: the node whose notice we set
        self.seen: dict[str, tuple[float, Optional[float]]] = {}  # node -> (first seen, deadline)
        self.interval = POLL_S
        self.off = False  # the map cannot be read here: no notices
        self._active = 0
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    def reset(self) -> None:
        with self._cond:
            self.notice = PreemptionNotice()
            self.node_id = None
            self.seen = {}
            self.off = False

    # ------------------------------------------------------------ attempts in this process
    def begin(self, node_id: Optional[str] = None) -> PreemptionNotice:
        """An attempt starts here (``node_id``: this worker's node, to set its notice)."""
        if node_id is not None:
            self.node_id = node_id
        with self._cond:
            self._active += 1  # counted even when off, so that end() always matches a begin()
            if self._active == 1 and not self.off:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="flyte-ray-drains", daemon=True)
                    self._thread.start()
                else:
                    self._cond.notify()
        return self.notice

    def end(self) -> None:
        with self._cond:
            if self._active > 0:
                self._active -= 1

    def notice_for(self, node_id: str) -> Optional[tuple[float, Optional[float]]]:
        """``(first seen, deadline)`` when this process saw ``node_id`` draining."""
        return self.seen.get(node_id) if node_id else None

    # ------------------------------------------------------------ the controller seam
    def attempt_started(self, call: "Call", req: AttemptRequest, record: AttemptRecord) -> None:
        self.begin()

    def attempt_finished(self, call: "Call", req: AttemptRequest, record: AttemptRecord, out: Outcome) -> None:
        self.end()
        if record.notice_at is None:
            seen = self.notice_for(record.node_id)
            if seen is not None:
                record.notice_at, record.notice_deadline = seen

    # ------------------------------------------------------------ the poller
    def _run(self) -> None:
        # Sleep first: an attempt shorter than one interval never costs a GCS round trip.
        while True:
            with self._cond:
                while self._active == 0:
                    self._cond.wait()
            time.sleep(self.interval)
            if self._active == 0 or not ray.is_initialized():
                continue
            if _client_mode():  # a ray:// driver cannot read the map; its attempts' workers can
                self.off = True
                return
            self.poll()
            if self.off:
                return

    def poll(self) -> None:
        """One look at the map (the thread's body)."""
        nodes = draining_nodes()
        if nodes is None:
            self.off = True
            return
        now = time.time()
        for nid, deadline in nodes.items():
            if nid not in self.seen:
                if len(self.seen) >= _SEEN_MAX:
                    self.seen.pop(next(iter(self.seen)))
                self.seen[nid] = (now, deadline)
        me = self.node_id
        if me is not None and me in nodes:
            self.notice.set(nodes[me], now)


def drain_monitor() -> DrainMonitor:
    return PROCESS.part(DrainMonitor)
