"""flytekit-style task code, written as flytekit's docs teach it; only the imports name flyte_ray.

The checkpointed loop follows flytekit's intratask-checkpointing pattern: read the last step from
``current_context().checkpoint``, fail on purpose with ``FlyteRecoverableException`` every few
steps, write progress after each step; retries resume where the last attempt stopped.
"""

import os
import time

import flyte_ray.flytekit as flytekit
from flyte_ray.flytekit import current_context, dynamic, map_task, task, workflow
from flyte_ray.flytekit.exceptions.user import FlyteRecoverableException

RETRIES = 3


@task(retries=RETRIES)
def use_checkpoint(n_iterations: int) -> int:
    cp = current_context().checkpoint
    prev = cp.read()
    start = 0
    if prev:
        start = int(prev.decode())
    # fail on purpose every few iterations: the retries finish the loop from the checkpoint
    failure_interval = n_iterations // RETRIES
    index = 0
    for index in range(start, n_iterations):
        if index > start and index % failure_interval == 0:
            raise FlyteRecoverableException(f"Failed at iteration {index}, failure_interval {failure_interval}")
        cp.write(f"{index + 1}".encode())
    return index


@workflow
def checkpointing_example(n_iterations: int) -> int:
    return use_checkpoint(n_iterations=n_iterations)


@task(retries=3)
def not_recoverable(marker: str) -> int:
    with open(marker, "a") as f:
        f.write("attempt\n")
    raise ValueError("bad input: not retried")


@task
def add(a: int, b: int) -> int:
    return a + b


@task(requests=flytekit.Resources(cpu="100m", mem="100Mi"), limits=flytekit.Resources(cpu="1", mem="200Mi"))
def square(x: int) -> int:
    return x * x


@workflow
def pipeline(a: int, b: int) -> int:
    s = add(a=a, b=b)
    return square(x=s)


@dynamic
def fan(n: int) -> list:
    return [square(x=i) for i in range(n)]


@workflow
def mapped(xs: list) -> list:
    return map_task(square)(x=xs)


@task(cache=True, cache_version="1")
def cached(x: int, marker: str) -> int:
    with open(marker, "a") as f:
        f.write("ran\n")
    return x + 1


@task(retries=2, interruptible=True)
def train(steps: int, progress: str, step_s: float = 0.15) -> dict:
    """A checkpointed loop for the preemption test: progress lines name the attempt and node."""
    import flyte_ray

    c = flyte_ray.ctx()
    cp = current_context().checkpoint
    start = int(cp.read() or b"0")
    with open(progress, "a") as f:
        f.write(f"start {c.attempt} {start} {c.node_id}\n")
    for step in range(start, steps):
        time.sleep(step_s)
        cp.write(f"{step + 1}".encode())
        with open(progress, "a") as f:
            f.write(f"step {c.attempt} {step + 1} {c.node_id} {c.market}\n")
    return {"resumed_from": start, "attempt": c.attempt, "pid": os.getpid()}


@task(enable_deck=True)
def with_deck() -> str:
    flytekit.Deck("summary", "<p>hello from a deck</p>")
    return current_context().execution_id.name


@task
def context_facts() -> dict:
    p = current_context()
    wd = p.working_directory
    with open(os.path.join(wd, "x"), "w") as f:
        f.write("x")
    return {"run": p.execution_id.name, "task": p.task_id.name, "wd": wd, "secret": p.secrets.get("grp", "key")}
