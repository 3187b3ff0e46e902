"""A driver for an existing cluster: fan-out, a retried task and a checkpointed task.

Submit it as a Ray job from the repository's root (the driver then runs on the head node; the
job's ``py_modules`` carry flyte-ray to it and to every worker, so the cluster needs none)::

    ray job submit --address http://HEAD:8265 --working-dir examples \
        --runtime-env-json '{"py_modules": ["flyte_ray"]}' -- python fanout_driver.py

or run it from your machine against a Ray client server (``init`` ships flyte-ray itself)::

    FLYTE_RAY_ADDRESS=ray://HEAD:10001 FLYTE_RAY_STORAGE=s3://bucket/prefix python examples/fanout_driver.py

Environment:
    FLYTE_RAY_ADDRESS   cluster address (default ``auto``: the cluster this machine belongs to)
    FLYTE_RAY_STORAGE   where checkpoints live (``s3://bucket/prefix``, a shared folder…);
                        flyte-ray reads it by default (a local folder is refused when the
                        cluster's nodes run on several hosts)
    FANOUT_N            number of children of the fan-out (default 16)

Prints ``RESULT ok fanout=<sum> retried_attempts=<n> checkpoint=<resumed-from>`` at the end.
"""

import asyncio
import os

import flyte_ray as flyte

env = flyte.TaskEnvironment(name="fanout_driver", resources=flyte.Resources(cpu=0.5), interruptible=True)


@env.task(retries=2)
def child(i: int) -> int:
    return i * i


@env.task(retries=2)
async def parent(n: int) -> int:
    """An async parent: its children run in parallel (spot first, as the env is interruptible)."""
    values = await asyncio.gather(*(child.aio(i) for i in range(n)))
    return sum(values)


@env.task(retries=1)
def flaky() -> int:
    """Fails its first attempt; the retry (the final attempt: on-demand) succeeds."""
    c = flyte.ctx()
    if c.attempt == 0:
        raise RuntimeError("failing the first attempt on purpose")
    return c.attempt


@env.task(retries=1)
def checkpointed(steps: int) -> str:
    """Writes its progress to its checkpoint; attempt 0 dies half-way, attempt 1 resumes from it."""
    c = flyte.ctx()
    cp = c.checkpoint
    prev = cp.read()
    start = int(prev.decode()) if prev else 0
    for step in range(start, steps):
        cp.write(str(step + 1).encode())
        if c.attempt == 0 and step + 1 == steps // 2:
            raise RuntimeError(f"interrupted after step {step + 1}")
    return f"resumed@{start}"


def main() -> None:
    flyte.init(address=os.environ.get("FLYTE_RAY_ADDRESS") or "auto")
    n = int(os.environ.get("FANOUT_N", "16"))

    total = flyte.run(parent, n).outputs()
    assert total == sum(i * i for i in range(n)), total

    retried = flyte.run(flaky).wait()
    retried.outputs()
    print(retried.history_table())

    cp_run = flyte.run(checkpointed, 6)
    resumed = cp_run.outputs()
    print(cp_run.history_table())

    print(f"RESULT ok fanout={total} retried_attempts={len(retried.history)} checkpoint={resumed}", flush=True)
    flyte.shutdown()


if __name__ == "__main__":
    main()
