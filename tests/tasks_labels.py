"""Tasks for the label-mode placement tests (test_placement_labels.py).

The placement cases are the marker-mode ones (tasks_fleet.py): a task does not know how the
cluster declares its markets, so the same tasks are used. What is new lives here: a warm pool on
spot, a task that reports the code and labels its worker sees, a queue whose name cannot be a
Ray label key.
"""

import os
import time

import flyte_ray as flyte
from tasks_fleet import (  # noqa: F401  (the shared placement cases)
    always_fails,
    nowhere,
    once,
    preempt_then_user_error,
    where,
    where_plain,
    where_pool,
    where_task_false,
    where_task_queue,
)

lplain = flyte.TaskEnvironment(name="lplain")
lwarm = flyte.TaskEnvironment(name="lwarm", resources=flyte.Resources(cpu=0.5), interruptible=True,
                              reusable=flyte.ReusePolicy(replicas=1, idle_ttl=60))


@lplain.task
def whoami() -> dict:
    import ray

    c = flyte.ctx()
    return {"file": flyte.__file__, "node": c.node_id, "market": c.market,
            "labels": dict(ray.get_runtime_context().get_node_labels())}


@lplain.task(queue="bad_")
def bad_queue() -> int:
    return 1


@lwarm.task(retries=1)
def warm_where() -> dict:
    c = flyte.ctx()
    return {"node": c.node_id, "market": c.market, "pid": os.getpid()}


@lwarm.task(retries=1)
def warm_hold(flag: str) -> dict:
    c = flyte.ctx()
    if c.attempt == 0:
        with open(flag, "w") as f:
            f.write(c.node_id)
        time.sleep(60)  # preempted here
    return {"node": c.node_id, "market": c.market, "attempt": c.attempt}
