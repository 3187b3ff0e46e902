"""``flyte-ray demo``: a checkpointed training loop on spot capacity survives a real preemption.

On an embedded local multi-node cluster (:class:`flyte_ray.testing.LocalCluster`: two spot nodes
and one on-demand node), a 20-step "training" task checkpoints after every step. Mid-run the
demo preempts the spot node it runs on (drain with reason PREEMPTION, then remove). The
supervisor retries on the other spot node (a *system* retry: the user's ``retries`` are
untouched) and the retry resumes from the last checkpoint. Then the demo preempts that node too:
no spot capacity is left, so after the spot wait (2 s here, 300 s by default) the next attempt
moves to the on-demand node and finishes there. The demo prints the attempt table with the work
the checkpoints saved.

``flyte-ray demo --notice`` shows the notice path instead: each node runs flyte-ray's notice
watcher against a local stand-in for the AWS metadata service. The task checkpoints only every
10 steps; mid-run the cloud announces the preemption of its node 10 s ahead. The watcher drains
the node, the task sees ``ctx().preemption`` within a second, saves, and raises
``TaskInterruptedError``; the next attempt starts at once on the other spot node — while the
noticed node is still up — and resumes from the saved step: nothing is redone.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Optional

import flyte_ray as flyte
from flyte_ray.testing import LocalCluster, NodeSpec

STEPS = 20
STEP_SECONDS = 0.4
PREEMPT_AFTER = (8, 14)  # the step after which the 1st / 2nd spot attempt loses its node
SPOT_WAIT = 2.0

env = flyte.TaskEnvironment(name="demo", resources=flyte.Resources(cpu=1), interruptible=True)


@env.task(retries=1)
def train(steps: int, progress_dir: str) -> dict:
    """A toy training loop: one 'weight' updated per step, checkpointed after every step."""
    c = flyte.ctx()
    assert c is not None  # inside a task
    cp = c.checkpoint
    raw = cp.read()
    state = json.loads(raw) if raw else {"step": 0, "w": 0.0}
    resumed_from = state["step"]
    for step in range(int(state["step"]), steps):
        time.sleep(STEP_SECONDS)  # the expensive part
        state = {"step": step + 1, "w": state["w"] + 0.5 * (step + 1)}
        cp.write(json.dumps(state).encode())
        with open(os.path.join(progress_dir, f"attempt-{c.attempt}"), "w") as f:
            f.write(json.dumps({"resumed_from": resumed_from, "step": step + 1, "node": c.node_id}))
    return {"w": state["w"], "resumed_from": resumed_from, "attempt": c.attempt}


NOTICE_EVERY = 10  # --notice: the task checkpoints every 10 steps, and on a notice
NOTICE_AFTER = 12  # --notice: the step after which the cloud announces the node's preemption
NOTICE_S = 6.0  # --notice: how far ahead (AWS gives 120 s)


@env.task(retries=1)
def train_on_notice(steps: int, progress_dir: str) -> dict:
    """The same loop, checkpointed every NOTICE_EVERY steps and when a preemption notice comes."""
    c = flyte.ctx()
    assert c is not None  # inside a task
    cp = c.checkpoint
    raw = cp.read()
    state = json.loads(raw) if raw else {"step": 0, "w": 0.0}
    resumed_from = state["step"]
    started = time.time()
    for step in range(int(state["step"]), steps):
        if c.preemption.is_set():  # the node goes soon: save now and move
            cp.write(json.dumps(state).encode())
            with open(os.path.join(progress_dir, f"saved-{c.attempt}"), "w") as f:
                f.write(json.dumps({"step": state["step"], "at": time.time()}))
            raise flyte.errors.TaskInterruptedError(f"preemption notice: saved step {state['step']}")
        time.sleep(STEP_SECONDS)  # the expensive part
        state = {"step": step + 1, "w": state["w"] + 0.5 * (step + 1)}
        if state["step"] % NOTICE_EVERY == 0:
            cp.write(json.dumps(state).encode())
        with open(os.path.join(progress_dir, f"attempt-{c.attempt}"), "w") as f:
            f.write(json.dumps({"resumed_from": resumed_from, "step": step + 1, "node": c.node_id, "at": started}))
    return {"w": state["w"], "resumed_from": resumed_from, "attempt": c.attempt, "started": started}


def expected_weight(steps: int) -> float:
    return sum(0.5 * (s + 1) for s in range(steps))


def main(out: Any = sys.stdout, notice: bool = False) -> int:
    def say(msg: str = "") -> None:
        print(msg, file=out, flush=True)

    if notice:
        return _notice_demo(say)

    t0 = time.time()
    storage = tempfile.mkdtemp(prefix="flyte-ray-demo-")
    progress = os.path.join(storage, "progress")
    os.makedirs(progress)
    say("flyte-ray demo: a checkpointed training loop on spot capacity, preempted mid-run\n")
    say("starting a local cluster: head (on-demand), spot-a, spot-b (spot), ondemand-a (on-demand)...")
    nodes = [
        NodeSpec("spot-a", market="spot"),
        NodeSpec("spot-b", market="spot"),
        NodeSpec("ondemand-a", market="ondemand"),
    ]
    try:
        with LocalCluster(nodes, storage=storage, spot_wait=SPOT_WAIT) as cluster:
            say(f"cluster up in {time.time() - t0:.1f}s at {cluster.address}\n")
            run = flyte.run(train, STEPS, progress)
            say(f"run {run.name}: train({STEPS} steps, {STEP_SECONDS}s each), interruptible=True, retries=1")
            victims = []
            for attempt, after in enumerate(PREEMPT_AFTER):
                victim = None
                while victim is None and not run.done():
                    path = os.path.join(progress, f"attempt-{attempt}")
                    if os.path.exists(path):
                        try:
                            p = json.loads(open(path).read())
                        except ValueError:
                            p = {"step": 0}
                        if p["step"] >= after:
                            victim = cluster.name_of(p["node"])
                    time.sleep(0.05)
                if victim is None:
                    break
                say(
                    f"step {after} done on {victim}: preempting {victim} "
                    "(drain with reason PREEMPTION, then remove the node)..."
                )
                cluster.preempt(victim)
                victims.append(victim)
                if attempt == 0:
                    say("  the retry runs on the other spot node and resumes from the checkpoint")
                else:
                    say(f"  no spot capacity left: after the spot wait ({SPOT_WAIT:g}s) the call moves to on-demand")
            result = run.outputs()
            say(
                f"\nresult: w={result['w']} (uninterrupted run: {expected_weight(STEPS)}) — "
                f"{'equal' if result['w'] == expected_weight(STEPS) else 'DIFFERENT'}"
            )
            say(f"the final attempt resumed from step {result['resumed_from']} instead of 0\n")
            say(run.history_table())
            saved = result["resumed_from"]
            say(
                f"\ncheckpoint saved {saved} of {STEPS} steps ({saved * STEP_SECONDS:.1f}s of work) from being "
                f"redone; user retries used: {run.user_failures}, system retries (preemptions): "
                f"{run.system_failures}"
            )
            say(f"demo finished in {time.time() - t0:.1f}s")
            ok = result["w"] == expected_weight(STEPS) and (len(victims) < 2 or saved >= PREEMPT_AFTER[-1])
            return 0 if ok else 1
    finally:
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())


def _wait_progress(path: str, step: int, run: "flyte.Run") -> Optional[dict]:
    while not run.done():
        if os.path.exists(path):
            try:
                p = json.loads(open(path).read())
            except ValueError:
                p = {"step": 0}
            if p["step"] >= step:
                return p
        time.sleep(0.05)
    return None


def _notice_demo(say: Any) -> int:
    t0 = time.time()
    storage = tempfile.mkdtemp(prefix="flyte-ray-demo-")
    progress = os.path.join(storage, "progress")
    os.makedirs(progress)
    say("flyte-ray demo --notice: a preemption notice turns into a saved checkpoint and a moved attempt\n")
    say("starting a local cluster: head, spot-a, spot-b (spot), ondemand-a; each node runs")
    say("`flyte-ray watch-preemption` against a local stand-in for the AWS metadata service...")
    nodes = [
        NodeSpec("spot-a", market="spot"),
        NodeSpec("spot-b", market="spot"),
        NodeSpec("ondemand-a", market="ondemand"),
    ]
    try:
        with LocalCluster(nodes, storage=storage, notices="aws") as cluster:
            say(f"cluster up in {time.time() - t0:.1f}s at {cluster.address}\n")
            run = flyte.run(train_on_notice, STEPS, progress)
            say(
                f"run {run.name}: train({STEPS} steps, {STEP_SECONDS}s each), checkpoints every {NOTICE_EVERY} "
                "steps and on a notice"
            )
            p = _wait_progress(os.path.join(progress, "attempt-0"), NOTICE_AFTER, run)
            if p is None:
                say("the run ended before the notice")
                return 1
            victim = cluster.name_of(p["node"]) or p["node"]
            say(f"step {p['step']} done on {victim}: AWS announces its spot interruption {NOTICE_S:g}s ahead")
            removed: dict = {}

            def notify() -> None:
                cluster.notify(victim, notice_s=NOTICE_S)
                removed["at"] = time.time()

            th = threading.Thread(target=notify, daemon=True)
            t_notice = time.time()
            th.start()
            result = run.outputs()
            th.join()
            saved = json.loads(open(os.path.join(progress, "saved-0")).read())
            log = cluster.watcher_log(victim)
            drained = next((ln for ln in log.splitlines() if "drained Ray node" in ln), "")
            say(f"  the watcher on {victim}: {drained.split(': ', 1)[-1]}")
            after = saved["at"] - t_notice
            say(f"  the task saw ctx().preemption and saved step {saved['step']} ({after:.1f}s after the notice)")
            say(
                f"  the next attempt started {result['started'] - saved['at']:.1f}s after the save, on the other spot "
                f"node, while {victim} was still up (removed {removed['at'] - result['started']:.1f}s later)"
            )
            redone = p["step"] - result["resumed_from"] if result["resumed_from"] < p["step"] else 0
            say(f"  it resumed from step {result['resumed_from']}: {redone} steps redone\n")
            say(run.history_table())
            ok = result["w"] == expected_weight(STEPS) and result["resumed_from"] == saved["step"]
            say(
                f"\nresult: w={result['w']} (uninterrupted run: {expected_weight(STEPS)}) — "
                f"{'equal' if result['w'] == expected_weight(STEPS) else 'DIFFERENT'}; user retries used: "
                f"{run.user_failures}, system retries: {run.system_failures}"
            )
            say(
                f"without the notice the attempt would have resumed from step "
                f"{(saved['step'] // NOTICE_EVERY) * NOTICE_EVERY} (its last periodic checkpoint)"
            )
            say(f"demo finished in {time.time() - t0:.1f}s")
            return 0 if ok else 1
    finally:
        shutil.rmtree(storage, ignore_errors=True)
