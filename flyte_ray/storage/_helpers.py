"""Small helpers of :mod:`.objects`: local files written beside their target, a thread whose
result is joined later, deadlines as ``timeout`` arguments, bounded concurrent transfers."""

from __future__ import annotations

import asyncio
import math
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from .limits import remaining

T = TypeVar("T")


def left(deadline: float | None) -> float:
    """Seconds left until ``deadline`` as a ``timeout`` argument (no deadline: ``math.inf``)."""
    left = remaining(deadline)
    return math.inf if left is None else left


#: Transfers in flight at once in :func:`gather_bounded` (fsspec's default batch size is 128).
BATCH = 64


async def gather_bounded(makers: Sequence[Callable[[], Awaitable[Any]]], limit: int = BATCH) -> None:
    """Await ``make()`` for every maker, at most ``limit`` at a time. Unlike fsspec's batched
    ``_put``/``_get``, cancelling this (a time limit) cancels every transfer still running."""
    sem = asyncio.Semaphore(limit)

    async def one(make: Callable[[], Awaitable[Any]]) -> None:
        async with sem:
            await make()

    await asyncio.gather(*(one(m) for m in makers))


def write_beside(path: str, data: bytes) -> str:
    """``data`` in a new temporary file next to ``path`` (same file system, so it can be renamed
    or hard-linked onto it in one step); its name. Nothing is left behind if writing fails."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
    except BaseException:
        silent_unlink(tmp)
        raise
    return tmp


def silent_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Future(Generic[T]):
    """``fn()`` running in a daemon thread; :meth:`result` joins it and returns or raises."""

    def __init__(self, fn: Callable[[], T], name: str = "flyte-ray-storage"):
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as e:  # noqa: BLE001 -- handed to the caller
            self._error = e

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def wait_quietly(self) -> None:
        self._thread.join()
