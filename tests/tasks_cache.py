"""Tasks used by test_cache.py (a module, so workers import them by reference).

Every task appends one line to ``counter`` (a file path) per execution, so a test can count
how often the body really ran; the path is also part of the cache key, which isolates tests.
"""

import asyncio
import dataclasses
import os
import time

import flyte_ray as flyte
from flyte_ray import Cache

env = flyte.TaskEnvironment(name="cache", resources=flyte.Resources(cpu=1), cache="auto")


def bump(counter: str) -> int:
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")
    return count(counter)


def count(counter: str) -> int:
    try:
        with open(counter) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


@env.task
def add(counter: str, x: int, y: int = 10) -> dict:
    bump(counter)
    return {"sum": x + y, "pid": os.getpid()}


@env.task(cache=Cache(ignored_inputs=("note",)))
def with_note(counter: str, x: int, note: str = "") -> int:
    bump(counter)
    return x * 2


@env.task
def stamp(counter: str, x: int) -> int:
    """Returns how many times it has run so far (differs on every real execution)."""
    return bump(counter) * 1000 + x


@env.task(cache=Cache(serialize=True))
def slow(counter: str, x: int, delay: float = 1.0) -> int:
    bump(counter)
    time.sleep(delay)
    return x + 1


@env.task(cache=Cache(serialize=True))
async def aslow(counter: str, x: int, delay: float = 1.0) -> list:
    bump(counter)
    await asyncio.sleep(delay)
    return [x, x]


@env.task(cache=Cache(serialize=True))
def flaky(counter: str, fail_times: int) -> str:
    """Fails on its first ``fail_times`` executions."""
    n = bump(counter)
    time.sleep(0.3)
    if n <= fail_times:
        raise ValueError(f"failure {n}")
    return f"ok after {n}"


@env.task(cache="disable")
def sibling(counter: str, x: int) -> tuple:
    """Not cached itself; calls the serialized cached ``slow`` (from its own worker process)."""
    return os.getpid(), slow(counter, x, 2.0)


@env.task(cache="disable")
async def two_siblings(counter: str, x: int) -> list:
    # small siblings run at the same time (so in two worker processes); ``slow`` needs the whole
    # CPU, which it only gets while both siblings wait without holding theirs
    small = sibling.override(resources=flyte.Resources(cpu=0.1))
    return list(await asyncio.gather(small.aio(counter, x), small.aio(counter, x)))


@dataclasses.dataclass
class Point:
    x: float
    y: float
    tags: tuple = ()


@env.task
def structured(counter: str, p: Point, model: object, arr: object = None) -> float:
    bump(counter)
    return p.x + p.y


@env.task(cache=Cache(ignored_inputs=("nope",)))
def bad_ignored(counter: str, x: int) -> int:
    return x


@env.task
def takes_anything(counter: str, thing: object) -> int:
    bump(counter)
    return 1


@env.task(cache="disable")
def parent_calls_cached(counter: str, x: int) -> list:
    """A nested cached call inside a task, twice: the second is a hit in the worker."""
    return [add(counter, x)["sum"], add(counter, x)["sum"]]


try:
    import pydantic

    class Model(pydantic.BaseModel):
        name: str
        weights: list[float] = []
except ImportError:  # pragma: no cover
    Model = None
