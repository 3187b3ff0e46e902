"""Chaos: checkpointed tasks on a real multi-node LocalCluster while spot nodes are taken away.

``--tasks`` (default 200) tasks of ``--steps`` checkpointed steps run on a cluster of on-demand
and spot nodes. While they run, a spot node is preempted every ``--every`` seconds, at random
either gracefully (drained with reason PREEMPTION, ``--notice`` seconds, then removed) or hard
(removed at once), and replaced by a fresh spot node as an autoscaler would. One task crashes
its worker (``os._exit``) half-way through its first attempt.

Reports:

* results correct / tasks;
* user retries consumed by preemptions: user failures other than the one planted crash (must be 0);
* checkpoints lost: retries that resumed from an earlier step than the last checkpoint an earlier
  attempt of the same call saved (must be 0);
* system failures (preemptions, node losses) absorbed, preemptions injected;
* the longest silent wait: the longest time a task made no progress between two of its
  attempts (last step of one to the resume of the next).

Run: ``python benchmarks/chaos.py [--tasks 200] [--steps 8] [--step-s 0.3] [--every 4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

_here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _here)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_here, os.environ.get("PYTHONPATH", "")) if p)

import flyte_ray as flyte  # noqa: E402
from flyte_ray.testing import LocalCluster, NodeSpec  # noqa: E402

import chaos_tasks as ct  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--step-s", type=float, default=0.3)
    ap.add_argument("--every", type=float, default=4.0, help="seconds between preemptions")
    ap.add_argument("--notice", type=float, default=1.0, help="graceful preemptions' notice")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    log_dir = tempfile.mkdtemp(prefix="flyte-ray-chaos-")
    storage = tempfile.mkdtemp(prefix="flyte-ray-chaos-store-")
    nodes = [NodeSpec("od-1", market="ondemand", cpus=2), NodeSpec("od-2", market="ondemand", cpus=2)]
    nodes += [NodeSpec(f"spot-{k}", market="spot", cpus=2) for k in range(3)]
    crash_task = a.tasks // 3
    injected = {"graceful": 0, "hard": 0}
    with LocalCluster(nodes, storage=storage, system_retries=-1) as cluster:
        t0 = time.monotonic()
        runs = [flyte.run(ct.work, i, a.steps, a.step_s, log_dir, i == crash_task) for i in range(a.tasks)]
        # The preemptions run on this (the main) thread: Ray's node start-up installs signal
        # handlers, which only the main thread may do.
        while not all(r.done() for r in runs):
            time.sleep(a.every)
            spots = [n for n in cluster.nodes if n.startswith("spot")]
            if not spots or all(r.done() for r in runs):
                continue
            victim = rng.choice(spots)
            graceful = rng.random() < 0.5
            try:
                cluster.preempt(victim, graceful=graceful, notice_s=a.notice if graceful else 0.0, replace=True)
                injected["graceful" if graceful else "hard"] += 1
            except Exception as e:  # noqa: BLE001
                print(f"chaos: preempting {victim} failed: {e}", flush=True)
        results = []
        for run in runs:
            try:
                results.append(run.outputs(timeout=60))
            except Exception as e:  # noqa: BLE001
                results.append(e)
        wall = time.monotonic() - t0
        histories = [r.history for r in runs]
    correct = sum(1 for i, r in enumerate(results) if r == ct.expected(i, a.steps))
    user_failures = sum(1 for h in histories for rec in h if rec.failure_kind == "user")
    planted = sum(1 for rec in histories[crash_task] if rec.outcome == "worker_crash")
    system = sum(1 for h in histories for rec in h if rec.failure_kind == "system")
    lost, longest = 0, 0.0
    for i in range(a.tasks):
        with open(os.path.join(log_dir, f"task-{i}.jsonl")) as f:
            events = [json.loads(line) for line in f]
        saved_before = 0
        last_t = None
        for e in events:
            if "resumed" in e:
                if e["resumed"] < saved_before:
                    lost += 1
                if last_t is not None:
                    longest = max(longest, e["t"] - last_t)
            else:
                saved_before = max(saved_before, e["saved"])
            last_t = e["t"]
    print(f"chaos: {a.tasks} tasks x {a.steps} steps of {a.step_s}s on 2 on-demand + 3 spot nodes, "
          f"a preemption every {a.every}s ({injected['graceful']} graceful with {a.notice}s notice, "
          f"{injected['hard']} hard), one planted worker crash; {wall:.0f}s")
    print(f"  results correct                        : {correct} / {a.tasks}")
    print(f"  user retries consumed by preemptions   : {user_failures - planted} (planted crash used {planted})")
    print(f"  checkpoints lost                       : {lost}")
    print(f"  system failures absorbed               : {system}")
    print(f"  longest silent wait between attempts   : {longest:.1f}s")
    failed = [(i, repr(r)[:200]) for i, r in enumerate(results) if r != ct.expected(i, a.steps)]
    for i, r in failed[:5]:
        print(f"  task {i}: {r}")


if __name__ == "__main__":
    main()
