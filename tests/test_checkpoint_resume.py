"""A checkpointed loop resumes after a real preemption, on a local folder, S3 (moto) and memory://;
and the Flyte drop-in on the same fleet: a flytekit-style loop across a preemption, flyte_ray.io
between nodes."""

import os
import tempfile
import time
import uuid

import pytest

import flyte_ray as flyte
from helpers import wait_until

import tasks_ckpt as tk

try:
    from _s3server import s3_server  # noqa: F401 -- session fixture (same import name as the store tests)
except ImportError:  # pragma: no cover
    from tests._s3server import s3_server  # noqa: F401

pytestmark = pytest.mark.timeout(180)
STEPS = 20


def _lines(path):
    return [ln.split() for ln in open(path).read().splitlines()] if os.path.exists(path) else []


def expected(steps):
    return sum(s * s for s in range(steps))


@pytest.fixture(params=["local", "s3"])
def storage(request, fleet, tmp_path):
    if request.param == "local":
        flyte.init(storage=str(tmp_path / "store"))
    else:
        s3 = request.getfixturevalue("s3_server")
        flyte.init(storage=f"s3://{s3['bucket']}/{uuid.uuid4().hex}", storage_options=s3["options"])
    yield request.param
    flyte.init(storage=str(tmp_path / "store"))


def test_resume_after_preemption_redoes_at_most_one_step(fleet, storage, tmp_path):
    progress = str(tmp_path / "progress")
    run = flyte.run(tk.train, STEPS, progress)
    wait_until(lambda: any(l[0] == "step" and int(l[2]) >= 8 for l in _lines(progress)))
    node = [l for l in _lines(progress) if l[0] == "step"][-1][3]
    assert fleet.market_of(node) == "spot"
    fleet.preempt(fleet.name_of(node), replace=True)
    out = run.outputs()
    assert out["w"] == expected(STEPS)  # same as an uninterrupted run
    steps_attempt0 = max(int(l[2]) for l in _lines(progress) if l[0] == "step" and l[1] == "0")
    assert out["resumed_from"] >= 8 and out["resumed_from"] >= steps_attempt0 - 1  # <= 1 step redone
    assert [r.outcome for r in run.history] == ["preemption", "succeeded"]


def test_retry_after_an_attempt_that_wrote_nothing_gets_the_newest_complete(fleet, tmp_path):
    flyte.init(storage=str(tmp_path / "store"))
    progress = str(tmp_path / "progress")
    # 24 steps: attempt 1 needs ~6 s to finish, so the test kills it well before it can (on a
    # loaded two-core machine 12 steps left it a 2.4 s window, and it sometimes finished first)
    run = flyte.run(tk.train, 24, progress, 0.3)
    wait_until(lambda: any(l[0] == "step" and int(l[2]) >= 4 for l in _lines(progress)))
    node0 = [l for l in _lines(progress) if l[0] == "step"][-1][3]
    fleet.preempt(fleet.name_of(node0), replace=True)
    # attempt 1 starts, then dies before it writes any checkpoint
    wait_until(lambda: any(l[0] == "start" and l[1] == "1" for l in _lines(progress)))
    node1 = [l for l in _lines(progress) if l[0] == "start" and l[1] == "1"][0][3]
    fleet.preempt(fleet.name_of(node1), graceful=False, replace=True)
    out = run.outputs()
    starts = {int(l[1]): int(l[2]) for l in _lines(progress) if l[0] == "start"}
    written0 = max(int(l[2]) for l in _lines(progress) if l[0] == "step" and l[1] == "0")
    assert out["w"] == expected(24)
    assert 2 in starts, f"attempt 1 finished before the test killed its node: {starts}"
    assert starts[2] >= written0 - 1 and starts[2] >= 4  # not Flyte's attempt-1 rule: nothing lost
    assert [r.failure_kind for r in run.history] == ["system", "system", None]


def test_killed_mid_save_leaves_the_previous_checkpoint(fleet, tmp_path):
    flyte.init(storage=str(tmp_path / "store"))
    progress = str(tmp_path / "progress")
    run = flyte.run(tk.big_save, progress, 400)
    wait_until(lambda: any(l[0] == "saving" for l in _lines(progress)))
    time.sleep(0.05)
    node = _lines(progress)[0][3]
    fleet.preempt(fleet.name_of(node), graceful=False, replace=True)
    out = run.outputs()
    saved = any(l[0] == "saved" for l in _lines(progress))
    # the big save was cut off (so the small one is still newest), or it finished before the
    # kill landed; either way nothing half-written is ever read back
    assert out["read"] == "small-complete" or saved


def test_memory_storage_round_trip_in_process():
    # memory:// lives in one process: fine for notebooks and tests of task code via forward()
    cp = flyte.Checkpoint(f"memory://fr-{uuid.uuid4().hex}/call")
    assert cp.read() is None and not cp.prev_exists()
    cp.write(b"one")
    cp.write(b"two")
    assert flyte.Checkpoint(cp.url).read() == b"two"


# ---------------------------------------------------------------- the Flyte drop-in on a fleet
def test_flytekit_checkpointed_loop_resumes_across_a_real_preemption(fleet, tmp_path):
    """flytekit's intratask-checkpoint pattern (tests/tasks_flytekit.py, only the import names
    flyte_ray) on spot: the node is preempted mid-loop and the retry resumes from the checkpoint
    as a system retry, leaving the task's own retries untouched."""
    import tasks_flytekit as fk

    flyte.init(storage=str(tmp_path / "store"))
    progress = str(tmp_path / "progress")
    run = flyte.run(fk.train, STEPS, progress)
    wait_until(lambda: any(l[0] == "step" and int(l[2]) >= 6 for l in _lines(progress)))
    node = [l for l in _lines(progress) if l[0] == "step"][-1][3]
    assert fleet.market_of(node) == "spot"
    fleet.preempt(fleet.name_of(node), replace=True)
    out = run.outputs()
    done0 = max(int(l[2]) for l in _lines(progress) if l[0] == "step" and l[1] == "0")
    assert out["resumed_from"] >= 6 and out["resumed_from"] >= done0 - 1  # at most one step redone
    assert [r.outcome for r in run.history] == ["preemption", "succeeded"]
    assert run.user_failures == 0  # the preemption spent none of retries=2


def test_io_file_and_dir_pass_between_tasks_on_different_nodes(fleet, s3_server):
    """flyte_ray.io on S3 (moto): written on od-1, read on gpu-od, after the writer deleted its
    local copies -- the bytes can only have come through storage."""
    import tasks_flytekit as fk
    from tasks_io import TREE

    root = f"s3://{s3_server['bucket']}/{uuid.uuid4().hex}"
    flyte.init(storage=root, storage_options=s3_server["options"])
    try:
        path, run, wnode, rnode, got, streamed, back = flyte.run(fk.io_pipeline, "across nodes", TREE).outputs()
    finally:
        flyte.init(storage=tempfile.mkdtemp())
    assert fleet.name_of(wnode) == "od-1" and fleet.name_of(rnode) == "gpu-od"
    assert got == streamed == "across nodes" and back == TREE
    assert path.startswith(f"{root}/runs/{run}/io/")
