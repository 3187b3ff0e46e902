"""Preemption notices end to end on a real local cluster (#15). Each worker node has its own
metadata endpoint (a real HTTP server on loopback answering as AWS IMDSv2 does) and its own
``flyte-ray watch-preemption`` process; ``LocalCluster.notify`` announces a preemption there, the
node's watcher drains the node through the GCS, the task sees ``ctx().preemption``, and the
supervisor acts on it. No part of Ray is patched."""

import subprocess
import sys
import threading
import time

import pytest

import flyte_ray as flyte
from flyte_ray.testing import LocalCluster, NodeSpec

import tasks_notice as tn

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    flyte.shutdown()
    storage = str(tmp_path_factory.mktemp("store"))
    with LocalCluster([NodeSpec("od-1", market="ondemand")], storage=storage, notices="aws") as c:
        yield c


def _notify_later(cluster, name, notice_s):
    done = {}

    def go():
        done["removed_at_deadline"] = cluster.notify(name, notice_s=notice_s)
        done["removed"] = time.time()

    t = threading.Thread(target=go)
    t.start()
    return t, done


def test_notice_saves_stops_and_the_retry_resumes_elsewhere_at_once(cluster, tmp_path):
    cluster.add_node(NodeSpec("spot-a", market="spot"))
    cluster.add_node(NodeSpec("spot-b", market="spot"))
    flag = str(tmp_path / "f")
    run = flyte.run(tn.steps, flag, 120)  # the retry runs ~4 s after the notice
    first = cluster.name_of(tn.wait_file(flag + ".node0"))
    tn.wait_file(flag + ".go")
    other = "spot-b" if first == "spot-a" else "spot-a"
    t, done = _notify_later(cluster, first, notice_s=6)
    out = run.outputs(timeout=120)
    t.join()
    # the task saw the notice, saved, stopped; the retry resumed from that step on the other
    # spot node while the noticed node was still up (removed only at its deadline)
    assert [h.outcome for h in run.history] == ["preemption", "succeeded"]
    assert run.user_failures == 0 and run.system_failures == 1
    assert "TaskInterruptedError" in run.history[0].error
    assert cluster.name_of(out["node"]) == other and out["first"] >= 40
    assert out["started"] < done["removed"]
    assert run.history[0].notice_at is not None and run.history[0].notice_deadline is not None
    # the watcher drained once; a second notice (and a second watcher) drain nothing more
    log = cluster.watcher_log(first)
    assert log.count("drained Ray node") == 1, log
    cluster.preempt(other)


def test_a_second_watcher_and_a_second_notice_do_not_drain_again(cluster, tmp_path):
    cluster.add_node(NodeSpec("spot-c", market="spot"))
    flag = str(tmp_path / "f")
    run = flyte.run(tn.ignores_notices, flag)
    tn.wait_file(flag + ".node0")
    expected = cluster._metadata.notify("spot-c", "aws", 60)  # the first notice
    node = cluster.node_id("spot-c")
    args = [sys.executable, "-m", "flyte_ray.preemption", "--provider", "aws", "--address", cluster.address,
            "--node-id", node, "--metadata-url", cluster._metadata.url("spot-c"), "--once"]
    deadline = time.time() + 30
    from flyte_ray.preemption.gcs import node_states

    while node_states(cluster.address)[node][0] == "ALIVE":
        assert time.time() < deadline
        time.sleep(0.1)
    # The private Ray API the task side reads (flyte_ray._ray.drains.draining_nodes): if a Ray
    # upgrade changes it, this fails here, loudly, rather than notices going quiet.
    from flyte_ray._ray.drains import draining_nodes

    seen = draining_nodes()
    assert seen is not None and node in seen, (
        "Ray's private draining-node map (ray._private.state.state.get_draining_nodes) no longer lists a "
        f"drained node: update flyte_ray/_ray/drains.draining_nodes for this Ray version (got {seen!r})"
    )
    assert seen[node] is not None and abs(seen[node] - expected) <= 2.0, (
        f"the draining-node map's deadline is no longer epoch ms: got {seen[node]!r} for {expected!r}"
    )
    second = subprocess.run(args, capture_output=True, text=True, timeout=60)  # a restarted watcher
    assert second.returncode == 0 and "already" in second.stderr, second.stderr
    cluster._metadata.notify("spot-c", "aws", 30)  # a second notice for the same node
    time.sleep(1.5)
    assert cluster.watcher_log("spot-c").count("drained Ray node") == 1
    cluster.preempt("spot-c")
    out = run.outputs(timeout=120)
    # the task ignored the notice: a plain preemption, classified as such, the notice recorded
    assert [h.outcome for h in run.history] == ["preemption", "spot_unavailable", "succeeded"]
    assert run.history[0].notice_at is not None
    assert cluster.name_of(out["node"]) == "od-1"


def test_a_notice_on_an_ondemand_node_is_a_preemption_not_a_node_failure(cluster, tmp_path):
    cluster.add_node(NodeSpec("od-2", market="ondemand"))
    flag = str(tmp_path / "f")
    run = flyte.run(tn.on_demand, flag)
    where = cluster.name_of(tn.wait_file(flag + ".node0"))
    cluster.notify(where, notice_s=2)  # drained, then removed before its deadline
    out = run.outputs(timeout=120)
    assert [h.outcome for h in run.history] == ["preemption", "succeeded"]
    assert run.history[0].market == "ondemand" and run.user_failures == 0
    assert cluster.name_of(out["node"]) in ("od-1", "od-2") and cluster.name_of(out["node"]) != where
    if where == "od-1":  # keep one on-demand node named od-1 for the next test
        cluster.add_node(NodeSpec("od-1b", market="ondemand"))


def test_an_attempt_pending_on_a_noticed_node_never_starts_there(cluster, tmp_path):
    cluster.add_node(NodeSpec("spot-d", market="spot"))
    flag = str(tmp_path / "f")
    busy = flyte.run(tn.ignores_notices, flag)  # takes spot-d's one CPU
    tn.wait_file(flag + ".node0")
    waiting = flyte.run(tn.quick)  # pending: the only spot node is busy
    time.sleep(1)
    assert not waiting.done()
    cluster.notify("spot-d", notice_s=2)
    out = waiting.outputs(timeout=120)
    assert cluster.name_of(out["node"]) != "spot-d" and out["market"] == "ondemand"
    assert [h.outcome for h in waiting.history] == ["spot_unavailable", "succeeded"]
    busy.outputs(timeout=120)
    assert [h.outcome for h in busy.history][0] == "preemption"


def test_warm_replicas_leave_a_noticed_node(cluster):
    from flyte_ray import reuse

    cluster.add_node(NodeSpec("spot-w1", market="spot"))
    cluster.add_node(NodeSpec("spot-w2", market="spot"))
    first = cluster.name_of(tn.where_warm(1))
    assert first in ("spot-w1", "spot-w2")
    cluster.drain(first, deadline_s=60)  # the replica holds resources there: the node stays, draining
    deadline = time.time() + 30
    while not any(s.get("drained") for s in reuse.pool_stats("notice_warm")):
        assert time.time() < deadline, reuse.pool_stats("notice_warm")
        time.sleep(0.2)
    # the next call goes to the replacement, on the other node; never to the draining one
    assert cluster.name_of(tn.where_warm(2)) not in (first, None)
    reuse.shutdown_pools("notice_warm")
    for n in ("spot-w1", "spot-w2"):
        cluster.preempt(n)
