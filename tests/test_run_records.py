"""A run's whole tree on a real local cluster (#16): a nested run with a preemption, a user retry
and a cached call shows every attempt in ``Run.tree()`` and in ``flyte-ray show`` from a fresh
process."""

import os
import subprocess
import sys
import time

import pytest

import flyte_ray as flyte
from flyte_ray.testing import LocalCluster, NodeSpec
from helpers import wait_until

import tasks_records as tr

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    flyte.shutdown()
    storage = str(tmp_path_factory.mktemp("store"))
    flag = str(tmp_path_factory.mktemp("flags") / "f")
    nodes = [NodeSpec("spot-1", market="spot"), NodeSpec("spot-2", market="spot"),
             NodeSpec("od-1", market="ondemand", cpus=2)]
    with LocalCluster(nodes, storage=storage, spot_wait=5) as cluster:
        run = flyte.run(tr.parent, flag)
        wait_until(lambda: os.path.exists(flag + ".node0"), timeout=90)
        time.sleep(3)  # past step 20's checkpoint
        victim = cluster.name_of(open(flag + ".node0").read())
        cluster.preempt(victim)
        out = run.outputs(timeout=180)
        tree = run.tree()
        yield run, out, tree, storage, victim


def test_every_call_and_attempt_is_in_the_tree(recorded_run):
    run, out, tree, _, victim = recorded_run
    assert out == [60, "ok", 70, 70]
    by_call = {}
    for e in tree.events:
        by_call.setdefault(e.fqn, []).append(e)
    steps = sorted(by_call["rec_spot.steps"], key=lambda e: e.attempt)
    assert [e.outcome for e in steps] == ["preemption", "succeeded"]
    assert steps[0].node_name == victim and steps[1].node_name not in ("", victim)
    assert steps[1].ckpt_resumed_from is not None and steps[1].ckpt_restored_bytes > 0
    assert steps[0].ckpt_saved_bytes == 0 or steps[0].ckpt_saved_bytes > 0  # lost with its node: unknown
    flaky = sorted(by_call["rec_light.flaky"], key=lambda e: e.attempt)
    assert [(e.outcome, e.failure_kind) for e in flaky] == [("failed", "user"), ("succeeded", None)]
    assert "fails on purpose" in flaky[0].error
    assert sorted(e.outcome for e in by_call["rec_light.cached"]) == ["cached", "succeeded"]
    assert [e.outcome for e in by_call["rec_od.parent"]] == ["succeeded"]
    assert {e.parent for e in tree.events if e.fqn != "rec_od.parent"} == {"root"}
    t = tree.totals()
    assert t["preemptions"] == 1 and t["user_failures"] == 1 and t["cached"] == 1 and t["calls"] == 5
    # the preempted attempt ran ~2.5 s past the checkpoint the retry resumed from (step 20)
    lost = [lw for n in tree.roots[0].children for e, lw in n.attempts if e.outcome == "preemption"]
    assert lost and 0.0 < lost[0] < 30.0


def test_flyte_ray_show_prints_the_tree_from_a_fresh_process(recorded_run):
    run, _, _, storage, victim = recorded_run
    env = dict(os.environ, FLYTE_RAY_STORAGE=storage)
    r = subprocess.run([sys.executable, "-m", "flyte_ray.cli", "show", run.name], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert f"run {run.name} (succeeded)" in text and "5 calls" in text and "1 preemptions" in text
    for s in ("rec_spot.steps", "rec_light.flaky", "cached (no attempt ran)", victim, "preemption", "lost"):
        assert s in text, (s, text)
    r = subprocess.run([sys.executable, "-m", "flyte_ray.cli", "runs"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0 and run.name in r.stdout and "rec_od.parent" in r.stdout
