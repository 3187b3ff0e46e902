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


PRICES = {"version": 1, "currency": "USD", "instance_types": {"m5.large": {"ondemand": 0.10, "spot": 0.03}}}


def _labels(node_type):
    return {"flyte-ray.io/node-type": node_type, "flyte-ray.io/instance-type": "m5.large"}


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    flyte.shutdown()
    storage = str(tmp_path_factory.mktemp("store"))
    flag = str(tmp_path_factory.mktemp("flags") / "f")
    nodes = [NodeSpec("spot-1", market="spot", labels=_labels("cpu-spot")),
             NodeSpec("spot-2", market="spot", labels=_labels("cpu-spot")),
             NodeSpec("od-1", market="ondemand", cpus=2, labels=_labels("cpu-ondemand"))]
    old = os.environ.get("RAY_metrics_report_interval_ms")
    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # Ray exports metrics every second
    try:
        with LocalCluster(nodes, storage=storage, spot_wait=5) as cluster:
            yield from _run(cluster, storage, flag)
    finally:
        if old is None:
            os.environ.pop("RAY_metrics_report_interval_ms", None)
        else:
            os.environ["RAY_metrics_report_interval_ms"] = old


def _run(cluster, storage, flag):
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
    assert out == [40, "ok", 70, 70, 6, 10]
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
    # children of a spot parent (hosted by the supervising actor) and a warm replica's call
    hosting = by_call["rec_spot.hosting"]
    assert hosting[-1].outcome == "succeeded" and hosting[-1].market == "spot"
    leaves = by_call["rec_light.leaf"]
    assert len(leaves) == 3 and {e.parent for e in leaves} == {hosting[-1].call_id}
    assert [e.outcome for e in by_call["rec_warm.on_replica"]] == ["succeeded"]
    assert {e.parent for e in tree.events if e.fqn not in ("rec_od.parent", "rec_light.leaf")} == {"root"}
    t = tree.totals()
    assert t["preemptions"] == 1 and t["user_failures"] == 1 and t["cached"] == 1 and t["calls"] == 10
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
    assert f"run {run.name} (succeeded)" in text and "10 calls" in text and "1 preemptions" in text
    for s in ("rec_spot.steps", "rec_light.flaky", "cached (no attempt ran)", victim, "preemption", "lost"):
        assert s in text, (s, text)
    r = subprocess.run([sys.executable, "-m", "flyte_ray.cli", "runs"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0 and run.name in r.stdout and "rec_od.parent" in r.stdout


def test_the_cost_report_prices_node_time_as_documented(recorded_run):
    """Checked by hand from the records, rule by rule (flyte_ray/report/cost.py's docstring)."""
    run, _, tree, _, _ = recorded_run
    report = run.cost(PRICES)
    cost = all_od = lost_cost = spot_s = od_s = 0.0
    lost_by = {(e.call_id, e.attempt): lw for n in _walk(tree.roots) for e, lw in n.attempts}
    for e in tree.events:
        if e.outcome in ("cached", "spot_unavailable") or e.ended is None:
            continue
        share = e.share or 1.0
        node_s = e.seconds * share
        price = 0.03 if e.market == "spot" else 0.10
        lost = min(lost_by[(e.call_id, e.attempt)] or 0.0, e.seconds)
        cost += node_s / 3600 * price
        all_od += (e.seconds - lost) * share / 3600 * 0.10
        lost_cost += lost * share / 3600 * price
        spot_s += node_s if e.market == "spot" else 0.0
        od_s += node_s if e.market == "ondemand" else 0.0
    assert report.missing == [] or not report.missing
    assert report.spot_node_seconds == pytest.approx(spot_s) and report.ondemand_node_seconds == pytest.approx(od_s)
    assert report.cost == pytest.approx(cost) and report.all_ondemand_cost == pytest.approx(all_od)
    assert report.lost_cost == pytest.approx(lost_cost) and report.lost_cost > 0
    assert report.savings == pytest.approx(all_od - cost)
    assert report.preemptions == 1 and report.cache_hits == 1
    text = report.to_text()
    assert "USD" in text and "savings" in text
    # without prices it says so and still counts node time
    bare = run.cost()  # init() was given no price table
    assert bare.cost is None and bare.missing and "missing" in bare.to_text().lower()
    assert bare.spot_node_seconds == pytest.approx(spot_s)


def test_the_timeline_has_one_bar_per_attempt(recorded_run, tmp_path):
    import xml.etree.ElementTree as ET

    run, _, tree, _, victim = recorded_run
    page = run.timeline()
    svg = ET.fromstring(page.svg())
    bars = [el for el in svg.iter() if el.get("data-call")]
    drawn = [e for e in tree.events if e.outcome != "cached"]
    assert len(bars) == len(drawn)
    preempted = [b for b in bars if b.get("data-outcome") == "preemption"]
    assert len(preempted) == 1 and preempted[0].get("data-market") == "spot"
    path = page.save(str(tmp_path / "t.html"))
    assert open(path).read().startswith("<!DOCTYPE html>")


def test_the_metrics_of_the_run_reach_prometheus(recorded_run):
    """The supervising processes (here the parent task's worker) export through Ray's metrics."""
    import re
    import urllib.request

    import ray

    urls = [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in ray.nodes()
            if n.get("Alive") and n.get("MetricsExportPort")]
    sample = re.compile(r'^ray_flyte_ray_(attempts_total|cache_lookups_total|checkpoint_bytes_total|replicas)'
                        r'\{([^}]*)\} ([0-9.e+]+)$')

    def attempts():
        got = {}
        for url in urls:
            try:
                text = urllib.request.urlopen(url, timeout=5).read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                m = sample.match(line)
                if m:
                    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
                    key = (labels.get("task") or labels.get("pool"),
                           labels.get("outcome") or labels.get("result") or labels.get("op") or m.group(1))
                    got[key] = got.get(key, 0.0) + float(m.group(3))
        return got

    deadline = time.time() + 30
    # attempts (from the parent's worker and from the supervising actor), the cache's lookups (a
    # miss, then a hit), the checkpoint bytes the preempted call's retry restored
    want = {("rec_spot.steps", "preemption"): 1.0, ("rec_light.flaky", "failed"): 1.0,
            ("rec_light.flaky", "succeeded"): 1.0, ("rec_light.leaf", "succeeded"): 3.0,
            ("rec_light.cached", "hit"): 1.0, ("rec_light.cached", "miss"): 1.0}
    while True:
        got = attempts()
        if all(got.get(k) == v for k, v in want.items()) and got.get(("rec_spot.steps", "restore"), 0) > 0:
            break
        assert time.time() < deadline, got
        time.sleep(1)


def _walk(nodes):
    for n in nodes:
        yield n
        yield from _walk(n.children)


def test_flyte_ray_report_from_a_fresh_process(recorded_run, tmp_path):
    import json

    run, _, _, storage, _ = recorded_run
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    page = tmp_path / "t.html"
    env = dict(os.environ, FLYTE_RAY_STORAGE=storage)
    r = subprocess.run([sys.executable, "-m", "flyte_ray.cli", "report", run.name, "--prices", str(prices),
                        "--html", str(page)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert f"run {run.name}" in r.stdout and "savings" in r.stdout and "USD" in r.stdout
    assert page.read_text().count("data-call=") >= 6
    r = subprocess.run([sys.executable, "-m", "flyte_ray.cli", "report", "--since", "1h"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0 and "runs since" in r.stdout and "prices" in r.stdout.lower()
    r = subprocess.run([sys.executable, "-m", "flyte_ray.cli", "report"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 2 and "--since" in r.stderr
