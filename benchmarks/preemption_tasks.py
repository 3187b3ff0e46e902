"""The task of benchmarks/preemption.py (importable by the cluster's workers)."""

import json
import os
import time

import flyte_ray as flyte
from flyte_ray.errors import TaskInterruptedError

env = flyte.TaskEnvironment(name="bench_preempt", interruptible=True, resources=flyte.Resources(cpu=1))


@env.task(retries=1)
def steps(n: int, every: int, step_s: float, progress: str) -> dict:
    """``n`` steps of ``step_s`` seconds, a checkpoint every ``every`` steps; on a preemption
    notice: save, then stop on purpose. Progress goes to files the benchmark reads."""
    c = flyte.ctx()
    began = time.time()
    raw = c.checkpoint.read()
    step = first = int(raw) if raw else 0
    with open(os.path.join(progress, f"start-{c.attempt}"), "w") as f:
        json.dump({"at": began, "first": first, "node": c.node_id}, f)
    while step < n:
        if c.preemption.is_set():
            c.checkpoint.write(str(step).encode())
            with open(os.path.join(progress, f"saved-{c.attempt}"), "w") as f:
                json.dump({"at": time.time(), "step": step}, f)
            raise TaskInterruptedError(f"notice at step {step}")
        time.sleep(step_s)
        step += 1
        if step % every == 0:
            c.checkpoint.write(str(step).encode())
        with open(os.path.join(progress, f"step-{c.attempt}.tmp"), "w") as f:
            json.dump({"step": step, "node": c.node_id}, f)
        os.replace(os.path.join(progress, f"step-{c.attempt}.tmp"), os.path.join(progress, f"step-{c.attempt}"))
    return {"first": first, "attempt": c.attempt}
