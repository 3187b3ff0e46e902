"""Waiting on child calls inside a Ray worker without holding the worker's CPU.

Ray releases a task's CPU while the task's *main thread* is blocked in ``ray.get`` / ``ray.wait``,
so a parent waiting for its children lets them run, even on a one-CPU node. It does not do so for
``ray.get`` on other threads, nor while an event loop awaits an ``ObjectRef`` (measured: both
deadlock a one-CPU node). So inside a worker:

* an async task's coroutine runs on a helper thread's event loop, and the main thread parks in
  :func:`block_on`, which sits in ``ray.wait`` over every child ref in flight (the registry of
  :class:`Waits`) — the CPU is released exactly while children are pending;
* a blocking call made off the main thread registers its ref too, so the parked main thread
  waits on it and releases the CPU.

On an event loop, :func:`await_ref` hands Ray's completion callbacks to the loop in batches
(:class:`_Completions`). All of this module's state is one process part, :class:`Waits`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import weakref
from typing import Any, Coroutine, Optional

import ray
from ray import ObjectRef
from ray.exceptions import RayTaskError

from .._core.process import PROCESS

__all__ = [
    "in_worker",
    "is_worker",
    "on_main_thread",
    "block_on",
    "worker_loop",
    "run_coroutine_in_worker",
    "wait_blocking",
    "await_ref",
    "Waits",
]


def in_worker() -> bool:
    """True inside a Ray task/actor worker process (not the driver, not a Ray client)."""
    try:
        return ray.is_initialized() and ray._private.worker.global_worker.mode == ray.WORKER_MODE
    except Exception:
        return False


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class _LoopThread:
    """One event loop on a daemon thread, reused by every async attempt of a worker process."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()


class Waits:
    """This process's waiting state: refs in flight (workers), the worker's loop thread, the
    per-loop completion batchers, and whether this process is a worker."""

    reset_order = 40

    def __init__(self) -> None:
        self.inflight: set = set()
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.worker: Optional[bool] = None
        self.loop_thread: Optional[_LoopThread] = None
        self.completions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Completions]" = (
            weakref.WeakKeyDictionary()
        )

    def reset(self) -> None:
        # The loop thread and in-flight refs belong to the worker process and outlive a driver's
        # shutdown/init; only what depends on the connection is forgotten.
        self.worker = None
        self.completions = weakref.WeakKeyDictionary()

    def register(self, ref: Any) -> None:
        with self.lock:
            self.inflight.add(ref)
        self.changed.set()

    def unregister(self, ref: Any) -> None:
        with self.lock:
            self.inflight.discard(ref)


# A part lives as long as the process (its reset empties it), so one reference serves every call.
_WAITS = PROCESS.part(Waits)


def _waits() -> Waits:
    return _WAITS


def is_worker() -> bool:
    """``in_worker()``, cached: a process never changes role."""
    w = _WAITS.worker
    if w is None:
        w = _WAITS.worker = in_worker()
    return w


def needs_registration() -> bool:
    """A wait here would not release the CPU: a worker thread other than the main thread."""
    return is_worker() and not on_main_thread()


def block_on(fut: concurrent.futures.Future, poll: float = 0.2, timeout: Optional[float] = None) -> Any:
    """Block the worker's main thread until ``fut`` is done, releasing the CPU while children run.
    Raises ``concurrent.futures.TimeoutError`` after ``timeout`` seconds."""
    import time

    w = _waits()
    fut.add_done_callback(lambda _f: w.changed.set())
    end = None if timeout is None else time.monotonic() + timeout
    while not fut.done():
        if end is not None and time.monotonic() >= end:
            raise concurrent.futures.TimeoutError()
        w.changed.clear()
        with w.lock:
            refs = list(w.inflight)
        if refs:
            # Returns when a child finishes (or after `poll`, to pick up new children); the CPU
            # is released meanwhile. Finished refs leave the registry here, so the next round
            # does not spin on them before their awaiter unregisters them.
            ready, _ = ray.wait(refs, num_returns=1, timeout=poll, fetch_local=False)
            if ready:
                with w.lock:
                    w.inflight.difference_update(ready)
        else:
            # Nothing in flight: the task is computing, so it keeps its CPU.
            w.changed.wait(poll)
    return fut.result()


def worker_loop() -> asyncio.AbstractEventLoop:
    """The worker's event loop (on its own daemon thread)."""
    w = _waits()
    if w.loop_thread is None:
        with w.lock:
            if w.loop_thread is None:
                w.loop_thread = _LoopThread("flyte-ray-loop")
    return w.loop_thread.loop


def run_coroutine_in_worker(coro: Coroutine) -> Any:
    """Run an async task's coroutine from a worker's main thread (see module docstring).

    A ``KeyboardInterrupt`` (how ``ray.cancel`` reaches a running task) cancels the coroutine.
    """
    fut = asyncio.run_coroutine_threadsafe(coro, worker_loop())
    try:
        return block_on(fut)
    except KeyboardInterrupt:
        fut.cancel()
        raise


def wait_blocking(ref: Any, timeout: Optional[float]) -> Any:
    """``ray.get(ref, timeout)`` that still releases the CPU when called off the main thread."""
    if needs_registration():
        w = _waits()
        w.register(ref)
        try:
            return ray.get(ref, timeout=timeout)
        finally:
            w.unregister(ref)
    return ray.get(ref, timeout=timeout)


class _Completions:
    """Per event loop: hands Ray's completion callbacks to the loop in batches.

    ``await ref`` costs, per ref, a ``concurrent.futures.Future`` chained to an asyncio future and
    one ``call_soon_threadsafe`` (a self-pipe write that wakes the loop) per completion. Here a
    completion is appended to a list on Ray's callback thread and the loop is woken once per
    batch: with thousands of children in flight most completions ride on a wake-up already due.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ready: list = []
        self.lock = threading.Lock()
        self.scheduled = False

    def future(self, ref: Any) -> asyncio.Future:
        fut = self.loop.create_future()
        fut.object_ref = ref  # type: ignore[attr-defined]  # keeps the ref (and its value) alive
        ref._on_completed(functools.partial(self._done, fut))
        return fut

    def _done(self, fut: asyncio.Future, data: Any) -> None:  # on Ray's callback thread
        with self.lock:
            self.ready.append((fut, data))
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody awaits these any more
            pass

    def _drain(self) -> None:
        with self.lock:
            batch, self.ready = self.ready, []
            self.scheduled = False
        for fut, data in batch:
            if fut.done():  # cancelled meanwhile
                continue
            if isinstance(data, RayTaskError):
                fut.set_exception(data.as_instanceof_cause())  # as ``await ref`` raises it
            elif isinstance(data, BaseException):
                fut.set_exception(data)
            else:
                fut.set_result(data)


def _future(ref: Any) -> Any:
    if type(ref) is not ObjectRef:  # Ray client refs and anything else: Ray's own awaitable
        return ref
    loop = asyncio.get_running_loop()
    comps = _waits().completions
    c = comps.get(loop)
    if c is None:
        c = comps[loop] = _Completions(loop)
    return c.future(ref)


def await_ref(ref: Any) -> Any:
    """An awaitable of an ObjectRef's value; inside a worker, registered so the parked main thread
    releases the CPU. (A plain function: outside workers the future itself, no coroutine frame.)"""
    if is_worker():
        return _registered(ref)
    return _future(ref)


async def _registered(ref: Any) -> Any:
    w = _waits()
    w.register(ref)
    try:
        return await _future(ref)
    finally:
        w.unregister(ref)
