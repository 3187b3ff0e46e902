"""Tasks that fail in the ways a worker can: crashes, exits, Ray errors and interrupts raised by
user code (tests/test_failure_kinds.py)."""

import ctypes
import os
import sys

import ray

import flyte_ray as flyte

env = flyte.TaskEnvironment(name="failures")
spot_env = flyte.TaskEnvironment(name="failures_spot", interruptible=True)


def _count(path: str) -> int:
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        return len(f.read())


@env.task(retries=1)
def segfault(path: str) -> int:
    _count(path)
    ctypes.string_at(0)  # SIGSEGV in the worker
    return 0


@env.task(retries=1)
def hard_exit(path: str) -> int:
    _count(path)
    os._exit(3)


@env.task(retries=1)
def calls_sys_exit(path: str) -> int:
    _count(path)
    sys.exit(2)


@env.task(retries=1)
def raises_ray_timeout(path: str) -> int:
    _count(path)
    raise ray.exceptions.GetTimeoutError("my own ray.get timed out")


@env.task(retries=1)
def raises_keyboard_interrupt(path: str) -> int:
    _count(path)
    raise KeyboardInterrupt("pressed by the task itself")


@env.task(retries=1)
def stops_without_a_notice(path: str) -> int:
    _count(path)
    raise flyte.errors.TaskInterruptedError("stopping although no preemption notice came")


@env.task
def crash_then_ok(path: str) -> str:
    if _count(path) == 1:
        os._exit(9)
    return "recovered"


@spot_env.task
def child(x: int) -> int:
    return x + 1


@spot_env.task(retries=0)
def interruptible_parent(x: int) -> int:
    """Runs "on spot" on a cluster without markets: its children must not wait for a supervising
    actor that the driver never creates there."""
    return child(x) + child(x + 1)
