"""A task that checkpoints (tests/test_run_names.py)."""

import flyte_ray as flyte

env = flyte.TaskEnvironment(name="runs")


@env.task
def count_up(n: int) -> int:
    """Resumes from its checkpoint: the value it starts from tells whether it resumed."""
    cp = flyte.ctx().checkpoint
    raw = cp.read()
    start = int(raw) if raw else 0
    cp.write(str(start + n).encode())
    return start
