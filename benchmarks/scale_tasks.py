"""Tasks and measuring helpers for benchmarks/scale.py (a module: workers import it by reference)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

import ray

import flyte_ray as flyte

env = flyte.TaskEnvironment(name="scale")


@env.task
def noop(x: int) -> int:
    return x


@ray.remote(max_retries=0)
def raw_noop(x: int) -> int:
    return x


def rss() -> int:
    """This process's resident set size in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Samples this process's RSS every 10 ms while in the ``with`` block: ``base`` and ``peak``."""

    def __init__(self) -> None:
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss())


def measure(n: int, fn: Callable[[], Any]) -> dict:
    """Run ``fn`` (a fan-out of ``n`` calls, which returns their values); throughput and memory."""
    import gc

    gc.collect()
    with PeakRSS() as mem:
        t = time.perf_counter()
        values = fn()
        dt = time.perf_counter() - t
    return _figures(n, dt, mem, values)


def _figures(n: int, dt: float, mem: PeakRSS, values: list) -> dict:
    assert len(values) == n and values[0] == 0 and values[-1] == n - 1, "wrong results"
    return {"n": n, "seconds": dt, "per_s": n / dt, "peak_mib": mem.peak / 2**20,
            "grew_mib": (mem.peak - mem.base) / 2**20, "per_call_b": max(mem.peak - mem.base, 0) / n}


def raw_fan(n: int) -> dict:
    return measure(n, lambda: ray.get([raw_noop.remote(i) for i in range(n)]))


def fr_gather(n: int) -> dict:
    async def go():
        return await asyncio.gather(*(noop.aio(i) for i in range(n)))

    return measure(n, lambda: asyncio.run(go()))


def fr_map(n: int) -> dict:
    return measure(n, lambda: list(flyte.map(noop, range(n))))


@ray.remote(max_retries=0)
def raw_parent(n: int) -> dict:
    """The raw baseline from inside a task: a plain Ray task fanning out ``n`` plain Ray tasks."""
    return raw_fan(n)


@env.task
async def fr_parent(n: int) -> dict:
    """flyte-ray from inside an async parent task: ``n`` children gathered."""
    with PeakRSS() as mem:
        t = time.perf_counter()
        values = await asyncio.gather(*(noop.aio(i) for i in range(n)))
        dt = time.perf_counter() - t
    return _figures(n, dt, mem, values)


spot = flyte.TaskEnvironment(name="scale-spot", interruptible=True)


@spot.task
async def spot_parent(n: int) -> int:
    """A parent on spot fanning out ``n`` children (supervised by the supervising actors)."""
    return sum(await asyncio.gather(*(noop.aio(i) for i in range(n))))
