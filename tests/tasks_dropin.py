"""Flyte 2 style tasks for flyte-sdk's durable time, trace replay, custom context and reports."""

import json
import time

import flyte_ray as flyte
import flyte_ray.durable
import flyte_ray.report

env = flyte.TaskEnvironment(name="dropin")


def _note(path: str, **facts) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(facts) + "\n")


@env.task(retries=1)
def durable_retry(marker: str, seconds: float) -> dict:
    c = flyte.ctx()
    t = flyte_ray.durable.time()
    when = flyte_ray.durable.now()
    t0 = time.monotonic()
    flyte_ray.durable.sleep(seconds)
    slept = time.monotonic() - t0
    _note(marker, attempt=c.attempt, t=t, iso=when.isoformat(), slept=slept)
    if c.attempt == 0:
        raise RuntimeError("fail once after the sleep")
    return {"t": t, "slept": slept}


@env.task(retries=1)
async def durable_retry_async(marker: str, seconds: float) -> float:
    c = flyte.ctx()
    t0 = time.monotonic()
    await flyte_ray.durable.sleep.aio(seconds)
    slept = time.monotonic() - t0
    _note(marker, attempt=c.attempt, slept=slept)
    if c.attempt == 0:
        raise RuntimeError("fail once after the sleep")
    return slept


@flyte.trace
def step(i: int, marker: str) -> int:
    _note(marker, step=i)
    return i * 10


@flyte.trace
async def pair(i: int, marker: str) -> tuple:
    _note(marker, pair=i)
    return (i, str(i))  # not a JSON value: recorded as a signed pickle


@env.task(retries=2)
async def traced_steps(marker: str) -> list:
    c = flyte.ctx()
    out = [step(i, marker) for i in range(3)]
    out.append(await pair(7, marker))
    out.append(step(0, marker))  # the same inputs again: its own record (the 2nd such call)
    if c.attempt < 2:
        raise RuntimeError(f"fail attempt {c.attempt}")
    return out


@env.task
async def leaf() -> dict:
    return flyte.ctx().custom_context


@env.task
async def root_cc() -> list:
    a = await leaf()
    with flyte.custom_context(trace_id="override", extra="x"):
        b = await leaf()
        inside = flyte.get_custom_context()
    c = await leaf()
    return [a, b, inside, c, flyte.ctx().custom_context]


@env.task(report=True)
async def reporting() -> str:
    await flyte_ray.report.replace.aio("<p>one</p>")
    tab = flyte_ray.report.get_tab("Tab 2")
    tab.log("<b>two</b>")
    await flyte_ray.report.flush.aio()
    flyte_ray.report.log("<i>after the flush</i>")  # stored when the attempt ends
    return "ok"


@env.task
def not_reporting() -> str:
    flyte_ray.report.log("<p>kept nowhere</p>")
    flyte_ray.report.flush()
    return "ok"


@env.task
def action_names() -> tuple:
    a = flyte.ctx().action
    return (str(a), a.name, a.run_name)


@env.task
def base_dir() -> str:
    return flyte.ctx().run_base_dir


# A pool larger than the cluster (flyte-sdk's examples ask for 10 replicas of 1 CPU; the
# embedded test cluster has 1 CPU): the parent's replica is the only one that can start.
big_pool = flyte.TaskEnvironment(
    name="big-pool",
    resources=flyte.Resources(cpu=1),
    reusable=flyte.ReusePolicy(replicas=3, concurrency=20, idle_ttl=30, scaledown_ttl=30),
)


@big_pool.task
async def pool_child(x: int) -> int:
    if x == 3:
        raise ValueError("one child fails")
    return x


@big_pool.task
async def pool_parent(n: int) -> int:
    import asyncio

    results = await asyncio.gather(*(pool_child(i) for i in range(n)), return_exceptions=True)
    return sum(r for r in results if not isinstance(r, BaseException))


huge = flyte.TaskEnvironment(name="huge", resources=flyte.Resources(cpu=64))


@huge.task
def too_big() -> int:
    return 1


@env.task(retries=1)
def calls_too_big() -> int:
    return too_big()
