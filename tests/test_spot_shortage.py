"""Spot shortage and infeasible placement on real local clusters (#14): a spot attempt that finds
no spot capacity moves to on-demand within the spot wait; work no live or launchable node could
run fails at once, or waits when a node type the cluster can launch offers it."""

import logging
import os
import threading
import time

import pytest
import yaml

import flyte_ray as flyte
from flyte_ray.errors import PlacementError
from flyte_ray.testing import LocalCluster, NodeSpec
from helpers import wait_until

import tasks_shortage as ts

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """One spot and one on-demand node; spot wait 3 s."""
    flyte.shutdown()
    storage = str(tmp_path_factory.mktemp("store"))
    nodes = [NodeSpec("spot-1", market="spot", cpus=1), NodeSpec("od-1", market="ondemand", cpus=1)]
    with LocalCluster(nodes, storage=storage, spot_wait=3) as cluster:
        yield cluster


def test_a_spot_node_gone_for_good_moves_the_call_to_ondemand(pair, tmp_path):
    flag = str(tmp_path / "flag")
    run = flyte.run(ts.steady, flag)
    wait_until(lambda: os.path.exists(flag + ".node"), timeout=60)
    pair.preempt("spot-1")  # no replacement: spot capacity is gone
    out = run.outputs(timeout=120)
    assert out["market"] == "ondemand" and pair.name_of(out["node"]) == "od-1"
    assert [h.outcome for h in run.history] == ["preemption", "spot_unavailable", "succeeded"]
    assert [h.market for h in run.history] == ["spot", "spot", "ondemand"]
    assert run.user_failures == 0 and run.system_failures == 1
    assert "no spot capacity" in run.history[1].error


def test_work_that_no_live_node_offers_fails_at_once_naming_it(pair):
    with pytest.raises(PlacementError, match="accelerator_type:H100") as ei:
        ts.wants_h100.override(resources=flyte.Resources(cpu=1, gpu="H100:1"))()
    assert "accelerator_type:H100" in ei.value.missing
    # a spot attempt that nothing can run moves to on-demand at once, then fails the same way
    run = flyte.run(ts.spot_wants_h100.override(resources=flyte.Resources(cpu=1, gpu="H100:1"), retries=1))
    with pytest.raises(PlacementError):
        run.outputs(timeout=60)
    assert [h.outcome for h in run.history] == ["spot_unavailable", "infeasible"]


@pytest.mark.parametrize("given", ["argument", "environment", "unseen autoscaler"])
def test_work_a_launchable_node_type_offers_waits_and_says_which(pair, tmp_path, monkeypatch, given):
    """The node types come from init(cluster_config=...), or from $FLYTE_RAY_CLUSTER_CONFIG found at
    init; on a cluster whose autoscaler's node types flyte-ray cannot see, the work waits too."""
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "cluster_name": "t", "max_workers": 2, "head_node_type": "head",
        "provider": {"type": "local", "head_ip": "127.0.0.1"},
        "available_node_types": {
            "head": {"resources": {"CPU": 0, "ondemand": 1000}, "max_workers": 0, "node_config": {}},
            "h100-ondemand": {"resources": {"CPU": 8, "GPU": 1, "accelerator_type:H100": 1, "ondemand": 1000,
                                            "queue:default": 1000}, "min_workers": 0, "max_workers": 2,
                              "node_config": {}},
        },
    }))
    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Catch()
    logging.getLogger("flyte_ray").addHandler(handler)
    expect = "h100-ondemand"
    if given == "argument":
        flyte.init(address="auto", cluster_config=str(config), spot_wait=3)
    elif given == "environment":
        monkeypatch.setenv("FLYTE_RAY_CLUSTER_CONFIG", str(config))
        flyte.init(address="auto", spot_wait=3)
    else:  # what init finds on a cluster whose autoscaler reported no node types
        import dataclasses

        from flyte_ray._core.process import PROCESS
        from flyte_ray._core.settings import DriverSettings
        from flyte_ray._ray.node_types import AUTOSCALED_UNKNOWN

        flyte.init(address="auto", spot_wait=3)
        part = PROCESS.part(DriverSettings)
        part.value = dataclasses.replace(part.value, node_types=AUTOSCALED_UNKNOWN)
        expect = "cannot see its node types"
    try:
        run = flyte.run(ts.wants_h100.override(resources=flyte.Resources(cpu=1, gpu="H100:1")))
        wait_until(lambda: any(expect in m for m in records), timeout=30)
        time.sleep(1)
        assert not run.done()  # it waits for the node type to launch instead of failing
        run.cancel()
    finally:
        logging.getLogger("flyte_ray").removeHandler(handler)
        flyte.init(address="auto", spot_wait=3)


# ---------------------------------------------------------------- under the default spot wait (300 s)
# README's case: a spot attempt that no live node can run any more must move to on-demand at
# once, not sit out the spot wait, whether the spot node was already gone when it was submitted
# (the retry of a preempted attempt: the cluster view is refreshed after a lost node) or went away
# while it waited (submitted while the last spot node drained: the pending watch cancels it and
# records ``spot_unavailable``).


@pytest.fixture
def default_wait(pair):
    flyte.init(address="auto")  # spot_wait: the default
    try:
        yield pair
    finally:
        flyte.init(address="auto", spot_wait=3)


def _draining(node_id: str) -> bool:
    from ray._private.state import state  # private (ray-here.md): the GCS's map of draining nodes

    return node_id in state.get_draining_nodes()


def test_the_retry_of_a_preempted_attempt_moves_at_once_under_the_default_wait(default_wait, tmp_path):
    cluster = default_wait
    cluster.add_node(NodeSpec("spot-d1", market="spot", cpus=1))
    flag = str(tmp_path / "flag")
    run = flyte.run(ts.steady, flag)
    wait_until(lambda: os.path.exists(flag + ".node"), timeout=60)
    cluster.preempt("spot-d1", notice_s=1)
    out = run.outputs(timeout=90)  # far below the 300 s spot wait
    assert out["market"] == "ondemand" and cluster.name_of(out["node"]) == "od-1"
    assert [h.outcome for h in run.history] == ["preemption", "spot_unavailable", "succeeded"]
    assert run.history[1].runtime == 0 or run.history[1].runtime is None or run.history[1].runtime < 60


def test_a_call_waiting_on_a_draining_spot_node_moves_when_the_node_goes(default_wait, tmp_path):
    cluster = default_wait
    cluster.add_node(NodeSpec("spot-2", market="spot", cpus=1))
    flag = str(tmp_path / "flag")
    busy = flyte.run(ts.steady, flag)  # holds spot-2's one CPU (an idle node dies on drain at once)
    wait_until(lambda: os.path.exists(flag + ".node"), timeout=60)
    preempting = threading.Thread(target=cluster.preempt, args=("spot-2",), kwargs={"notice_s": 6})
    preempting.start()
    try:
        wait_until(lambda: _draining(cluster.node_id("spot-2")), timeout=30)
        # submitted while spot-2 drains: it is alive, so the call waits for it; then it goes
        run = flyte.run(ts.where)
        out = run.outputs(timeout=90)  # far below the 300 s spot wait
    finally:
        preempting.join()
    assert out["market"] == "ondemand" and cluster.name_of(out["node"]) == "od-1"
    assert [h.outcome for h in run.history] == ["spot_unavailable", "succeeded"]
    assert "any more" in run.history[0].error
    assert run.system_failures == 0 and run.user_failures == 0
    assert [h.outcome for h in busy.history] == ["preemption", "spot_unavailable", "succeeded"]
