"""Tasks of tests/test_progress.py."""

import flyte_ray as flyte

env = flyte.TaskEnvironment(name="prog", resources=flyte.Resources(cpu=0.1))


@env.task
def inc(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x + 1


@env.task
async def fan(n: int) -> int:
    import asyncio

    return sum(await asyncio.gather(*(inc.aio(i) for i in range(n) if i != 3)))
