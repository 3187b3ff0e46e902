"""Tasks for benchmarks/overhead.py (a module, so workers import them by reference)."""

import time

import ray

import flyte_ray as flyte

env = flyte.TaskEnvironment(name="bench", interruptible=True)


def _square(x: int) -> int:
    return x * x


def raw_remote():
    """The raw baseline: the same function as a plain Ray task, placed like flyte-ray's attempts
    (the spot market's marker), so both sides run on the same nodes and only overhead differs."""
    from flyte_ray._ray.placement import attempt_options

    return _raw.options(**attempt_options({}, "spot", "default"))


_raw = ray.remote(_square)


@env.task(retries=1)
def square(x: int) -> int:
    return x * x


@env.task(retries=1)
def parent_bench(n_seq: int, n_fan: int, repeat: int) -> dict:
    """Runs on spot (interruptible, retries=1): the same measurements from inside a task."""
    import overhead  # the driver-side measurement code, on the worker's path

    figures = overhead.driver_figures(n_seq, n_fan, repeat)
    figures["market"] = flyte.ctx().market
    return figures
