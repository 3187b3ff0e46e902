"""Run an ``async`` implementation to completion from blocking code, on the caller's thread.

flyte-ray has one implementation of each behaviour, written ``async`` (the attempt loop, the
executors, the cache flow, delegation to the supervising actor). Its waits all go through a
*port* (:mod:`flyte_ray._ray.port`): on an event loop the port awaits, and for a blocking caller
the port blocks in place (``ray.get`` / ``ray.wait`` / ``time.sleep``) and never suspends the
coroutine. Such a coroutine finishes on its first step, so :func:`drive` is the whole sync
facade: no event loop, no thread hop.

Why not a background event loop per process (flyte-sdk's facade)? Two measured reasons:

* inside a Ray worker the task's CPU is released only while the worker's *main thread* blocks in
  ``ray.get`` / ``ray.wait`` (``flyte_ray._ray.waiting``): a sync task waiting on a child through a
  background loop would hold its CPU (a one-CPU node deadlocks), so the main thread must do the
  blocking wait itself;
* the hop to a loop thread and back costs a thread wake-up each way: see
  ``benchmarks/facade.py`` and the figures in ``docs/architecture.md``.
"""

from __future__ import annotations

from typing import Any, Coroutine

__all__ = ["drive", "SuspendedError"]


class SuspendedError(RuntimeError):
    """A coroutine driven by :func:`drive` tried to wait on an event loop: a bug (a wait that did
    not go through the blocking port)."""


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to completion here; it must not suspend (see the module docstring)."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise SuspendedError(
        f"{getattr(coro, '__qualname__', coro)} awaited {yielded!r} while driven synchronously; "
        "every wait of a blocking caller must go through the blocking port"
    )
