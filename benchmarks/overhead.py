"""flyte-ray call overhead vs raw Ray, side by side in one run on one cluster.

Measures, from the driver and from inside a parent task running on spot capacity:

* sequential latency: N calls one after another (``task(i)`` vs ``ray.get(f.remote(i))``);
* fan-out throughput: M calls at once (``asyncio.gather(task.aio(i) ...)`` vs ``ray.get([f.remote(i) ...])``).

The raw tasks request the same placement markers as flyte-ray's attempts (the spot market), so
both sides run on the same nodes.

Inside the spot parent, calls of a task whose runs are short (``init(inline_under=...)``, default
0.1 s) are supervised by the parent; the run with ``inline_under=0`` sends every call through the
supervising actor instead, to show what that hop costs.

Prints each figure and the ratio flyte-ray / raw (latency: lower is better; throughput: higher).

``--record`` (default on) also measures what recording a run's attempts costs: the driver figures
again with every call recorded (``init(record="all")``: each plain call is a run of its own, the
worst case) and with recording off (``record="off"``), alternated in the same run; the ratio of
the two flyte-ray ratios is the recording's cost. (The default, ``record="runs"``, records only
runs started with ``flyte.run``, so plain driver calls do not pay it at all.)

Run: ``python benchmarks/overhead.py [--seq 300] [--fanout 2000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402

import flyte_ray as flyte  # noqa: E402
from flyte_ray.testing import LocalCluster, NodeSpec  # noqa: E402

import overhead_tasks as ot  # noqa: E402


def driver_figures(n_seq: int, n_fan: int, repeat: int) -> dict:
    """Raw and flyte-ray measured in alternation, so drift on this shared machine hits both alike:
    sequential latency is the median per-call time over ``10 * repeat`` blocks of ``n_seq / 10``
    calls each; throughput is the best of ``repeat`` alternating fan-outs of ``n_fan`` calls, each
    after a 1 s pause."""
    raw_square = ot.raw_remote()
    block = max(n_seq // 10, 10)

    def raw_seq():
        t = time.perf_counter()
        for i in range(block):
            ray.get(raw_square.remote(i))
        return (time.perf_counter() - t) / block

    def fr_seq():
        t = time.perf_counter()
        for i in range(block):
            ot.square(i)
        return (time.perf_counter() - t) / block

    def raw_fan():
        t = time.perf_counter()
        ray.get([raw_square.remote(i) for i in range(n_fan)])
        return time.perf_counter() - t

    def fr_fan():
        async def go():
            return await asyncio.gather(*(ot.square.aio(i) for i in range(n_fan)))

        t = time.perf_counter()
        asyncio.run(go())
        return time.perf_counter() - t

    raw_seq(), fr_seq()  # warm up workers and function exports
    seq = {"raw": [], "fr": []}
    for _ in range(10 * repeat):
        seq["raw"].append(raw_seq())
        seq["fr"].append(fr_seq())
    fan = {"raw": [], "fr": []}
    for _ in range(repeat):
        # A pause before each fan-out lets the other side's leftovers (releasing 2000 refs,
        # flyte-ray's batched result records) finish instead of landing in this measurement.
        time.sleep(1.0)
        fan["raw"].append(raw_fan())
        time.sleep(1.0)
        fan["fr"].append(fr_fan())
    return {"raw_seq": statistics.median(seq["raw"]), "fr_seq": statistics.median(seq["fr"]),
            "raw_fan": n_fan / min(fan["raw"]), "fr_fan": n_fan / min(fan["fr"])}


def report(title: str, f: dict) -> None:
    lat = f["fr_seq"] / f["raw_seq"]
    thr = f["fr_fan"] / f["raw_fan"]
    print(f"\n{title}")
    print(f"  sequential latency : raw {f['raw_seq'] * 1e3:7.2f} ms   flyte-ray {f['fr_seq'] * 1e3:7.2f} ms   "
          f"ratio {lat:.2f}x")
    print(f"  fan-out throughput : raw {f['raw_fan']:7.0f} /s   flyte-ray {f['fr_fan']:7.0f} /s   ratio {thr:.2f}x")


def record_figures(a: argparse.Namespace) -> None:
    """What recording costs, alternated in one run (two rounds each): (1) the realistic case, the
    in-task figures of a parent started with ``flyte.run`` (its children are recorded) with
    recording on (``record="runs"``, the default) and off; (2) the worst case, the driver figures
    with every plain call a recorded run of its own (``record="all"``) and off."""
    cases = {"in-task, run recorded": [], "in-task, recording off": [], "driver, every call recorded": [],
             "driver, recording off": []}
    for _ in range(2):
        for mode, name in (("runs", "in-task, run recorded"), ("off", "in-task, recording off")):
            flyte.init(address="auto", record=mode)
            f = flyte.run(ot.parent_bench, a.seq, a.fanout, a.repeat).outputs()
            f.pop("market")
            cases[name].append(f)
        for mode, name in (("all", "driver, every call recorded"), ("off", "driver, recording off")):
            flyte.init(address="auto", record=mode)
            cases[name].append(driver_figures(a.seq, a.fanout, a.repeat))
    flyte.init(address="auto", record="runs")
    keys = ("raw_seq", "fr_seq", "raw_fan", "fr_fan")
    med = {name: {k: statistics.median(r[k] for r in rows) for k in keys} for name, rows in cases.items()}
    for name, f in med.items():
        report(name, f)
    for on, off in (("in-task, run recorded", "in-task, recording off"),
                    ("driver, every call recorded", "driver, recording off")):
        lat = (med[on]["fr_seq"] / med[on]["raw_seq"]) / (med[off]["fr_seq"] / med[off]["raw_seq"])
        thr = (med[on]["fr_fan"] / med[on]["raw_fan"]) / (med[off]["fr_fan"] / med[off]["raw_fan"])
        print(f"  recording's cost, {on.split(',')[0]}: latency ratio x{lat:.3f}, fan-out ratio x{thr:.3f} (on / off)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=300)
    ap.add_argument("--fanout", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                    help="also compare the driver figures with recording on (record='all') and off")
    ap.add_argument("--only-record", action="store_true", help="run only the recording comparison")
    ap.add_argument("--actor", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure in-task calls with every call through the supervising actor")
    a = ap.parse_args()
    # Logical CPUs, not cores: the parent holds one of the spot node's slots while it runs, and
    # the fan-outs should be bound by overhead, not by a slot count the two sides use differently
    # (a blocking ray.get lends its slot to children; an event loop awaiting them does not).
    nodes = [NodeSpec("spot-1", market="spot", cpus=4), NodeSpec("od-1", market="ondemand", cpus=2)]
    with LocalCluster(nodes, storage=tempfile.mkdtemp(prefix="bench-overhead-")):
        if a.record or a.only_record:
            record_figures(a)
        if a.only_record:
            return
        d = driver_figures(a.seq, a.fanout, a.repeat)
        report("from the driver", d)
        inside = ot.parent_bench(a.seq, a.fanout, a.repeat)
        assert inside.pop("market") == "spot"
        report("from inside a parent task on spot (default: short calls supervised by the parent, "
               "results recorded with the supervising actor)", inside)
        if a.actor:
            flyte.init(address="auto", inline_under=0)  # every in-task call through the supervising actor
            inside = ot.parent_bench(a.seq, a.fanout, a.repeat)
            assert inside.pop("market") == "spot"
            report("from inside a parent task on spot, every call through the supervising actor "
                   "(init(inline_under=0))", inside)


if __name__ == "__main__":
    main()
