"""Placement and the attempt loop on a real local multi-node cluster with real preemptions."""

import asyncio
import os
import threading
import time

import pytest

import flyte_ray as flyte
from flyte_ray.errors import PlacementError, RetriesExhaustedError, TaskTimeoutError

import tasks_fleet as tf

pytestmark = pytest.mark.timeout(180)


def _wait_for(path, timeout=30):
    deadline = time.time() + timeout
    while not (os.path.exists(path) and os.path.getsize(path) > 0):
        if time.time() > deadline:
            raise TimeoutError(path)
        time.sleep(0.05)
    return open(path).read().split()[-1]


def _markets(fleet, history):
    return [fleet.market_of(r.node_id) for r in history]


def test_retries_2_always_failing_runs_spot_spot_ondemand(fleet, tmp_path):
    log = tmp_path / "log"
    run = flyte.run(tf.always_fails, str(log))
    with pytest.raises(RetriesExhaustedError):
        run.outputs()
    nodes = log.read_text().split()
    assert [fleet.market_of(n) for n in nodes] == ["spot", "spot", "ondemand"]
    assert [r.market for r in run.history] == ["spot", "spot", "ondemand"]
    assert _markets(fleet, run.history) == ["spot", "spot", "ondemand"]


def test_retries_0_never_runs_on_spot(fleet):
    run = flyte.run(tf.once)
    info = run.outputs()
    assert info["market"] == "ondemand" and fleet.market_of(info["node"]) == "ondemand"
    assert len(run.history) == 1


def test_preemption_is_a_system_retry_and_final_attempt_is_ondemand(fleet, tmp_path):
    flag = str(tmp_path / "flag")
    run = flyte.run(tf.preempt_then_user_error, flag)
    node = _wait_for(flag)
    victim = fleet.name_of(node)
    assert fleet.market_of(node) == "spot"
    fleet.preempt(victim, replace=True)  # a real node removal while the task runs
    info = run.outputs()
    h = run.history
    assert [r.outcome for r in h] == ["preemption", "failed", "succeeded"]
    assert [r.failure_kind for r in h] == ["system", "user", None]
    assert _markets(fleet, h) == ["spot", "spot", "ondemand"]
    assert info["user_attempt"] == 1 and info["system_failures"] == 1 and info["attempt"] == 2
    assert run.user_failures == 1 and run.system_failures == 1
    assert "preemption" in run.history_table()


def test_interruptible_precedence_lands_where_the_most_specific_level_says(fleet):
    assert fleet.market_of(tf.where()["node"]) == "spot"  # env says interruptible
    assert fleet.market_of(tf.where_task_false()["node"]) == "ondemand"  # task says no
    assert fleet.market_of(tf.where.override(interruptible=False)()["node"]) == "ondemand"
    assert fleet.market_of(tf.where_task_false.override(interruptible=True)()["node"]) == "spot"
    assert fleet.market_of(tf.where_plain()["node"]) == "ondemand"
    assert fleet.market_of(tf.where_plain.override(interruptible=True, retries=1)()["node"]) == "spot"


def test_queues_at_env_task_and_override_level(fleet):
    pool_nodes = {"gpu-spot", "gpu-od"}
    assert fleet.name_of(tf.where_pool()["node"]) == "gpu-spot"  # env-level queue, spot
    assert fleet.name_of(tf.where_task_queue()["node"]) == "gpu-spot"  # task-level queue
    assert fleet.name_of(tf.where.override(queue="gpu-pool")()["node"]) in pool_nodes  # invocation level
    assert fleet.name_of(tf.where_pool.override(interruptible=False)()["node"]) == "gpu-od"
    for _ in range(6):  # no queue -> only queue:default nodes, never the pool
        assert fleet.name_of(tf.where()["node"]) not in pool_nodes
        assert tf.where()["queue"] == "default"


def test_gpu_type_reaches_accelerator_nodes(fleet):
    t = tf.where_plain.override(resources=flyte.Resources(cpu=1, gpu="A100:1"), queue="gpu-pool")
    assert fleet.name_of(t()["node"]) == "gpu-od"


def test_more_preemptions_than_the_system_budget(fleet, tmp_path):
    flyte.init(system_retries=1)  # keeps the connection, changes the budget
    try:
        flag = str(tmp_path / "flag")
        run = flyte.run(tf.sleeper, flag, 60)
        for i in range(2):  # preempt every attempt's node (the log gains a line per attempt)
            deadline = time.time() + 30
            while not os.path.exists(flag) or len(open(flag).read().split()) < i + 1:
                assert time.time() < deadline
                time.sleep(0.05)
            fleet.preempt(fleet.name_of(open(flag).read().split()[i]), replace=True)
        with pytest.raises(RetriesExhaustedError) as info:
            run.outputs()
        err = info.value
        assert err.budget == "system" and len(err.history) == 2
        assert [r.failure_kind for r in err.history] == ["system", "system"]
        assert err.history[0].outcome == "preemption"  # a spot node
        assert err.history[-1].market == "ondemand" and fleet.market_of(err.history[-1].node_id) == "ondemand"
    finally:
        flyte.init(system_retries=3)


def test_max_runtime_cancels_the_attempt(fleet):
    run = flyte.run(tf.too_slow)
    with pytest.raises(RetriesExhaustedError) as info:
        run.outputs()
    assert isinstance(info.value.__cause__, TaskTimeoutError)
    assert [r.outcome for r in run.history] == ["timeout", "timeout"]


def test_deadline_spans_attempts(fleet):
    with pytest.raises(TaskTimeoutError, match="deadline"):
        tf.past_deadline()


def test_no_spot_capacity_moves_to_ondemand_after_max_queued_time(fleet):
    fleet.add_node("etl-od", market="ondemand", queues=("etl",))
    run = flyte.run(tf.etl_job)
    info = run.outputs()
    assert fleet.name_of(info["node"]) == "etl-od" and info["market"] == "ondemand"
    assert [r.outcome for r in run.history] == ["queued_timeout", "succeeded"]
    assert [r.market for r in run.history] == ["spot", "ondemand"]


def test_ondemand_that_cannot_start_fails_naming_the_resource(fleet):
    with pytest.raises(PlacementError, match="queue:nowhere") as info:
        tf.nowhere()
    assert "queue:nowhere" in info.value.missing


@pytest.mark.parametrize("graceful", [True, False])
def test_fan_out_of_50_survives_a_spot_preemption(fleet, tmp_path, graceful):
    out = tmp_path / "out"
    out.mkdir()
    run = flyte.run(tf.fan_out, 50, str(out))
    deadline = time.time() + 60
    while len(os.listdir(out)) < 8:  # preempt mid-way
        assert time.time() < deadline
        time.sleep(0.05)
    busy = [f for f in os.listdir(out)]
    victim = fleet.name_of(open(out / busy[0]).read())
    fleet.preempt(victim, graceful=graceful, replace=True)
    assert run.outputs() == [i * i for i in range(50)]
    done = os.listdir(out)
    per_child = {}
    for f in done:
        _, i, _attempt = f.split("-")
        per_child[int(i)] = per_child.get(int(i), 0) + 1
    assert sorted(per_child) == list(range(50))
    # Nothing ran again after a success that reached its caller. A child that finished on the
    # victim in the instant before it died (its file written, its result not yet delivered) runs
    # again: that is the at-least-once rule of a lost node, so its first run was on the victim.
    victim_id = fleet.node_id(victim)
    for i, runs in per_child.items():
        if runs > 1:
            first = open(out / f"done-{i}-0").read()
            # (its file may be empty: the node went while the first run was writing it)
            assert runs == 2 and first in ("", victim_id), (i, runs, first, victim_id)


def test_cancelling_a_run_cancels_its_attempt(fleet, tmp_path):
    hb = tmp_path / "hb"
    run = flyte.run(tf.heartbeat, str(hb))
    _wait_for(str(hb))
    run.cancel()
    time.sleep(2.0)
    last = os.path.getmtime(hb)
    time.sleep(1.0)
    assert os.path.getmtime(hb) == last  # the attempt stopped
    assert run.phase == "cancelled"


def test_cancelling_an_asyncio_task_cancels_its_attempt(fleet, tmp_path):
    hb = tmp_path / "hb"

    async def main():
        t = asyncio.ensure_future(tf.heartbeat.aio(str(hb)))
        while not hb.exists():
            await asyncio.sleep(0.05)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())
    time.sleep(2.0)
    last = os.path.getmtime(hb)
    time.sleep(1.0)
    assert os.path.getmtime(hb) == last


def test_oom_then_override_to_a_larger_node(fleet):
    import psutil

    gib = 1024 ** 3
    vm = psutil.virtual_memory()
    # The OOM killer of the small node acts at "what is used now + 1.5 GiB" (machine-wide on a
    # one-machine cluster, so only this node gets the low threshold); the task allocates 4 GiB.
    threshold = min(0.9, (vm.total - vm.available + 1.5 * gib) / vm.total)
    fleet.add_node("small", market="ondemand", queues=("mem",), memory=2 * gib,
                   env={"RAY_memory_usage_threshold": f"{threshold:.3f}", "RAY_memory_monitor_refresh_ms": "100"})
    with pytest.raises(flyte.errors.OOMError):
        tf.hog(4)
    fleet.add_node("large", market="ondemand", queues=("mem",), memory=8 * gib)
    node = tf.hog.override(resources=flyte.Resources(cpu=1, memory="6Gi"))(1)
    assert fleet.name_of(node) == "large"
