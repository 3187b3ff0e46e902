"""Warm replicas (ReusePolicy) vs raw Ray, side by side in one run on one cluster.

Sequential latency from the driver: ``--repeat`` x 10 interleaved blocks of ``--n``/10 calls of
each kind; each figure is the median per-call time over its blocks:

* raw actor call: ``ray.get(actor.echo.remote(i))`` on a plain Ray actor with the same resources
  and placement as a replica (the bar: a warm call costs at most 1.2x this);
* warm call: ``task(i)`` on a reusable environment (one replica, already warm);
* plain call: the same task with ``reusable="off"`` (one Ray task per attempt), for reference;
* cache hit: ``task(i)`` of a ``cache="auto"`` task whose output is stored already — when
  ``flyte_ray.cache`` stores outputs (checked: a second identical call must not run the task),
  else ``n/a``.

Run: ``python benchmarks/reuse.py [--n 300] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

_here = os.path.dirname(os.path.abspath(__file__))
_tests = os.path.join(os.path.dirname(_here), "tests")
sys.path.insert(0, _tests)  # the task module lives with the tests (workers import it by reference)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_tests, os.environ.get("PYTHONPATH", "")) if p)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402

import flyte_ray as flyte  # noqa: E402
from flyte_ray import reuse  # noqa: E402
from flyte_ray._ray.placement import attempt_options  # noqa: E402
from flyte_ray.testing import LocalCluster, NodeSpec  # noqa: E402

import tasks_reuse as tr  # noqa: E402


class RawEcho:
    def echo(self, x):
        return x


class RawAsyncEcho:
    async def echo(self, x):
        return x


def best(fn, repeat):
    return min(fn() for _ in range(repeat))


def per_call(fn, n):
    def round_():
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        return (time.perf_counter() - t) / n
    return round_


def per_call_async(fn, n):
    def round_():
        async def go():
            t = time.perf_counter()
            for i in range(n):
                await fn(i)
            return (time.perf_counter() - t) / n
        return asyncio.run(go())
    return round_


def cache_works(log: str) -> bool:
    """True when a second identical call of the cached task does not run it again."""
    tr.bench_cached_probe(log)
    tr.bench_cached_probe(log)
    try:
        return len(open(log).read().split()) == 1
    except FileNotFoundError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    nodes = [NodeSpec("od-1", market="ondemand", cpus=2)]
    with LocalCluster(nodes, storage=tempfile.mkdtemp(prefix="frb-")):
        opts = attempt_options(dict(tr.bench.resources.ray_options()), "ondemand", "default")
        raw = ray.remote(RawEcho).options(**opts).remote()
        araw = ray.remote(RawAsyncEcho).options(**opts).remote()
        plain = tr.bench_echo.override(reusable="off")
        # warm everything up: actors started, functions exported, the replica pool warm
        for i in range(20):
            ray.get(raw.echo.remote(i))
            ray.get(araw.echo.remote(i))
            tr.bench_echo(i)
            asyncio.run(tr.bench_aecho.aio(i))
            plain(i)

        # Interleave small blocks so drift (2 busy cores share the cluster and the caller) hits
        # every figure alike; each figure is the median over its blocks.
        block = max(a.n // 10, 10)
        rounds = {
            "raw actor call": per_call(lambda i: ray.get(raw.echo.remote(i)), block),
            "warm call": per_call(tr.bench_echo, block),
            "raw async actor call": per_call_async(lambda i: araw.echo.remote(i), block),
            "warm async call": per_call_async(tr.bench_aecho.aio, block),
            "plain call (reusable='off')": per_call(plain, block),
        }
        samples: dict = {k: [] for k in rounds}
        for _ in range(a.repeat * 10):
            for k, fn in rounds.items():
                samples[k].append(fn())
        figures = {k: statistics.median(v) for k, v in samples.items()}

        log = os.path.join(tempfile.mkdtemp(prefix="frb-"), "runs")
        hit = None
        if cache_works(log):
            tr.bench_cached_echo(7)  # stored
            hit = best(per_call(lambda i: tr.bench_cached_echo(7), a.n), a.repeat)
        stats = reuse.pool_stats("reuse_bench")

    raw_s = figures["raw actor call"]
    print(f"\nsequential latency from the driver (median of {a.repeat * 10} interleaved blocks of "
          f"{max(a.n // 10, 10)} calls; 1 replica, cpu=0.25)")
    for k, v in figures.items():
        base = figures["raw async actor call"] if "async" in k else raw_s
        print(f"  {k:30s} {v * 1e3:7.3f} ms   {v / base:5.2f}x raw")
    ratio = figures["warm call"] / raw_s
    print(f"  {'cache hit':30s} " + (f"{hit * 1e3:7.3f} ms   {hit / raw_s:5.2f}x raw" if hit is not None
                                      else "    n/a   (flyte_ray.cache does not store outputs here)"))
    print(f"\nwarm call / raw actor call = {ratio:.2f}x  (bar: <= 1.2x)  -> {'OK' if ratio <= 1.2 else 'OVER'}")
    print(f"pool: {stats[0]['replicas'] if stats else '?'} replica(s), {stats[0]['served'] if stats else '?'} "
          "calls served")


if __name__ == "__main__":
    main()
