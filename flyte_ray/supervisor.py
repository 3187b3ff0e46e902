"""The supervisor: one attempt loop that decides every retry and where each attempt runs.

The loop (:func:`attempt_loop`) is plain Python with no Ray in it: a generator that yields an
:class:`AttemptRequest` (run this attempt, on this market) or a :class:`Sleep` (back off), and is
sent back an :class:`Outcome`. Hosts drive it: :func:`run_sync` (a blocking caller: the driver or a
sync task), :func:`run_async` (an event loop), and the supervising actor (:mod:`flyte_ray.supervisor_actor`)
for calls that must outlive a preemptible caller. Ray plumbing lives in :mod:`flyte_ray.attempt`.

Rules (the contract's "Attempts" section):

* failure kinds: *system* (node or worker lost; recorded as ``preemption`` when the node was spot
  or drained for preemption, else ``node_failure``), *oom*, *timeout*, *user*;
  ``NonRecoverableError`` fails at once;
* budgets: user retries (``retries``) for user / OOM / timeout failures; system retries
  (``Settings.system_retries``) for system failures, which never consume user retries;
* market: ``interruptible=False`` → on-demand; the final user-budget attempt → on-demand; after
  the interruptible failure threshold of system failures → on-demand; otherwise spot;
* a spot attempt that cannot start within ``max_queued_time`` moves to on-demand; an on-demand
  one fails with :class:`~flyte_ray.errors.PlacementError`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["AttemptRecord", "AttemptRequest", "Outcome", "CallState", "run_sync", "run_async", "format_history"]

from ._core.call import CallState
from ._core.drive import drive
from ._core.loop import run_attempts
from ._core.records import AttemptRecord, AttemptRequest, Kind, Outcome, format_history

# Outcome kinds (the core's enum members)
OK, USER, OOM, TIMEOUT, SYSTEM = Kind.OK, Kind.USER, Kind.OOM, Kind.TIMEOUT, Kind.SYSTEM
QUEUED_TIMEOUT, CANCELLED = Kind.QUEUED_TIMEOUT, Kind.CANCELLED


# ---------------------------------------------------------------------------------------------
# Hosts. Each drives the core's loop; attempt.py does the Ray work.


async def _sleep_blocking(seconds: float) -> None:
    time.sleep(seconds)


def run_sync(call: "Any") -> Any:
    """Drive a call's attempt loop in a blocking caller; returns the value or raises."""
    from . import attempt

    async def execute(req: AttemptRequest) -> Outcome:
        return attempt.execute_sync(call, req)

    return drive(run_attempts(call, execute, _sleep_blocking))


async def run_async(call: "Any") -> Any:
    """Drive a call's attempt loop on the running event loop."""
    from . import attempt

    return await run_attempts(call, lambda req: attempt.execute_async(call, req), asyncio.sleep)


def reset_process_state() -> None:
    """Forget per-process Ray state (remote functions, cluster view) after ``shutdown``."""
    from . import attempt, placement, reuse, supervisor_actor

    reuse.reset()  # first: it kills this driver's replica pools while Ray is still connected
    attempt.reset()
    placement.reset()
    supervisor_actor.reset()
