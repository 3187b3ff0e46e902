"""Tasks used by test_core.py (a module, so workers import them by reference)."""

import asyncio
import os

import ray

import flyte_ray as flyte

env = flyte.TaskEnvironment(name="core", resources=flyte.Resources(cpu=1))


@env.task
def square(x: int) -> int:
    return x * x


@env.task
async def asquare(x: int) -> int:
    await asyncio.sleep(0)
    return x * x


@env.task
def sync_parent(n: int) -> int:
    return sum(square(i) for i in range(n))


@env.task
async def async_parent(n: int) -> list:
    return list(await asyncio.gather(*(square.aio(i) for i in range(n))))


@env.task
async def async_grandparent(n: int) -> int:
    parts = await asyncio.gather(*(async_parent.aio(n) for _ in range(3)))
    return sum(sum(p) for p in parts)


@env.task
async def async_calls_sync(n: int) -> int:
    # A sync task called inside an async task blocks the loop but must not deadlock.
    return sum(square(i) for i in range(n))


@env.task
def sync_calls_async(n: int) -> list:
    return asyncio.run(async_parent.aio(n))


@env.task
def whoami() -> dict:
    c = flyte.ctx()
    return {"attempt": c.attempt, "user_attempt": c.user_attempt, "market": c.market, "queue": c.queue,
            "fqn": c.fqn, "call_id": c.call_id, "run": c.run_name, "node": c.node_id,
            "resources": ray.get_runtime_context().get_assigned_resources(),
            "env": {k: v for k, v in os.environ.items() if k.startswith("FR_")}}


big = flyte.TaskEnvironment(name="big", resources=flyte.Resources(cpu="500m", memory="100Mi"),
                            env_vars={"FR_LEVEL": "env"})


@big.task
def assigned() -> dict:
    return whoami.forward()


class DataError(ValueError):
    def __init__(self, msg, detail=None):
        super().__init__(msg)
        self.detail = detail


@env.task
def fails(x: int) -> int:
    raise DataError(f"bad input {x}", detail={"x": x})


@env.task(retries=2)
def fails_then_succeeds(path: str) -> int:
    n = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(n + 1))
    if n < 2:
        raise RuntimeError(f"flaky {n}")
    return n


@env.task(retries=3)
def never_recovers(path: str) -> int:
    with open(path, "a") as f:
        f.write("x")
    raise flyte.errors.NonRecoverableError("give up")


@env.task(retries=2)
def always_fails() -> int:
    raise KeyError("nope")


spot_env = flyte.TaskEnvironment(name="spotty", interruptible=True)


@spot_env.task(retries=2)
def market_probe() -> dict:
    c = flyte.ctx()
    return {"market": c.market, "attempt": c.attempt}


@spot_env.task(retries=2, interruptible=False)
def market_probe_task_false() -> dict:
    return {"market": flyte.ctx().market}


@env.task
async def sync_map_inside_async(n: int) -> list:
    """flyte-sdk allows a sync flyte.map inside an async task (#18: it deadlocked)."""
    return list(flyte.map(double_it, range(n)))


@env.task
def double_it(x: int) -> int:
    return 2 * x


class Counted:
    """A big input that counts how often the process that made it pickled it."""

    pickled = 0

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.nbytes = len(data)

    def __reduce__(self):
        Counted.pickled += 1
        return (Counted, (self.data,))


@env.task(retries=2)
def fails_twice_with_big_input(big: Counted, marker_dir: str) -> int:
    """Fails its first two attempts (a user error each), then returns the input's size."""
    n = len(os.listdir(marker_dir))
    open(os.path.join(marker_dir, str(n)), "w").close()
    if n < 2:
        raise ValueError(f"attempt {n} fails on purpose")
    return len(big.data)


@env.task
def saves_in_background(n_mb: int) -> int:
    """Saves a checkpoint in the background and returns at once: the attempt's end waits for it."""
    h = flyte.ctx().checkpoint.save(b"s" * (n_mb << 20), background=True)
    return 0 if h is None else h.nbytes


@env.task(retries=1)
def ray_task_name(path: str) -> list:
    """The Ray task name of each attempt (what Ray's dashboard lists); the first attempt fails."""
    import ray

    names = (open(path).read().splitlines() if os.path.exists(path) else [])
    names.append(ray.get_runtime_context().get_task_name())
    with open(path, "w") as f:
        f.write("\n".join(names))
    if len(names) == 1:
        raise RuntimeError("first attempt fails on purpose")
    return names
