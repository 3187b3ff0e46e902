"""flytekit-style task code, written as flytekit's docs teach it; only the imports name flyte_ray.

The checkpointed loop follows flytekit's intratask-checkpointing pattern: read the last step from
``current_context().checkpoint``, fail on purpose with ``FlyteRecoverableException`` every few
steps, write progress after each step; retries resume where the last attempt stopped.
"""

import os
import time

import flyte_ray.flytekit as flytekit
from flyte_ray.flytekit import current_context, dynamic, map_task, task, workflow
from flyte_ray.flytekit.exceptions.user import FlyteRecoverableException

RETRIES = 3


@task(retries=RETRIES)
def use_checkpoint(n_iterations: int) -> int:
    cp = current_context().checkpoint
    prev = cp.read()
    start = 0
    if prev:
        start = int(prev.decode())
    # fail on purpose every few iterations: the retries finish the loop from the checkpoint
    failure_interval = n_iterations // RETRIES
    index = 0
    for index in range(start, n_iterations):
        if index > start and index % failure_interval == 0:
            raise FlyteRecoverableException(f"Failed at iteration {index}, failure_interval {failure_interval}")
        cp.write(f"{index + 1}".encode())
    return index


@workflow
def checkpointing_example(n_iterations: int) -> int:
    return use_checkpoint(n_iterations=n_iterations)


@task(retries=3)
def not_recoverable(marker: str) -> int:
    with open(marker, "a") as f:
        f.write("attempt\n")
    raise ValueError("bad input: not retried")


@task
def add(a: int, b: int) -> int:
    return a + b


@task(requests=flytekit.Resources(cpu="100m", mem="100Mi"), limits=flytekit.Resources(cpu="1", mem="200Mi"))
def square(x: int) -> int:
    return x * x


@workflow
def pipeline(a: int, b: int) -> int:
    s = add(a=a, b=b)
    return square(x=s)


@dynamic
def fan(n: int) -> list:
    return [square(x=i) for i in range(n)]


@workflow
def mapped(xs: list) -> list:
    return map_task(square)(x=xs)


@task(cache=True, cache_version="1")
def cached(x: int, marker: str) -> int:
    with open(marker, "a") as f:
        f.write("ran\n")
    return x + 1


@task(retries=2, interruptible=True)
def train(steps: int, progress: str, step_s: float = 0.15) -> dict:
    """A checkpointed loop for the preemption test: progress lines name the attempt and node."""
    import flyte_ray

    c = flyte_ray.ctx()
    cp = current_context().checkpoint
    start = int(cp.read() or b"0")
    with open(progress, "a") as f:
        f.write(f"start {c.attempt} {start} {c.node_id}\n")
    for step in range(start, steps):
        time.sleep(step_s)
        cp.write(f"{step + 1}".encode())
        with open(progress, "a") as f:
            f.write(f"step {c.attempt} {step + 1} {c.node_id} {c.market}\n")
    return {"resumed_from": start, "attempt": c.attempt, "pid": os.getpid()}


@task(enable_deck=True)
def with_deck() -> str:
    flytekit.Deck("summary", "<p>hello from a deck</p>")
    return current_context().execution_id.name


@task
def context_facts() -> dict:
    p = current_context()
    wd = p.working_directory
    with open(os.path.join(wd, "x"), "w") as f:
        f.write("x")
    return {"run": p.execution_id.name, "task": p.task_id.name, "wd": wd, "secret": p.secrets.get("grp", "key")}


# ---- flyte_ray.io between nodes (test_checkpoint_resume.py's fleet: od-1 and gpu-od) ----------
import flyte_ray  # noqa: E402
from flyte_ray.io import Dir, File  # noqa: E402

io_w = flyte_ray.TaskEnvironment(name="io-w", interruptible=False)
io_r = flyte_ray.TaskEnvironment(name="io-r", queue="gpu-pool", interruptible=False)


@io_w.task
def io_write(text: str, tree: dict) -> tuple:
    import tempfile

    root = tempfile.mkdtemp()
    p = os.path.join(root, "note.txt")
    with open(p, "w") as f:
        f.write(text)
    f_ = File.from_local_sync(p)
    os.remove(p)  # the reader cannot find it on this node's disk: only in storage
    folder = os.path.join(root, "tree")
    for rel, body in tree.items():
        os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
        with open(os.path.join(folder, rel), "w") as f:
            f.write(body)
    d = Dir.from_local_sync(folder)
    import shutil

    shutil.rmtree(root)
    c = flyte_ray.ctx()
    return f_, d, c.node_id, c.run_name


@io_r.task
def io_read(f: File, d: Dir) -> tuple:
    got = open(f.download_sync()).read()
    with f.open_sync("rb") as fh:
        streamed = fh.read().decode()
    where = d.download_sync()
    tree = {}
    for dirpath, _, files in os.walk(where):
        for name in files:
            full = os.path.join(dirpath, name)
            tree[os.path.relpath(full, where)] = open(full).read()
    return got, streamed, tree, flyte_ray.ctx().node_id


@io_w.task
def io_pipeline(text: str, tree: dict) -> tuple:
    f, d, wnode, run = io_write(text, tree)
    got, streamed, back, rnode = io_read(f, d)
    return f.path, run, wnode, rnode, got, streamed, back
