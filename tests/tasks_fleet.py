"""Tasks used by the multi-node placement / supervisor tests."""

import asyncio
import os
import time

import flyte_ray as flyte

spot = flyte.TaskEnvironment(name="fleet", interruptible=True)
plain = flyte.TaskEnvironment(name="plain")
pool = flyte.TaskEnvironment(name="pool", queue="gpu-pool", interruptible=True)


def _info() -> dict:
    c = flyte.ctx()
    return {"attempt": c.attempt, "user_attempt": c.user_attempt, "system_failures": c.system_failures,
            "market": c.market, "queue": c.queue, "node": c.node_id}


@spot.task(retries=2)
def always_fails(log: str) -> int:
    with open(log, "a") as f:
        f.write(flyte.ctx().node_id + "\n")
    raise ValueError("always")


@spot.task(retries=0)
def once() -> dict:
    return _info()


@spot.task(retries=1)
def preempt_then_user_error(flag: str) -> dict:
    c = flyte.ctx()
    if c.attempt == 0:
        with open(flag, "w") as f:
            f.write(c.node_id)
        time.sleep(60)  # preempted here
    if c.attempt == 1:
        raise RuntimeError("user error on the system retry")
    return _info()


@spot.task(retries=3)
def where() -> dict:
    return _info()


@spot.task(retries=3, interruptible=False)
def where_task_false() -> dict:
    return _info()


@plain.task
def where_plain() -> dict:
    return _info()


@pool.task(retries=2)
def where_pool() -> dict:
    return _info()


@spot.task(retries=2, queue="gpu-pool")
def where_task_queue() -> dict:
    return _info()


@spot.task(retries=2)
def sleeper(flag: str, seconds: float) -> dict:
    with open(flag, "a") as f:
        f.write(flyte.ctx().node_id + "\n")
    time.sleep(seconds)
    return _info()


@spot.task(retries=1, timeout=flyte.Timeout(max_runtime=1.5))
def too_slow() -> int:
    time.sleep(30)
    return 1


@spot.task(retries=1, queue="etl", timeout=flyte.Timeout(max_queued_time=3))
def etl_job() -> dict:
    return _info()


@plain.task(queue="nowhere", timeout=flyte.Timeout(max_queued_time=2))
def nowhere() -> int:
    return 1


@plain.task(timeout=flyte.Timeout(deadline=2))
def past_deadline() -> int:
    time.sleep(20)
    return 1


@spot.task(retries=1)
def child(i: int, outdir: str) -> int:
    time.sleep(0.25)
    with open(os.path.join(outdir, f"done-{i}-{flyte.ctx().attempt}"), "w") as f:
        f.write(flyte.ctx().node_id)
    return i * i


@plain.task
async def fan_out(n: int, outdir: str) -> list:
    return list(await asyncio.gather(*(child.aio(i, outdir) for i in range(n))))


@plain.task
def heartbeat(path: str) -> int:
    for _ in range(600):
        with open(path, "w") as f:
            f.write(str(time.time()))
        time.sleep(0.05)
    return 0


memenv = flyte.TaskEnvironment(name="mem", resources=flyte.Resources(cpu=1, memory="1Gi"), queue="mem")


@memenv.task
def hog(gib: float) -> str:
    """Allocates far past its 1 GiB request, touching every page, then holds it a moment."""
    chunks = []
    for _ in range(int(gib * 4)):
        chunks.append(bytearray(256 * 1024 * 1024))  # zero-filled: the pages are really used
        time.sleep(0.05)
    time.sleep(2.0)
    return flyte.ctx().node_id
