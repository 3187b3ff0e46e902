"""Ports: how flyte-ray's one ``async`` implementation waits, on a loop or in a blocking caller.

Every wait of the call path (an attempt's result, the next item of a streaming attempt, a
backoff, a blocking helper such as a GCS lookup, a shared in-flight call) goes through a port:

* :class:`LoopPort` awaits on the running event loop; blocking helpers run in the loop's default
  executor, never on the loop thread;
* :class:`BlockingPort` blocks the calling thread in place (``ray.get`` / ``ray.wait`` /
  ``time.sleep``) and never suspends the coroutine, so :func:`flyte_ray._core.drive.drive` runs
  the same coroutine to completion on the caller's thread. In a Ray worker that thread is the
  one whose blocking wait releases the task's CPU (see :mod:`.waiting`).

Both raise :class:`WaitTimeout` when a limit passes and :class:`EndOfStream` when a streaming
attempt ends without another item; cancellation arrives as ``asyncio.CancelledError`` on a loop
and as ``KeyboardInterrupt`` (how ``ray.cancel`` and Ctrl-C reach a blocking caller) otherwise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any, Callable, Optional

import ray
import ray.exceptions as rex

from . import waiting

__all__ = ["Port", "LoopPort", "BlockingPort", "WaitTimeout", "EndOfStream", "INTERRUPTS", "LOOP", "BLOCKING"]

#: How a caller's cancellation arrives, on a loop and in a blocking caller.
INTERRUPTS = (asyncio.CancelledError, KeyboardInterrupt)


# concurrent.futures.TimeoutError is the builtin TimeoutError from Python 3.11 on, not before.
_TIMEOUT_BASES = (
    (TimeoutError,)
    if concurrent.futures.TimeoutError is TimeoutError
    else (concurrent.futures.TimeoutError, TimeoutError)
)


class WaitTimeout(*_TIMEOUT_BASES):  # type: ignore[misc]
    """A port's wait passed its limit."""


class EndOfStream(Exception):
    """A streaming attempt ended without another item (its worker went away)."""


class Port:
    """The waits the call path needs (see the module docstring)."""

    blocking: bool = False

    async def get(self, ref: Any, timeout: Optional[float] = None) -> Any:
        """The value of ``ref`` (Ray errors raise as Ray raises them)."""
        raise NotImplementedError

    async def next(self, gen: Any, timeout: Optional[float] = None) -> Any:
        """The next ref of a streaming generator."""
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, which may block (GCS lookups, storage I/O): never on a loop thread."""
        raise NotImplementedError

    async def wait_future(self, fut: concurrent.futures.Future, timeout: Optional[float] = None) -> Any:
        """Wait until ``fut`` is done and return its result (raises its exception). Cancelling the
        waiter never cancels ``fut``: it may be shared."""
        raise NotImplementedError


class LoopPort(Port):
    """Waits on the running event loop."""

    blocking = False

    def get(self, ref: Any, timeout: Optional[float] = None) -> Any:
        # Without a limit, the awaitable itself (no coroutine frame of ours per call in flight:
        # at 100,000 calls in flight every frame counts)
        if timeout is None:
            return waiting.await_ref(ref)
        return self._get_within(ref, timeout)

    async def _get_within(self, ref: Any, timeout: float) -> Any:
        task = asyncio.ensure_future(waiting.await_ref(ref))
        done, _ = await asyncio.wait({task}, timeout=max(timeout, 0.0))
        if not done:
            task.cancel()
            raise WaitTimeout(f"not done within {timeout:.1f}s")
        return task.result()

    async def next(self, gen: Any, timeout: Optional[float] = None) -> Any:
        fut = asyncio.ensure_future(gen.__anext__())
        done, _ = await asyncio.wait({fut}, timeout=None if timeout is None else max(timeout, 0.0))
        if not done:
            fut.cancel()
            raise WaitTimeout(f"no item within {timeout:.1f}s")
        try:
            return fut.result()
        except StopAsyncIteration:
            raise EndOfStream() from None

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def wait_future(self, fut: concurrent.futures.Future, timeout: Optional[float] = None) -> Any:
        if not fut.done():
            loop = asyncio.get_running_loop()
            done = loop.create_future()

            def settle() -> None:
                if not done.done():
                    done.set_result(None)

            def wake(_f: concurrent.futures.Future) -> None:
                try:
                    loop.call_soon_threadsafe(settle)
                except RuntimeError:  # the waiter's loop is gone
                    pass

            fut.add_done_callback(wake)
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout)
            except asyncio.TimeoutError:
                raise WaitTimeout(f"not done within {timeout}s") from None
        return fut.result()


class BlockingPort(Port):
    """Blocks the calling thread; the coroutine never suspends."""

    blocking = True

    async def get(self, ref: Any, timeout: Optional[float] = None) -> Any:
        try:
            return waiting.wait_blocking(ref, None if timeout is None else max(timeout, 0.0))
        except rex.GetTimeoutError:
            raise WaitTimeout(f"not done within {timeout:.1f}s") from None

    async def next(self, gen: Any, timeout: Optional[float] = None) -> Any:
        ready, _ = ray.wait([gen], timeout=None if timeout is None else max(timeout, 0.0))
        if not ready:
            raise WaitTimeout(f"no item within {timeout:.1f}s")
        try:
            return next(gen)
        except StopIteration:
            raise EndOfStream() from None

    async def sleep(self, seconds: float) -> None:
        time.sleep(seconds)  # noqa: ASYNC251 - the blocking port blocks by design (module docstring)

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    async def wait_future(self, fut: concurrent.futures.Future, timeout: Optional[float] = None) -> Any:
        try:
            if waiting.is_worker() and waiting.on_main_thread():
                return waiting.block_on(fut, timeout=timeout)  # releases the CPU while children run
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if fut.done():  # the call's own error happens to be a TimeoutError
                raise
            raise WaitTimeout(f"not done within {timeout}s") from None


#: The two ports (stateless: one of each per process).
LOOP = LoopPort()
BLOCKING = BlockingPort()
