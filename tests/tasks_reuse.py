"""Tasks used by test_reuse.py and benchmarks/reuse.py (warm replicas).

The ``reuse_warm`` environment sets ``FRT_REUSE_INIT_DIR`` in its replicas' environment: when
that variable is set, importing this module does a 2 s "expensive initialisation" and records
it in a file named after the process id — once per replica process if replicas are reused.
"""

import asyncio
import collections
import os
import tempfile
import time

import flyte_ray as flyte

INIT_DIR = os.path.join(tempfile.gettempdir(), f"frt-reuse-init-{os.getpid()}")

_init_dir = os.environ.get("FRT_REUSE_INIT_DIR")
if _init_dir:  # a replica of reuse_warm: the expensive module initialisation
    time.sleep(2.0)
    os.makedirs(_init_dir, exist_ok=True)
    with open(os.path.join(_init_dir, f"init-{os.getpid()}"), "a") as f:
        f.write(f"{time.time()}\n")
INITIALISED_AT = time.time()

small = flyte.Resources(cpu=0.25)

warm = flyte.TaskEnvironment(name="reuse_warm", resources=small, env_vars={"FRT_REUSE_INIT_DIR": INIT_DIR},
                             reusable=flyte.ReusePolicy(replicas=2, idle_ttl=60))
conc = flyte.TaskEnvironment(name="reuse_conc", resources=small,
                             reusable=flyte.ReusePolicy(replicas=1, concurrency=4, idle_ttl=60))
scale = flyte.TaskEnvironment(name="reuse_scale", resources=small,
                              reusable=flyte.ReusePolicy(replicas=(1, 3), scaledown_ttl=2, idle_ttl=60))
spotty = flyte.TaskEnvironment(name="reuse_spot", resources=flyte.Resources(cpu=0.5), interruptible=True,
                               reusable=flyte.ReusePolicy(replicas=2, idle_ttl=60))
bench = flyte.TaskEnvironment(name="reuse_bench", resources=small, reusable=flyte.ReusePolicy(replicas=1))
bench_cached = flyte.TaskEnvironment(name="reuse_bench_cached", resources=small, cache="auto")
idle = flyte.TaskEnvironment(name="reuse_idle", resources=small,
                             reusable=flyte.ReusePolicy(replicas=1, idle_ttl=2))
wire = flyte.TaskEnvironment(name="reuse_wire", resources=small, reusable=flyte.ReusePolicy(replicas=1, idle_ttl=60))
wire_kid = flyte.TaskEnvironment(name="reuse_wire_kid", resources=small,
                                 reusable=flyte.ReusePolicy(replicas=1, idle_ttl=60))


@warm.task
def warm_call(i: int) -> dict:
    return {"i": i, "pid": os.getpid(), "initialised_at": INITIALISED_AT}


@warm.task
def warm_fails(i: int) -> int:
    raise ValueError(f"boom {i}")


_running = 0
_max_running = 0


@conc.task
async def conc_call(i: int, secs: float) -> dict:
    global _running, _max_running
    _running += 1
    _max_running = max(_max_running, _running)
    start = time.time()
    try:
        await asyncio.sleep(secs)
    finally:
        _running -= 1
    return {"i": i, "pid": os.getpid(), "start": start, "end": time.time(), "max": _max_running}


@scale.task
def scale_call(secs: float) -> int:
    time.sleep(secs)
    return os.getpid()


@spotty.task(retries=1)
def spot_hold(flag: str) -> dict:
    c = flyte.ctx()
    if c.attempt == 0:
        with open(flag, "w") as f:
            f.write(f"{c.node_id} {os.getpid()}")
        time.sleep(60)  # preempted here
    return {"pid": os.getpid(), "node": c.node_id, "attempt": c.attempt, "market": c.market,
            "system_failures": c.system_failures}


@bench.task
def bench_echo(x: int) -> int:
    return x


@bench.task
async def bench_aecho(x: int) -> int:
    return x


@bench_cached.task
def bench_cached_echo(x: int) -> int:
    return x


@bench_cached.task
def bench_cached_probe(log: str) -> int:
    with open(log, "a") as f:  # one line per execution: a cache hit writes nothing
        f.write("ran\n")
    return 1


@idle.task
def idle_call() -> int:
    return os.getpid()

Point = collections.namedtuple("Point", "x y")

# Values that must reach a warm replica, and come back, as themselves (type included).
WIRE_VALUES = [(1, 2), 2 ** 70, -(2 ** 70), {1: "a", (2, 3): [4, (5,)]}, b"\x00b", bytearray(b"xy"),
               [1, (2, [3])], "\u00e9t\u00e9", None, True, 1.5, {"s": {1, 2}}, frozenset({3}),
               collections.OrderedDict(a=1), Point(1, (2,)), [], (), {}]


def _ctx_facts() -> dict:
    c = flyte.ctx()
    return {"run_name": c.run_name, "fqn": c.fqn, "call_id": c.call_id, "attempt": c.attempt,
            "user_attempt": c.user_attempt, "system_failures": c.system_failures, "market": c.market,
            "queue": c.queue, "node_id": c.node_id, "has_settings": c.settings is not None,
            "run_overrides": c.run_overrides, "pid": os.getpid()}


@wire.task
def wire_echo(*args, **kwargs) -> dict:
    """The arguments as the task saw them (types included) and its context."""
    return {"args": args, "kwargs": kwargs, "ctx": _ctx_facts()}


@wire.task
async def wire_aecho(*args, **kwargs) -> dict:
    return {"args": args, "kwargs": kwargs, "ctx": _ctx_facts()}


@wire.task
def wire_value(v):
    return v


@wire.task
def wire_fails(code: int) -> int:
    raise KeyError(f"missing {code}")


@wire.task
async def wire_afails(code: int) -> int:
    raise KeyError(f"missing {code}")


@wire_kid.task
def wire_child(x: int) -> dict:
    return {"x": x, "ctx": _ctx_facts()}


@wire.task
def wire_parent(n: int) -> dict:
    """Calls a warm child from a warm replica: the nested call's context and settings."""
    kids = [wire_child(i) for i in range(n)]
    return {"ctx": _ctx_facts(), "kids": kids}


timeouts = flyte.TaskEnvironment(name="reuse_timeouts", resources=small,
                                 reusable=flyte.ReusePolicy(replicas=1, idle_ttl=60))


@timeouts.task(timeout=1)
async def awaits_too_long(secs: float) -> str:
    await asyncio.sleep(secs)  # cancellable
    return "done"


@timeouts.task(timeout=1)
async def blocks_its_loop(secs: float) -> str:
    time.sleep(secs)  # blocks the replica's event loop: a cancel cannot reach it
    return "done"


@timeouts.task
async def replica_pid() -> int:
    return os.getpid()


# #18: a parent in a reusable environment calling a child of the same environment (flyte-sdk
# documents 2 replicas as enough), and falling back to a regular environment.
pair = flyte.TaskEnvironment(name="reuse_pair", resources=small,
                             reusable=flyte.ReusePolicy(replicas=2, concurrency=1, idle_ttl=60))
grow = flyte.TaskEnvironment(name="reuse_grow", resources=small,
                             reusable=flyte.ReusePolicy(replicas=(1, 2), concurrency=1, idle_ttl=60))
plain_small = flyte.TaskEnvironment(name="reuse_plain", resources=small)


@pair.task
def pair_child(x: int) -> int:
    return x + 1


@pair.task
def pair_parent(x: int) -> list:
    return [pair_child(x), pair_child(x + 1), plain_child(x)]


@grow.task
def grow_child(x: int) -> int:
    return x * 3


@grow.task
def grow_parent(x: int) -> int:
    return grow_child(x) + 1


@plain_small.task
def plain_child(x: int) -> int:
    return -x
