"""Spot shortage under the *default* spot wait (300 s), on a real local cluster (#14): the README's
case. A spot attempt that no live node can run any more must move to on-demand at once — not sit
out the spot wait — whether the spot node was already gone when it was submitted (the retry of a
preempted attempt: the cluster view is refreshed after a lost node) or went away while it waited
(submitted while the last spot node drained: the pending watch cancels it and records
``spot_unavailable``)."""

import os
import threading

import pytest

import flyte_ray as flyte
from flyte_ray.testing import LocalCluster, NodeSpec
from helpers import wait_until

import tasks_shortage as ts

pytestmark = pytest.mark.timeout(240)


def _draining(node_id: str) -> bool:
    from ray._private.state import state  # private (ray-here.md): the GCS's map of draining nodes

    return node_id in state.get_draining_nodes()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    flyte.shutdown()
    storage = str(tmp_path_factory.mktemp("store"))
    nodes = [NodeSpec("spot-1", market="spot", cpus=1), NodeSpec("od-1", market="ondemand", cpus=1)]
    with LocalCluster(nodes, storage=storage) as c:  # spot_wait: the default
        yield c


def test_the_retry_of_a_preempted_attempt_moves_at_once_under_the_default_wait(cluster, tmp_path):
    flag = str(tmp_path / "flag")
    run = flyte.run(ts.steady, flag)
    wait_until(lambda: os.path.exists(flag + ".node"), timeout=60)
    cluster.preempt("spot-1", notice_s=1)
    out = run.outputs(timeout=90)  # far below the 300 s spot wait
    assert out["market"] == "ondemand" and cluster.name_of(out["node"]) == "od-1"
    assert [h.outcome for h in run.history] == ["preemption", "spot_unavailable", "succeeded"]
    assert run.history[1].runtime == 0 or run.history[1].runtime is None or run.history[1].runtime < 60


def test_a_call_waiting_on_a_draining_spot_node_moves_when_the_node_goes(cluster, tmp_path):
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
