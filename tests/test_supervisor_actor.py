"""The supervising actor: calls from spot attempts survive their parent's preemption."""

import asyncio
import os
import signal
import time

import pytest
import ray

import flyte_ray as flyte
from helpers import wait_until
from flyte_ray._controller.supervision import Supervision
from flyte_ray._core.process import PROCESS

import tasks_reattach as tr

pytestmark = pytest.mark.timeout(180)


def _done(outdir):
    return [f for f in os.listdir(outdir) if f.startswith("child-")]


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
    sup = PROCESS.part(Supervision).handle()
    before = ray.get(sup.ping.remote())
    n = 30
    run = flyte.run(tr.short_parent, n, str(out))
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
    run = flyte.run(tr.parent, 6, str(out), 1.0)
    wait_until(lambda: ray.get(PROCESS.part(Supervision).handle().ping.remote())["running"] > 0)
    pid = ray.get(PROCESS.part(Supervision).handle().ping.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    t = time.time()
    try:
        assert run.outputs(timeout=60) == [i * 10 for i in range(6)]  # transparent recovery
    except flyte.errors.RuntimeSystemError:
        pass  # or a clear error
    assert time.time() - t < 45
