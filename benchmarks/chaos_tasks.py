"""The task of benchmarks/chaos.py (a module, so workers import it by reference)."""

import json
import os
import time

import flyte_ray as flyte

env = flyte.TaskEnvironment(name="chaos", interruptible=True, resources=flyte.Resources(cpu=0.5))


def expected(i: int, steps: int) -> int:
    return (i + 1) * steps * (steps + 1) // 2


def _log(log_dir: str, i: int, event: dict) -> None:
    event["t"] = time.time()
    with open(os.path.join(log_dir, f"task-{i}.jsonl"), "a") as f:
        f.write(json.dumps(event) + "\n")


@env.task(retries=2)
def work(i: int, steps: int, step_s: float, log_dir: str, crash: bool) -> int:
    """``steps`` steps of ``step_s`` seconds, checkpointed after each; ``crash``: the first attempt
    dies half-way through (os._exit), a user failure."""
    c = flyte.ctx()
    assert c is not None
    cp = c.checkpoint
    raw = cp.read()
    state = json.loads(raw) if raw else {"step": 0, "acc": 0}
    _log(log_dir, i, {"attempt": c.attempt, "resumed": state["step"], "market": str(c.market)})
    for s in range(state["step"], steps):
        time.sleep(step_s)
        if crash and c.attempt == 0 and s == steps // 2:
            os._exit(7)
        state = {"step": s + 1, "acc": state["acc"] + (i + 1) * (s + 1)}
        cp.write(json.dumps(state).encode())
        _log(log_dir, i, {"attempt": c.attempt, "saved": s + 1})
    return state["acc"]
