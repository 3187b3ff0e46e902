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
def work(i: int, steps: int, step_s: float, log_dir: str, crash: bool, stall_url: str = "") -> int:
    """``steps`` steps of ``step_s`` seconds, checkpointed after each; ``crash``: the first attempt
    dies half-way through (os._exit), a user failure; ``stall_url``: the first attempt also saves
    a side copy to a storage endpoint that never answers, which must fail within its time limit."""
    c = flyte.ctx()
    assert c is not None
    if stall_url and c.attempt == 0:
        t = time.time()
        side = flyte.Checkpoint(
            "s3://stalled-bucket/side",
            options={"endpoint_url": stall_url, "key": "k", "secret": "s3-secret-never-printed",
                     "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 120, "read_timeout": 120}},
            op_timeout=3,
        )
        try:
            side.write(b"side copy")
        except TimeoutError as e:
            _log(log_dir, i, {"attempt": c.attempt, "stalled_for": time.time() - t, "error": str(e)})
            raise
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
