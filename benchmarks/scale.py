"""Fan-outs of 1,000 to 100,000 trivial calls: flyte-ray beside raw Ray, in one run on one cluster.

For each size and each way of fanning out, the same fan-out runs in raw Ray right before it:

* ``gather``  -- from the driver, ``asyncio.gather(task.aio(i) ...)`` vs ``ray.get([f.remote(i) ...])``;
* ``map``     -- from the driver, ``list(flyte_ray.map(task, range(n)))`` vs the same raw fan-out;
* ``in-task`` -- from inside an ``async`` parent task gathering its children vs a raw Ray task
  doing ``ray.get([f.remote(i) ...])`` (both measured inside the parent's worker process).

Every call is in flight at once (all submitted before the first result is awaited). Printed per
row: throughput (calls/s) of each side and the ratio flyte-ray / raw (higher is better), the
process's peak RSS during the fan-out, and its growth divided by the number of calls ("per call":
memory per in-flight call), with the ratio flyte-ray / raw (lower is better).

The cluster is embedded (``flyte_ray.init(num_cpus=...)``) with more logical CPUs than cores, so
the fan-outs are bound by per-call overhead, not by a slot count. Each figure is measured in a
fresh driver process (it connects to that cluster, warms up, fans out once), so that no figure
reuses memory an earlier fan-out freed, and raw and flyte-ray alternate.

``--supervision 50,200``: instead, 50 spot parents each fanning out 200 children whose calls all
go through the supervising actors (as children of unknown or long runtime do), with one actor
(``--shards 1``) and with several, beside the same 10,000 children gathered by the driver.

Run: ``python benchmarks/scale.py [--sizes 1000,10000,100000] [--modes gather,map,in-task]``
or ``python benchmarks/scale.py --supervision 50,200 [--shards 1,4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402

import flyte_ray as flyte  # noqa: E402
from flyte_ray.runtime import connected_address  # noqa: E402

import scale_tasks as st  # noqa: E402

MODES = ("gather", "map", "in-task")


def child(mode: str, side: str, n: int, address: str, warmup: int) -> dict:
    """One fan-out, measured in this (fresh) driver process connected to the benchmark's cluster:
    a fresh process, so neither side's memory figure reuses what an earlier fan-out freed."""
    flyte.init(address=address, progress=False)
    if mode == "in-task":
        if side == "raw":
            ray.get(st.raw_parent.remote(min(warmup, 200)))
            return ray.get(st.raw_parent.remote(n))
        flyte.run(st.fr_parent, min(warmup, 200)).outputs()
        return flyte.run(st.fr_parent, n).outputs()
    if side == "raw":
        st.raw_fan(warmup)
        gc.collect()
        return st.raw_fan(n)
    st.fr_gather(warmup)
    gc.collect()
    return st.fr_gather(n) if mode == "gather" else st.fr_map(n)


def run_child(mode: str, side: str, n: int, address: str, warmup: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, side, str(n), address, str(warmup)],
        capture_output=True, text=True, timeout=1800,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{mode} {side} {n} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def row(mode: str, raw: dict, fr: dict) -> str:
    thr = fr["per_s"] / raw["per_s"]
    mem = fr["per_call_b"] / raw["per_call_b"] if raw["per_call_b"] > 0 else float("nan")
    return (f"{mode:8s} {raw['n']:>7,d} | {raw['per_s']:7.0f} {fr['per_s']:7.0f} {thr:5.2f}x | "
            f"{raw['peak_mib']:7.0f} {fr['peak_mib']:7.0f} | {raw['per_call_b'] / 1024:6.2f} "
            f"{fr['per_call_b'] / 1024:6.2f} {mem:5.2f}x")


def supervision(parents: int, children: int, shard_counts: list[int]) -> None:
    """``parents`` spot parents each fanning out ``children`` children whose calls all go through
    the supervising actors (``inline_under=0``: as for children of unknown or long runtime), with
    one actor and with several, beside the same children gathered by the driver (no actor)."""
    from flyte_ray.testing import LocalCluster, NodeSpec

    nodes = [NodeSpec("spot-1", market="spot", cpus=parents + 4), NodeSpec("od-1", market="ondemand", cpus=8)]
    total = parents * children
    with LocalCluster(nodes, storage=tempfile.mkdtemp(prefix="bench-sup-")) as cluster:
        def driver() -> float:
            async def go():
                return await asyncio.gather(*(st.noop.aio(i) for i in range(total)))

            t = time.perf_counter()
            assert len(asyncio.run(go())) == total
            return time.perf_counter() - t

        def spread(shards: int) -> float:
            flyte.shutdown()
            flyte.init(address=cluster.address, inline_under=0, supervisor_shards=shards, progress=False)
            flyte.run(st.spot_parent, 20).outputs()  # warm: the parents' workers, the shard actors

            async def go():
                return await asyncio.gather(*(st.spot_parent.aio(children) for _ in range(parents)))

            t = time.perf_counter()
            assert asyncio.run(go()) == [sum(range(children))] * parents
            return time.perf_counter() - t

        driver()  # warm
        rows = [("driver gathers every child (no actor)", driver())]
        for k in shard_counts:
            rows.append((f"{parents} spot parents, supervisor_shards={k}", spread(k)))
        base = total / rows[0][1]
        print(f"\n{parents} parents x {children} children = {total} calls, on {os.cpu_count()} cores")
        for label, secs in rows:
            print(f"  {label:45s} {total / secs:7.0f} calls/s  ({total / secs / base:4.2f}x the driver)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, side, n, address, warmup = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
        print("RESULT " + json.dumps(child(mode, side, n, address, warmup)), flush=True)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--cpus", type=int, default=8, help="logical CPUs of the embedded cluster")
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--supervision", default="", help="PARENTS,CHILDREN (e.g. 50,200): the sharded supervision "
                    "benchmark instead of the fan-outs")
    ap.add_argument("--shards", default="1,4", help="supervisor_shards values for --supervision")
    a = ap.parse_args()
    if a.supervision:
        p, c = (int(x) for x in a.supervision.split(","))
        supervision(p, c, [int(x) for x in a.shards.split(",")])
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"--modes: {m!r} is not one of {MODES}")
    flyte.init(num_cpus=a.cpus, storage=tempfile.mkdtemp(prefix="bench-scale-"), progress=False)
    address = connected_address()
    print(f"cluster {address}: {a.cpus} logical CPUs on {os.cpu_count()} cores; each figure from a fresh driver")
    print(f"{'mode':8s} {'calls':>7s} | {'raw/s':>7s} {'fr/s':>7s} {'ratio':>6s} | {'raw MiB':>7s} {'fr MiB':>7s} | "
          f"{'raw KiB/call':>12s} {'fr KiB/call':>11s} {'ratio':>6s}")
    print(f"{'':8s} {'':>7s} | {'throughput':^22s} | {'peak RSS':^15s} | {'memory per in-flight call':^32s}")
    for n in sizes:
        for mode in modes:
            time.sleep(1.0)
            raw = run_child(mode, "raw", n, address, a.warmup)
            time.sleep(1.0)
            fr = run_child(mode, "flyte-ray", n, address, a.warmup)
            print(row(mode, raw, fr), flush=True)
    flyte.shutdown()


if __name__ == "__main__":
    main()
