"""Tasks of tests/test_run_records.py."""

import asyncio
import os
import time

import flyte_ray as flyte

spot = flyte.TaskEnvironment(name="rec_spot", interruptible=True, resources=flyte.Resources(cpu=1))
od = flyte.TaskEnvironment(name="rec_od", resources=flyte.Resources(cpu=1))
light = flyte.TaskEnvironment(name="rec_light", resources=flyte.Resources(cpu=0.5))
warm = flyte.TaskEnvironment(name="rec_warm", resources=flyte.Resources(cpu=0.5),
                             reusable=flyte.ReusePolicy(replicas=1, idle_ttl=60))


@spot.task(retries=1)
def steps(flag: str, n: int = 40) -> int:
    """Checkpoints every 10 steps; the test preempts its node once the first file appears."""
    c = flyte.ctx()
    raw = c.checkpoint.read()
    step = int(raw) if raw else 0
    with open(flag + f".node{c.attempt}", "w") as f:
        f.write(c.node_id)
    while step < n:
        time.sleep(0.1)
        step += 1
        if step % 10 == 0:
            c.checkpoint.write(str(step).encode())
        if c.attempt == 0 and step >= 25:
            time.sleep(600)  # the test preempts this node meanwhile
    return step


@light.task(retries=1)
def flaky(flag: str) -> str:
    if not os.path.exists(flag):
        open(flag, "w").write("x")
        raise ValueError("the first attempt fails on purpose, a user retry follows")
    return "ok"


@light.task(cache="auto")
def cached(x: int) -> int:
    return x * 10


@light.task
def leaf(x: int) -> int:
    return x + 1


@spot.task(retries=1)
async def hosting(n: int) -> int:
    """A spot parent: its children's attempt loops run in the supervising actor (their runtime
    is unknown), so their records are written there."""
    return sum(await asyncio.gather(*(leaf.aio(i) for i in range(n))))


@warm.task
def on_replica(x: int) -> int:
    return x * 2


@od.task
async def parent(flag: str) -> list:
    a, b = await asyncio.gather(steps.aio(flag), flaky.aio(flag + ".flaky"))
    c = await cached.aio(7)
    d = await cached.aio(7)
    e = await hosting.aio(3)
    f = await on_replica.aio(5)
    return [a, b, c, d, e, f]
