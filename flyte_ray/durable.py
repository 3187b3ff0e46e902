"""flyte-sdk's ``flyte.durable``: time that survives retries.

``time.time()``, ``datetime.now()`` and ``time.sleep()`` give a retried attempt different answers
than the attempt before it; these give the same ones, through :func:`flyte_ray.trace`'s replay
(:mod:`flyte_ray.replay`):

* :func:`time` -- the first attempt's ``time.time()`` at this point of the task (the n-th call
  of the attempt gets the n-th recorded value).
* :func:`now` -- the same instant as a timezone-aware UTC ``datetime``.
* :func:`sleep` -- sleeps until ``seconds`` after the moment the *first* attempt reached this
  sleep: a retry that comes back after the deadline does not sleep again, one that comes back
  earlier sleeps only what is left. ``await flyte_ray.durable.sleep.aio(s)`` in async code.

Outside a task they are the plain clock and sleep.
"""

from __future__ import annotations

import asyncio
import datetime
import time as _time
from typing import Awaitable, Union

from .checkpoint.syncaio import SyncAioFunction
from .compat import trace

__all__ = ["now", "sleep", "time"]

Seconds = Union[int, float, datetime.timedelta]


@trace
def _clock() -> float:
    return _time.time()


@trace
def _sleep_started() -> float:
    return _time.time()


def _seconds(seconds: Seconds) -> float:
    if isinstance(seconds, datetime.timedelta):
        return seconds.total_seconds()
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(
            f"durable.sleep.seconds: expected seconds (int, float) or timedelta, got {type(seconds).__name__}"
        )
    if seconds != seconds or seconds < 0:
        raise ValueError(f"durable.sleep.seconds: expected a number >= 0, got {seconds!r}")
    return float(seconds)


def _time_now() -> float:
    """The first attempt's clock reading at this point of the task (module docstring)."""
    return _clock()


def _now() -> datetime.datetime:
    """:func:`time` as a timezone-aware UTC datetime."""
    return datetime.datetime.fromtimestamp(_clock(), tz=datetime.timezone.utc)


def _left(seconds: Seconds) -> float:
    s = _seconds(seconds)
    return max(0.0, _sleep_started() + s - _time.time())


def _sleep(seconds: Seconds) -> None:
    """Sleep until ``seconds`` after the first attempt reached this sleep (module docstring)."""
    left = _left(seconds)
    if left:
        _time.sleep(left)


async def _sleep_aio(seconds: Seconds) -> None:
    left = await asyncio.to_thread(_left, seconds)
    if left:
        await asyncio.sleep(left)


class _Sleep(SyncAioFunction[None]):
    """``durable.sleep(s)`` blocks; ``await durable.sleep.aio(s)`` sleeps on the event loop."""

    def aio(self, seconds: Seconds) -> Awaitable[None]:
        return _sleep_aio(seconds)


time = SyncAioFunction(_time_now)
now = SyncAioFunction(_now)
sleep = _Sleep(_sleep)
