"""Chaos: checkpointed tasks on a real multi-node LocalCluster while spot nodes are taken away.

``--tasks`` (default 200) tasks of ``--steps`` checkpointed steps run on a cluster of on-demand
and spot nodes. While they run, a spot node is preempted every ``--every`` seconds, at random
either gracefully (drained with reason PREEMPTION, ``--notice`` seconds, then removed) or hard
(removed at once), and replaced by a fresh spot node as an autoscaler would. One task crashes
its worker (``os._exit``) half-way through its first attempt, and one saves a side copy to a
storage endpoint that accepts connections and never answers (a stalled store), which must fail
within its time limit (a user failure; the retry finishes).

Reports:

* results correct / tasks;
* user retries consumed by preemptions: user failures other than the one planted crash (must be 0);
* checkpoints lost: retries that resumed from an earlier step than the last checkpoint an earlier
  attempt of the same call saved (must be 0);
* system failures (preemptions, node losses) absorbed, preemptions injected;
* the longest wait between two attempts of a task (last step of one to the resume of the next),
  split into reaction (the attempt's end as the supervisor saw it → the retry submitted: failure
  detection and backoff) and queueing (submitted → running: waiting for a free slot behind the
  other tasks, which Ray serves in order);
* how long the stalled save blocked before it failed, and whether its error named no secret.

Run: ``python benchmarks/chaos.py [--tasks 200] [--steps 8] [--step-s 0.3] [--every 4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time

_here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _here)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_here, os.environ.get("PYTHONPATH", "")) if p)

import chaos_tasks as ct  # noqa: E402

import flyte_ray as flyte  # noqa: E402
from flyte_ray.testing import LocalCluster, NodeSpec  # noqa: E402


def _silent_endpoint() -> str:
    """``http://127.0.0.1:<port>``: accepts every connection, reads nothing, never answers."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held = []

    def accept() -> None:
        while True:
            conn, _ = srv.accept()
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}"


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
    stall_task = 2 * a.tasks // 3
    stall_url = _silent_endpoint()
    injected = {"graceful": 0, "hard": 0}
    with LocalCluster(nodes, storage=storage, system_retries=-1) as cluster:
        t0 = time.monotonic()
        runs = [
            flyte.run(ct.work, i, a.steps, a.step_s, log_dir, i == crash_task, stall_url if i == stall_task else "")
            for i in range(a.tasks)
        ]
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
    planted += sum(1 for rec in histories[stall_task] if rec.failure_kind == "user")
    system = sum(1 for h in histories for rec in h if rec.failure_kind == "system")
    lost, longest, react, queued, stall = 0, (0.0, 0.0, 0.0), 0.0, 0.0, None
    for i in range(a.tasks):
        with open(os.path.join(log_dir, f"task-{i}.jsonl")) as f:
            events = [json.loads(line) for line in f]
        starts = {e["attempt"]: e["t"] for e in events if "resumed" in e}
        hist = histories[i]
        saved_before = 0
        last_t = None
        for e in events:
            if "stalled_for" in e:
                stall = e
            if "resumed" in e:
                if e["resumed"] < saved_before:
                    lost += 1
                if last_t is not None:
                    k = e["attempt"]
                    r = hist[k].submitted - hist[k - 1].ended if k >= 1 and hist[k - 1].ended else 0.0
                    q = starts[k] - hist[k].submitted
                    react, queued = max(react, r), max(queued, q)
                    if e["t"] - last_t > longest[0]:
                        longest = (e["t"] - last_t, r, q)
            elif "saved" in e:
                saved_before = max(saved_before, e["saved"])
            last_t = e["t"]
    print(f"chaos: {a.tasks} tasks x {a.steps} steps of {a.step_s}s on 2 on-demand + 3 spot nodes, "
          f"a preemption every {a.every}s ({injected['graceful']} graceful with {a.notice}s notice, "
          f"{injected['hard']} hard), one planted worker crash; {wall:.0f}s")
    print(f"  results correct                        : {correct} / {a.tasks}")
    print(f"  user retries consumed by preemptions   : {user_failures - planted} (planted crash used {planted})")
    print(f"  checkpoints lost                       : {lost}")
    print(f"  system failures absorbed               : {system}")
    print(f"  longest wait between attempts          : {longest[0]:.1f}s (reaction {longest[1]:.1f}s, "
          f"queueing {longest[2]:.1f}s)")
    print(f"  longest reaction / queueing of a retry : {react:.1f}s / {queued:.1f}s")
    if stall is not None:
        secret_shown = "s3-secret-never-printed" in stall["error"]
        print(f"  stalled storage save                   : failed after {stall['stalled_for']:.1f}s "
              f"({'LEAKED the secret' if secret_shown else 'no secret in the error'}): {stall['error'][:120]}")
    failed = [(i, repr(r)[:200]) for i, r in enumerate(results) if r != ct.expected(i, a.steps)]
    for i, r in failed[:5]:
        print(f"  task {i}: {r}")


if __name__ == "__main__":
    main()
