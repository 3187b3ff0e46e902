"""Checkpointed tasks for the resume tests."""

import json
import os
import time

import flyte_ray as flyte

env = flyte.TaskEnvironment(name="ckpt", interruptible=True)


def _log(progress: str, line: str) -> None:
    with open(progress, "a") as f:
        f.write(line + "\n")


@env.task(retries=1)
def train(steps: int, progress: str, step_s: float = 0.15) -> dict:
    c = flyte.ctx()
    raw = c.checkpoint.read()
    state = json.loads(raw) if raw else {"step": 0, "w": 0}
    start = state["step"]
    _log(progress, f"start {c.attempt} {start} {c.node_id}")
    for step in range(start, steps):
        time.sleep(step_s)
        state = {"step": step + 1, "w": state["w"] + step * step}
        c.checkpoint.write(json.dumps(state).encode())
        _log(progress, f"step {c.attempt} {step + 1} {c.node_id}")
    return {"w": state["w"], "resumed_from": start, "attempt": c.attempt}


@env.task(retries=1)
def big_save(progress: str, mb: int) -> dict:
    """Writes a small checkpoint, then starts saving a large one (the test kills it mid-save)."""
    c = flyte.ctx()
    if c.attempt == 0:
        c.checkpoint.write(b"small-complete")
        path = os.path.join(os.path.dirname(progress), "big.bin")
        with open(path, "wb") as f:
            f.truncate(mb * 1024 * 1024)
        _log(progress, f"saving {c.attempt} 0 {c.node_id}")
        c.checkpoint.save(path)
        _log(progress, f"saved {c.attempt} 0 {c.node_id}")
        time.sleep(60)
    return {"read": c.checkpoint.read().decode()}
