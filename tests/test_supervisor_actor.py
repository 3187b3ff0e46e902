"""The supervising actor: calls from spot attempts survive their parent's preemption."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import ray

import flyte_ray as flyte
from helpers import wait_until
from flyte_ray._controller.supervision import Supervision, shard_of
from flyte_ray._core.process import PROCESS

import tasks_reattach as tr

pytestmark = pytest.mark.timeout(180)


def _done(outdir):
    return [f for f in os.listdir(outdir) if f.startswith("child-")]


SHARDS = 4  # Settings.supervisor_shards' default


def _shard(run_name):
    """The shard that supervises the calls a run's root call makes."""
    return shard_of(run_name, "root/child-0", SHARDS)


def _actor(run_name):
    return PROCESS.part(Supervision).handle(_shard(run_name))


def test_preempted_parent_reattaches_to_its_children(fleet, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run = flyte.run(tr.parent, 20, str(out), 0.3)
    wait_until(lambda: len(_done(out)) >= 10)
    parent_node = open(out / "parent").read().split()[1]
    assert fleet.market_of(parent_node) == "spot"
    fleet.preempt(fleet.name_of(parent_node), replace=True)
    assert run.outputs() == [i * 10 for i in range(20)]
    assert [r.outcome for r in run.history] == ["preemption", "succeeded"], [(r.error, r.duration) for r in run.history]
    runs = {f: open(out / f).read().count("ran") for f in _done(out)}
    assert len(runs) == 20 and set(runs.values()) == {1}, runs  # no child ran twice


def test_short_calls_stay_in_the_caller_and_survive_its_preemption(fleet, tmp_path):
    """After one run through the actor shows the task is short, a spot parent supervises its
    calls itself and records their results with the actor; preempted, its retry gets them back."""
    out = tmp_path / "out"
    out.mkdir()
    name = f"short-{uuid.uuid4().hex[:8]}"
    sup = _actor(name)
    before = ray.get(sup.ping.remote())
    n = 30
    run = flyte.with_runcontext(name=name).run(tr.short_parent, n, str(out))
    wait_until(lambda: (out / "ready").exists())
    wait_until(lambda: ray.get(sup.ping.remote())["recorded"] - before["recorded"] >= n - 1)
    mid = ray.get(sup.ping.remote())
    assert mid["hosted"] - before["hosted"] == 1  # only the first call, while its runtime was unknown
    parent_node = (out / "ready").read_text()
    assert fleet.market_of(parent_node) == "spot"
    fleet.preempt(fleet.name_of(parent_node), replace=True)
    assert run.outputs() == [i + 1 for i in range(n)]
    assert [r.outcome for r in run.history] == ["preemption", "succeeded"]
    runs = [open(out / f"quick-{i}").read().count("ran") for i in range(n)]
    assert runs == [1] * n, runs  # nothing re-ran: every result came back from the actor


def test_three_level_async_fan_out_on_spot(fleet):
    assert asyncio.run(tr.top.aio(6)) == sum(i * 10 + j for i in range(6) for j in range(4))


def test_killing_the_supervisor_never_hangs_callers(fleet, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    name = f"kill-{uuid.uuid4().hex[:8]}"
    run = flyte.with_runcontext(name=name).run(tr.parent, 6, str(out), 1.0)
    wait_until(lambda: ray.get(_actor(name).ping.remote())["running"] > 0)
    pid = ray.get(_actor(name).ping.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    t = time.time()
    try:
        assert run.outputs(timeout=60) == [i * 10 for i in range(6)]  # transparent recovery
    except flyte.errors.RuntimeSystemError:
        pass  # or a clear error
    assert time.time() - t < 45


def test_spot_parents_spread_over_shards_and_losing_one_touches_only_its_own(fleet, tmp_path):
    """Spot parents' children are supervised by the shard of their parent; SIGKILL one shard's
    actor mid-fan-out: every parent still gets each child's result once, and the children in the
    other shards never run twice."""
    names: list = []
    while len({_shard(n) for n in names}) < 3 or len(names) < 4:  # parents over 3+ shards
        names.append(f"shards-{uuid.uuid4().hex[:8]}")
    names = names[:8]
    dirs = []
    for i, _ in enumerate(names):
        d = tmp_path / f"p{i}"
        d.mkdir()
        dirs.append(d)
    n = 4
    runs = [flyte.with_runcontext(name=nm).run(tr.parent, n, str(d), 0.5) for nm, d in zip(names, dirs)]
    victim = _shard(names[0])
    wait_until(lambda: ray.get(PROCESS.part(Supervision).handle(victim).ping.remote())["running"] > 0)
    stats = ray.get(PROCESS.part(Supervision).handle(victim).ping.remote())
    assert stats["shard"] == victim
    os.kill(stats["pid"], signal.SIGKILL)
    for r in runs:
        assert r.outputs(timeout=120) == [i * 10 for i in range(n)]
    for nm, d in zip(names, dirs):
        counts = {f: open(d / f).read().count("ran") for f in _done(d)}
        assert len(counts) == n
        if _shard(nm) != victim:
            assert set(counts.values()) == {1}, (nm, counts)  # another shard's loss did not touch them
    hosted = {s: ray.get(PROCESS.part(Supervision).handle(s).ping.remote())["hosted"] for s in {_shard(n) for n in names}}
    assert all(v > 0 for s, v in hosted.items() if s != victim), hosted  # each parent's shard hosted its calls

    # The driver's shutdown removes the shards its calls created (detached actors outlive callers).
    flyte.shutdown()
    ray.init(address=fleet.address)
    try:
        left = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    finally:
        ray.shutdown()
        flyte.init(address=fleet.address, **fleet._init_kwargs)
    assert not [a for a in left if a.startswith("flyte-ray-supervisor")], left


_ORPHAN_DRIVER = textwrap.dedent(
    """
    import os, sys
    import flyte_ray as flyte
    import tasks_reattach as tr
    flyte.init(address=sys.argv[1], runtime_env={"env_vars": {"FLYTE_RAY_ORPHAN_CHECK_S": "0.5"}})
    out = flyte.with_runcontext(name=sys.argv[2]).run(tr.parent, 2, sys.argv[3], 0.1).outputs()
    import ray
    ns = ray.get_runtime_context().namespace
    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a["namespace"] in (ns, "flyte-ray-" + ns))
    print("NAMESPACE", ray.get_runtime_context().namespace, ",".join(names), out, flush=True)
    os._exit(0)  # gone without a shutdown: the shard its run created is left behind
    """
)


def test_a_shard_left_behind_by_a_vanished_driver_ends_itself(fleet, tmp_path):
    """A driver that exits without shutdown leaves the detached shard its spot parent created;
    the shard sees shard 0 (the driver's) gone and ends itself once it hosts nothing."""
    name = next(n for n in (f"orphan-{uuid.uuid4().hex[:8]}" for _ in range(100)) if _shard(n) != 0)
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(_ORPHAN_DRIVER)
    r = subprocess.run([sys.executable, str(script), fleet.address, name, str(out)], capture_output=True, text=True,
                       timeout=120)
    line = next((l for l in r.stdout.splitlines() if l.startswith("NAMESPACE")), None)
    assert r.returncode == 0 and line is not None, r.stdout[-2000:] + r.stderr[-3000:]
    namespace, names = line.split()[1], line.split()[2].split(",")
    shard = f"flyte-ray-supervisor-{_shard(name)}"
    assert shard in names, names  # the parent's calls went to (and created) their shard

    def left() -> list:
        return [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] in (namespace, "flyte-ray-" + namespace)
                and a["name"].startswith("flyte-ray-supervisor")]

    # the driver went with its shard 0; the detached shard outlives it, then ends itself
    wait_until(lambda: [a["name"] for a in left()] in ([shard], []), timeout=30)
    wait_until(lambda: not left(), timeout=30)
