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

On an event loop, :func:`await_ref` hands refs to one thread per loop that waits on them in
bulk and gives the loop their values in batches (:class:`_Collector`). All of this module's
state is one process part, :class:`Waits`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import weakref
from typing import Any, Coroutine, Optional

import ray
from ray import ObjectRef
from ray.exceptions import RayError, RayTaskError

from .._core.process import PROCESS

logger = logging.getLogger("flyte_ray")

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
        self.inflight: dict = {}  # refs in flight (insertion-ordered: the oldest first)
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.worker: Optional[bool] = None
        self.loop_thread: Optional[_LoopThread] = None
        self.collectors: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Collector]" = (
            weakref.WeakKeyDictionary()
        )

    def reset(self) -> None:
        # The loop thread and in-flight refs belong to the worker process and outlive a driver's
        # shutdown/init; only what depends on the connection is forgotten.
        self.worker = None
        for c in list(self.collectors.values()):
            c.close()
        self.collectors = weakref.WeakKeyDictionary()

    def register(self, ref: Any) -> None:
        with self.lock:
            self.inflight[ref] = None
        self.changed.set()

    def unregister(self, ref: Any) -> None:
        with self.lock:
            self.inflight.pop(ref, None)


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


BLOCK_WINDOW = 64  # refs the parked main thread waits on at a time


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
            # the oldest few: any pending ref keeps the CPU released, and a window keeps each
            # round's cost flat however many children are in flight (all of them made it O(n))
            refs = list(itertools.islice(w.inflight, BLOCK_WINDOW))
        if refs:
            # Returns when these children have all finished (or after `poll`, to pick up new
            # ones); the CPU is released meanwhile. Each return costs the raylet two RPCs (the
            # worker unblocked, blocked again), so a round waits for the whole window, not one
            # child: the coroutine itself is woken by its loop's collector, not by this thread.
            # Finished refs leave the registry here, so the next round does not spin on them
            # before their awaiter unregisters them.
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=poll, fetch_local=False)
            if ready:
                with w.lock:
                    for r in ready:
                        w.inflight.pop(r, None)
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


class _Collector:
    """Per event loop: one thread waits on every ref the loop awaits, in bulk, and hands their
    values to the loop in batches.

    Ray's own ``await ref`` (and a completion callback per ref, ``ObjectRef._on_completed``) runs
    a Python callback on Ray's io thread for every ref: a GIL hand-over and a deserialisation
    each. Measured on a 2-core driver: that doubled Ray's io-thread CPU per call (~90 → ~180 us)
    and cost a fan-out of async calls ~30% of raw ``ray.get`` throughput. Here one thread sits in
    ``ray.wait`` over the oldest :data:`WINDOW` refs still pending (GIL released), takes what
    finished with one ``ray.get`` (values deserialised in bulk, as ``ray.get`` of a list does),
    and wakes the loop once per batch. Refs past the window take turns in the other half of it,
    so a window full of long calls never hides a short call's completion for long.
    """

    WINDOW = 2000  # refs per ray.wait (its cost is linear in the list it is handed)
    BATCH = 128  # completions to wait for before handing a batch over (or BATCH_WAIT_S; few: 1)
    BATCH_WAIT_S = 0.01  # at most this long: a lone call's value is handed over at once
    IDLE_WAIT_S = 0.02  # while only long calls are pending (a new call's ref joins the next wait)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.incoming: list = []  # (ref, future), appended on the loop thread
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="flyte-ray-collector", daemon=True)
        self.thread.start()

    def future(self, ref: Any) -> asyncio.Future:
        fut = self.loop.create_future()
        with self.lock:
            self.incoming.append((ref, fut))
        if not self.wake.is_set():
            self.wake.set()
        return fut

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def _run(self) -> None:
        pending: list = []  # (ref, future), oldest first
        turn = 0  # where the rotating half of the window starts, past its fixed half
        half = self.WINDOW // 2
        wait_s = self.BATCH_WAIT_S  # doubles while nothing finishes (long calls), up to IDLE_WAIT_S
        while not self.closed:
            with self.lock:
                if self.incoming:
                    pending.extend(self.incoming)
                    self.incoming = []
            if not pending:
                self.wake.wait(1.0)
                self.wake.clear()
                if self.loop.is_closed():
                    return
                continue
            # the window: the oldest refs, and (past WINDOW) a slice of the rest taking turns
            if len(pending) <= self.WINDOW:
                lo = hi = len(pending)
            else:
                turn %= len(pending) - half
                lo, hi = half + turn, min(half + turn + half, len(pending))
                turn += half
            window = pending[:half] + pending[lo:hi] if lo < len(pending) else pending
            live = [p for p in window if not p[1].cancelled()]  # a cancelled awaiter gave up
            gone = set()
            if len(live) < len(window):
                gone = {id(p) for p in window if p[1].cancelled()}
            if live:
                refs = list(dict.fromkeys(r for r, _ in live))  # a ref may have several awaiters
                try:
                    # a big fan-out is handed over in batches; a few calls each as it finishes
                    want = 1 if len(refs) < 64 else min(len(refs) // 8, self.BATCH)
                    ready, _ = ray.wait(refs, num_returns=want, timeout=wait_s)
                except Exception as e:  # noqa: BLE001
                    if not ray.is_initialized():  # Ray shut down under us: nobody gets a value
                        self._hand_over([(f, _Raised(e)) for _, f in pending])
                        return
                    # never silently: these awaiters get the error, the others go on
                    logger.warning("flyte-ray: waiting on %d refs failed: %s: %s", len(refs), type(e).__name__, e)
                    self._hand_over([(f, _Raised(e)) for _, f in live])
                    ready = []
                    gone.update(id(p) for p in live)
                wait_s = self.BATCH_WAIT_S if ready or self.incoming else min(wait_s * 2, self.IDLE_WAIT_S)
                if ready:
                    done = set(ready)
                    batch = [p for p in live if p[0] in done]
                    gone.update(id(p) for p in batch)
                    try:
                        results = _values(batch)
                    except Exception as e:  # noqa: BLE001 - never a silent hang: its awaiters get it
                        logger.warning("flyte-ray: reading %d results failed: %s: %s", len(batch), type(e).__name__, e)
                        results = [(f, _Raised(e)) for _, f in batch]
                    self._hand_over(results)
            if gone:
                if lo >= len(pending):  # the window was all of it
                    pending = [p for p in pending if id(p) not in gone]
                else:  # only the window's two parts change: the rest is copied as it is
                    head = [p for p in pending[:half] if id(p) not in gone]
                    part = [p for p in pending[lo:hi] if id(p) not in gone]
                    pending = head + pending[half:lo] + part + pending[hi:]

    def _hand_over(self, results: list) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle, results)
        except RuntimeError:  # the loop is closed: nobody awaits these any more
            self.closed = True


def _values(batch: list) -> list:
    """``(future, value or _Raised(error))`` for finished ``(ref, future)`` pairs, all fetched at once."""
    return [(f, v) for (_, f), v in zip(batch, _fetch([r for r, _ in batch]))]


#: False once the private fetch below fell back to ray.get (tests/test_core.py checks it stays True)
PRIVATE_FETCH_OK = True


def _fetch(refs: list) -> list:
    """The values of finished refs, each its value or a :class:`_Raised` with the error ``ray.get``
    would raise for it (one failed ref does not hide the others' values).

    PRIVATE Ray API (2.60): ``Worker.get_objects``, what ``ray.get`` calls after its checks. Used
    because ``ray.get`` in an async actor's process (the supervising actor, an async warm replica)
    logs "Using blocking ray.get inside async actor" whatever the thread -- and this get runs on
    the collector's own thread, never on the actor's loop; a user seeing that warning should be
    seeing it about their own code. Falls back to ``ray.get`` if a Ray upgrade changes it."""
    global PRIVATE_FETCH_OK
    if PRIVATE_FETCH_OK:
        try:
            values, _ = ray._private.worker.global_worker.get_objects(refs, None)
        except (AttributeError, TypeError):  # a Ray upgrade changed it
            PRIVATE_FETCH_OK = False
        except Exception:  # noqa: BLE001 - it raised for a value: ray.get below says which
            pass
        else:
            out: list = []
            for v in values:
                if isinstance(v, RayTaskError):
                    out.append(_Raised(v.as_instanceof_cause()))  # as ray.get raises it
                elif isinstance(v, RayError):
                    out.append(_Raised(v))
                else:
                    out.append(v)
            return out
    try:
        return ray.get(refs)
    except Exception:  # noqa: BLE001 - some failed: each its own value or error
        out = []
        for r in refs:
            try:
                out.append(ray.get(r))
            except Exception as e:  # noqa: BLE001
                out.append(_Raised(e))
        return out


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _settle(results: list) -> None:  # on the loop
    for fut, value in results:
        if fut.done():  # cancelled meanwhile
            continue
        if isinstance(value, _Raised):
            fut.set_exception(value.error)
        else:
            fut.set_result(value)


def _future(ref: Any) -> Any:
    if type(ref) is not ObjectRef:  # Ray client refs and anything else: Ray's own awaitable
        return ref
    loop = asyncio.get_running_loop()
    collectors = _waits().collectors
    c = collectors.get(loop)
    if c is None or c.closed:
        c = collectors[loop] = _Collector(loop)
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
