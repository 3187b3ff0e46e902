"""Tasks of tests/test_spot_shortage.py."""

import os
import time

import flyte_ray as flyte

env = flyte.TaskEnvironment(name="shortage", interruptible=True, resources=flyte.Resources(cpu=1))
plain = flyte.TaskEnvironment(name="shortage_plain", resources=flyte.Resources(cpu=1))


@env.task(retries=1)
def steady(flag: str) -> dict:
    """Runs until ``flag`` exists (the test preempts its node meanwhile), then says where it ran."""
    c = flyte.ctx()
    with open(flag + ".node", "w") as f:
        f.write(c.node_id)
    for _ in range(600):
        if os.path.exists(flag) and c.attempt > 0:
            break
        if c.attempt > 0:
            break
        time.sleep(0.1)
    return {"market": str(c.market), "node": c.node_id, "attempt": c.attempt}


@plain.task
def wants_h100() -> str:
    return "never"


@env.task
def spot_wants_h100() -> str:
    return "never"


@env.task(retries=1)
def where() -> dict:
    c = flyte.ctx()
    return {"market": str(c.market), "node": c.node_id, "attempt": c.attempt}
