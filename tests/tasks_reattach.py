"""Tasks for the supervising-actor tests."""

import asyncio
import os
import time

import flyte_ray as flyte

spot = flyte.TaskEnvironment(name="reattach", interruptible=True)
steady = flyte.TaskEnvironment(name="steady")


@steady.task
def child(i: int, outdir: str, seconds: float) -> int:
    time.sleep(seconds)
    with open(os.path.join(outdir, f"child-{i}"), "a") as f:  # a counter on disk
        f.write("ran\n")
    return i * 10


@spot.task(retries=1)
async def parent(n: int, outdir: str, seconds: float) -> list:
    c = flyte.ctx()
    with open(os.path.join(outdir, "parent"), "a") as f:
        f.write(f"{c.attempt} {c.node_id}\n")
    return list(await asyncio.gather(*(child.aio(i, outdir, seconds) for i in range(n))))


@spot.task(retries=1)
def sync_parent(n: int, outdir: str, seconds: float) -> list:
    return [child(i, outdir, seconds) for i in range(n)]


@spot.task(retries=1)
async def leaf(i: int) -> int:
    await asyncio.sleep(0.01)
    return i


@spot.task(retries=1)
async def middle(i: int) -> int:
    return sum(await asyncio.gather(*(leaf.aio(i * 10 + j) for j in range(4))))


@spot.task(retries=1)
async def top(n: int) -> int:
    return sum(await asyncio.gather(*(middle.aio(i) for i in range(n))))


@steady.task
def quick(i: int, outdir: str) -> int:
    with open(os.path.join(outdir, f"quick-{i}"), "a") as f:  # a counter on disk
        f.write("ran\n")
    return i + 1


@spot.task(retries=1)
def short_parent(n: int, outdir: str) -> list:
    """Calls a short task n times, then (first attempt only) waits to be preempted."""
    out = [quick(i, outdir) for i in range(n)]
    if flyte.ctx().attempt == 0:
        with open(os.path.join(outdir, "ready"), "w") as f:
            f.write(flyte.ctx().node_id)
        deadline = time.time() + 120
        while time.time() < deadline:  # the test preempts this attempt's node meanwhile
            time.sleep(0.2)
    return out
