"""A first look at flyte-ray: an environment, a sync task, an async fan-out, a retried task.

    python examples/hello.py

Runs on an embedded local Ray cluster (``flyte_ray.init()``); pass an address to use a real one,
e.g. ``flyte_ray.init(address="ray://head:10001")``.
"""

import asyncio

import flyte_ray as flyte

env = flyte.TaskEnvironment(name="hello", resources=flyte.Resources(cpu=1), interruptible=True)


@env.task
def square(x: int) -> int:
    """A sync task: calling it runs it on Ray and returns its value."""
    return x * x


@env.task
async def fan_out(n: int) -> list[int]:
    """An async task: its children run in parallel, each as its own Ray task."""
    return list(await asyncio.gather(*(square.aio(i) for i in range(n))))


@env.task(retries=2)
def flaky(x: int) -> str:
    """Fails on its first attempt; flyte-ray retries it (a user failure, from `retries`)."""
    attempt = flyte.ctx().attempt
    if attempt == 0:
        raise RuntimeError("first attempt fails on purpose")
    return f"{x} ok on attempt {attempt}"


def main() -> None:
    flyte.init()
    print("square(7) =", square(7))
    print("fan_out(8) =", flyte.run(fan_out, 8).outputs())
    run = flyte.run(flaky, 42)
    print("flaky(42) =", run.outputs())
    print(run.history_table())
    flyte.shutdown()


if __name__ == "__main__":
    main()
