"""A preemption notice as a task sees it (``flyte_ray.ctx().preemption``), with no Ray in it.

Clouds warn before they take a spot node back (AWS two minutes, GCP about 30 s, Azure through
Scheduled Events). Whatever turns that warning into a Ray *drain* of the node (flyte-ray's
``watch-preemption``, ``ray drain-node``, KubeRay, an autoscaler, ``LocalCluster.preempt``), the
worker side of flyte-ray sees the node in Ray's draining-node map and sets this process's
:class:`PreemptionNotice` (see :mod:`flyte_ray._ray.drains`). Rules:

* A notice is per *node*, so per worker process: every attempt in the process shares one, and
  once set it stays set (the node is going away).
* ``deadline`` is epoch seconds (when the cloud will take the node), or ``None`` when the drain
  named none.
* A task that has saved its state ends its attempt on purpose by raising
  :class:`~flyte_ray.errors.TaskInterruptedError`; after a notice that is a *system* retry
  recorded as ``preemption``, and the next attempt starts at once on another node.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

__all__ = ["PreemptionNotice", "NEVER"]


class PreemptionNotice:
    """The node this attempt runs on is being taken back (or not yet).

    ``is_set()`` says whether a notice arrived; ``deadline`` is when the node goes (epoch
    seconds, or None when unknown); ``wait(timeout)`` blocks until a notice or the timeout and
    returns ``is_set()``; ``seconds_left()`` is the time to the deadline (None without one).
    """

    __slots__ = ("_event", "deadline", "at", "_callbacks", "_lock")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.deadline: Optional[float] = None
        self.at: Optional[float] = None  # when this process saw the notice (epoch seconds)
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def is_set(self) -> bool:
        return self._event.is_set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._event.wait(timeout)

    def seconds_left(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - time.time()

    def on_notice(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` once when the notice arrives (at once if it already has), on the thread
        that notices it: keep it short and thread-safe (e.g. set a flag your loop checks)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn()

    def set(self, deadline: Optional[float], at: Optional[float] = None) -> bool:
        """Record the notice; True the first time (callbacks run then), False after."""
        with self._lock:
            if self._event.is_set():
                return False
            self.deadline = deadline
            self.at = time.time() if at is None else at
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception:  # noqa: BLE001 - a failing callback must not stop the others
                pass
        return True

    def as_wire(self) -> Optional[tuple]:
        """``(at, deadline)`` when set, for the attempt's result record; else None."""
        return (self.at, self.deadline) if self._event.is_set() else None

    def __repr__(self) -> str:
        if not self._event.is_set():
            return "PreemptionNotice(not set)"
        left = self.seconds_left()
        return f"PreemptionNotice(set, deadline in {left:.1f}s)" if left is not None else "PreemptionNotice(set)"


class _Never(PreemptionNotice):
    """The notice outside an attempt that a poller watches (``task.forward``, tests): never set."""

    __slots__ = ()

    def set(self, deadline: Optional[float], at: Optional[float] = None) -> bool:
        return False

    def on_notice(self, fn: Callable[[], None]) -> None:
        pass


NEVER: PreemptionNotice = _Never()
