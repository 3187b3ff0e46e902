"""Tasks of tests/test_notices.py."""

import os
import time

import flyte_ray as flyte
from flyte_ray.errors import TaskInterruptedError

spot = flyte.TaskEnvironment(name="notice", interruptible=True, resources=flyte.Resources(cpu=1))
ondemand = flyte.TaskEnvironment(name="notice_od", resources=flyte.Resources(cpu=1))


def _where(flag: str) -> None:
    with open(flag + f".node{flyte.ctx().attempt}", "w") as f:
        f.write(flyte.ctx().node_id)


@spot.task(retries=2)
def steps(flag: str, n: int = 400) -> dict:
    """A loop of short steps that saves and stops on a preemption notice."""
    c = flyte.ctx()
    started = time.time()
    _where(flag)
    state = c.checkpoint.read()
    step = first = int(state) if state else 0
    while step < n:
        if c.preemption.is_set():
            c.checkpoint.write(str(step).encode())
            raise TaskInterruptedError(f"notice at step {step}")
        time.sleep(0.05)
        step += 1
        if step == 40:  # the test notifies once step 40 is reached
            with open(flag + ".go", "w") as f:
                f.write(str(step))
    return {"attempt": c.attempt, "node": c.node_id, "first": first, "started": started,
            "deadline": c.preemption.deadline}


@spot.task(retries=2)
def ignores_notices(flag: str) -> dict:
    c = flyte.ctx()
    _where(flag)
    while c.attempt == 0:
        time.sleep(0.1)
    return {"attempt": c.attempt, "node": c.node_id}


@ondemand.task
def on_demand(flag: str) -> dict:
    c = flyte.ctx()
    _where(flag)
    while c.attempt == 0:
        time.sleep(0.1)
    return {"attempt": c.attempt, "node": c.node_id}


@spot.task(retries=2)
def quick() -> dict:
    c = flyte.ctx()
    return {"attempt": c.attempt, "node": c.node_id, "market": str(c.market)}


def wait_file(path: str, timeout: float = 60) -> str:
    end = time.time() + timeout
    while not os.path.exists(path):
        assert time.time() < end, f"{path} did not appear"
        time.sleep(0.05)
    time.sleep(0.05)
    with open(path) as f:
        return f.read()


warm_spot = flyte.TaskEnvironment(name="notice_warm", interruptible=True, resources=flyte.Resources(cpu=0.5),
                                  reusable=flyte.ReusePolicy(replicas=1, idle_ttl=60))


@warm_spot.task(retries=1)
def where_warm(x: int) -> str:
    return flyte.ctx().node_id
