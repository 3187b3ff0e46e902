"""The sync facade: driving the async implementation on the caller's thread vs a background loop.

flyte-ray has one ``async`` implementation of the call path. A blocking caller reaches it either

* **drive** (what flyte-ray does): the coroutine runs on the caller's thread with the blocking
  port and never suspends (``flyte_ray._core.drive``); or
* **loop**: the coroutine runs on a background event loop thread (flyte-sdk's facade) and the
  caller blocks on a ``concurrent.futures.Future``.

Both are measured side by side with raw Ray in one run, sequentially from the driver, on a plain
task and on a warm replica (a reusable task), in interleaved blocks (median of block medians).
Ratios are against raw Ray (``ray.get(f.remote(i))`` / a raw actor call). Inside a Ray worker the
loop facade is not even an option for sync tasks: the CPU is released only while the main thread
blocks in ``ray.get``/``ray.wait`` (see ``flyte_ray._ray.waiting``).

Run: ``python benchmarks/facade.py [--n 300] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time

_here = os.path.dirname(os.path.abspath(__file__))
_tests = os.path.join(os.path.dirname(_here), "tests")
sys.path.insert(0, _here)
sys.path.insert(0, _tests)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_tests, _here, os.environ.get("PYTHONPATH", "")) if p)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402

import flyte_ray as flyte  # noqa: E402
from flyte_ray._controller.controller import get_controller  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    # 4 logical CPUs: the warm replica and the raw actor hold one each while the tasks run
    flyte.init(num_cpus=4)
    import overhead_tasks as ot
    import tasks_reuse as tr

    ctl = get_controller()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    @ray.remote(num_cpus=1)
    class Raw:
        def echo(self, v):
            return v

    raw_actor = Raw.remote()
    ray.get(raw_actor.echo.remote(0))
    raw_task = ot.raw_remote()
    warm = tr.wire_value  # a reusable task (one replica)
    warm(0)

    def drive(task, i):
        return ctl.submit_sync(task._make_call((i,), {}))

    def via_loop(task, i):
        return asyncio.run_coroutine_threadsafe(ctl.submit(task._make_call((i,), {})), loop).result()

    sides = {
        "raw task": lambda i: ray.get(raw_task.remote(i)),
        "task, drive": lambda i: drive(ot.square, i),
        "task, loop": lambda i: via_loop(ot.square, i),
        "raw actor": lambda i: ray.get(raw_actor.echo.remote(i)),
        "warm, drive": lambda i: drive(warm, i),
        "warm, loop": lambda i: via_loop(warm, i),
    }
    for f in sides.values():  # warm up every path
        for i in range(20):
            f(i)
    block = max(a.n // 10, 10)
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(10 * a.repeat):
        for name, f in sides.items():
            t = time.perf_counter()
            for i in range(block):
                f(i)
            times[name].append((time.perf_counter() - t) / block)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"sequential from the driver, median of {10 * a.repeat} blocks of {block} calls")
    for name in sides:
        base = med["raw task"] if not name.startswith(("raw actor", "warm")) else med["raw actor"]
        print(f"  {name:12s} {med[name] * 1e3:7.3f} ms   {med[name] / base:5.2f}x raw")
    print(f"loop facade costs {(med['task, loop'] - med['task, drive']) * 1e6:+.0f} us per task call and "
          f"{(med['warm, loop'] - med['warm, drive']) * 1e6:+.0f} us per warm call over drive")
    flyte.shutdown()


if __name__ == "__main__":
    main()
