"""Warm replicas (ReusePolicy) on a real local multi-node cluster, with a real node removal."""

import asyncio
import os
import shutil
import threading
import time

import pytest
import ray

import flyte_ray as flyte
from flyte_ray import reuse
from flyte_ray._ray.wire import VERSION, WarmCall, encode
from flyte_ray.reuse import client as reuse_client, executor as reuse_executor, replica as reuse_replica
from flyte_ray.errors import RuntimeUserError

import tasks_reuse as tr

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def _fresh_pools(fleet):
    reuse.shutdown_pools()
    yield
    reuse.shutdown_pools()
    time.sleep(0.5)  # let the killed replicas give their CPUs back


def _stats(env):
    s = reuse.pool_stats(env)
    return s[0] if s else None


def _wait_stats(env, cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = _stats(env)
        if cond(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"pool of {env} never satisfied the condition; last stats: {last}")


def test_module_init_is_paid_once_per_replica(fleet):
    shutil.rmtree(tr.INIT_DIR, ignore_errors=True)
    t0 = time.monotonic()
    results = [tr.warm_call(i) for i in range(20)]
    elapsed = time.monotonic() - t0
    assert [r["i"] for r in results] == list(range(20))
    assert elapsed < 8, elapsed  # one init (2 s) at most on the way; 20 cold calls would take > 40 s
    pids = {r["pid"] for r in results}
    assert 1 <= len(pids) <= 2  # replicas=2 (calls go to whichever replicas are warm already)
    assert os.getpid() not in pids
    s = _wait_stats("reuse_warm", lambda s: s and s["ready"] == 2)
    assert pids <= set(s["pids"])
    time.sleep(reuse.REFRESH_S + 0.1)  # callers refresh their replica list at most this often
    # 20 more calls, now spread over both warm replicas: no further initialisation
    more = [tr.warm_call(i) for i in range(20)]
    assert {r["pid"] for r in more} == set(s["pids"])
    results += more
    pids = {r["pid"] for r in results}
    # one 2 s initialisation per replica process, and none anywhere else
    inits = sorted(os.listdir(tr.INIT_DIR))
    assert inits == sorted(f"init-{p}" for p in s["pids"])
    for name in inits:
        assert len(open(os.path.join(tr.INIT_DIR, name)).read().split()) == 1
    # module state survives between calls: each replica imported the module once
    by_pid = {}
    for r in results:
        by_pid.setdefault(r["pid"], set()).add(r["initialised_at"])
    assert all(len(v) == 1 for v in by_pid.values())
    s = _stats("reuse_warm")
    assert s["replicas"] == 2 and s["lost"] == 0 and s["market"] == "ondemand"
    # user errors on a replica are user errors, catchable as their own type
    with pytest.raises(ValueError, match="boom 3") as ei:
        tr.warm_fails(3)
    assert isinstance(ei.value, RuntimeUserError)


def test_async_concurrency_4_runs_4_at_once_per_replica(fleet):
    asyncio.run(tr.conc_call.aio(-1, 0.0))  # the replica is up and warm

    async def burst():
        return await asyncio.gather(*(tr.conc_call.aio(i, 1.0) for i in range(8)))

    t0 = time.monotonic()
    res = asyncio.run(burst())
    elapsed = time.monotonic() - t0
    assert len({r["pid"] for r in res}) == 1  # replicas=1
    assert max(r["max"] for r in res) == 4  # never more than concurrency, and reached it
    starts = sorted(r["start"] for r in res)
    assert starts[3] - starts[0] < 0.5  # the first four together
    assert starts[4] - starts[0] > 0.8  # the next four once slots free up
    assert 1.9 < elapsed < 4.0, elapsed


def test_replicas_scale_1_to_3_under_load_and_back_to_1(fleet):
    tr.scale_call(0.0)
    assert _wait_stats("reuse_scale", lambda s: s and s["ready"] == 1)["replicas"] == 1

    stop = threading.Event()
    pids: set = set()
    errors: list = []

    def load():
        try:
            while not stop.is_set():
                pids.add(tr.scale_call(0.3))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    seen = []
    try:
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            s = _stats("reuse_scale")
            seen.append(s["replicas"])
            if s["ready"] == 3 and len(pids) == 3:
                break
            time.sleep(0.25)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert max(seen) == 3 and all(n <= 3 for n in seen), seen
    assert len(pids) == 3  # calls really ran on three replicas
    # scaledown_ttl=2: idle replicas above min are retired, then killed
    t0 = time.monotonic()
    s = _wait_stats("reuse_scale", lambda s: s and s["replicas"] == 1, timeout=15)
    assert time.monotonic() - t0 >= 1.0
    _wait_stats("reuse_scale", lambda s: s and s["retiring"] == 0, timeout=15)
    assert tr.scale_call(0.0) in pids  # the survivor is still warm


def test_pool_goes_away_after_idle_ttl(fleet):
    pid = tr.idle_call()
    assert _stats("reuse_idle")["replicas"] == 1
    deadline = time.monotonic() + 15  # idle_ttl=2, then the retirement grace
    while reuse.pool_stats("reuse_idle") and time.monotonic() < deadline:
        time.sleep(0.25)
    assert reuse.pool_stats("reuse_idle") == []
    assert tr.idle_call() != pid  # a fresh pool, a fresh replica


def test_shutdown_pools_kills_replicas(fleet):
    tr.idle_call()
    assert reuse.shutdown_pools("reuse_idle") == 1
    assert reuse.pool_stats("reuse_idle") == []


def test_replica_preempted_mid_call_completes_on_another_replica(fleet, tmp_path):
    flag = str(tmp_path / "flag")
    run = flyte.run(tr.spot_hold, flag)  # attempt 0 holds a spot replica
    deadline = time.monotonic() + 30
    while not (os.path.exists(flag) and os.path.getsize(flag) > 0):
        assert time.monotonic() < deadline, "the first attempt never started"
        time.sleep(0.05)
    node, pid = open(flag).read().split()
    s = _wait_stats("reuse_spot", lambda s: s and s["ready"] == 2)
    assert s["market"] == "spot"
    assert len(set(s["nodes"])) == 2, s  # SPREAD: one replica per spot node
    victim = fleet.name_of(node)
    assert fleet.market_of(node) == "spot"
    fleet.preempt(victim, replace=True)  # a real node removal while the call runs on it
    info = run.outputs(timeout=60)
    h = run.history
    assert [r.outcome for r in h] == ["preemption", "succeeded"], run.history_table()
    assert [r.failure_kind for r in h] == ["system", None]
    assert info["pid"] != int(pid) and info["node"] != node
    assert info["attempt"] == 1 and info["system_failures"] == 1 and info["market"] == "spot"
    assert run.user_failures == 0 and run.system_failures == 1
    # the lost replica is replaced
    s = _wait_stats("reuse_spot", lambda s: s and s["ready"] == 2 and s["lost"] >= 1, timeout=30)
    assert node not in s["nodes"]


def _same(a, b):
    """Equal, and of the same types all the way down."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b), (a, b)
        for k in a:
            _same(a[k], b[k])
    else:
        assert a == b, (a, b)


def _check_ctx(c, fqn):
    assert c["fqn"] == fqn and c["call_id"] == "root"
    assert (c["attempt"], c["user_attempt"], c["system_failures"]) == (0, 0, 0)
    assert c["market"] == "ondemand" and c["queue"] == "default"
    assert c["node_id"] and c["has_settings"] and c["run_overrides"] is None
    assert c["pid"] != os.getpid()


def test_values_keep_their_types_and_the_task_sees_its_context(fleet):
    args, kwargs = tr.WIRE_VALUES, {"k": (1,), "s": {1, 2}, "n": None, "l": [(1,)]}
    r = tr.wire_echo(*args, **kwargs)
    _same(r["args"], tuple(args))
    _same(r["kwargs"], kwargs)
    _check_ctx(r["ctx"], "reuse_wire.wire_echo")
    for v in tr.WIRE_VALUES:  # results too
        _same(tr.wire_value(v), v)
    ra = asyncio.run(tr.wire_aecho.aio(*args, **kwargs))
    _same(ra["args"], tuple(args))
    _same(ra["kwargs"], kwargs)
    _check_ctx(ra["ctx"], "reuse_wire.wire_aecho")
    assert r["ctx"]["run_name"] != ra["ctx"]["run_name"]  # one run per top-level call
    # the run's name and overrides reach the replica; the attempt records its node
    run = flyte.with_runcontext(name="wire-run", queue="default").run(tr.wire_echo, 1)
    out = run.outputs(timeout=30)
    assert out["ctx"]["run_name"] == "wire-run" and out["ctx"]["run_overrides"] == {"queue": "default"}
    assert [h.outcome for h in run.history] == ["succeeded"]
    assert run.history[0].node_id == out["ctx"]["node_id"]
    assert run.history[0].runtime is not None and 0 <= run.history[0].runtime < 5  # measured on the replica


def test_user_errors_come_back_as_values_sync_and_async(fleet):
    with pytest.raises(KeyError, match="missing 7") as ei:
        tr.wire_fails(7)
    assert isinstance(ei.value, RuntimeUserError)
    with pytest.raises(KeyError, match="missing 8") as ei:
        asyncio.run(tr.wire_afails.aio(8))
    assert isinstance(ei.value, RuntimeUserError)
    run = flyte.run(tr.wire_fails, 9)
    with pytest.raises(KeyError):
        run.outputs(timeout=30)
    assert [(h.outcome, h.failure_kind) for h in run.history] == [("failed", "user")]
    assert run.history[0].runtime is not None
    assert tr.wire_value(3) == 3  # the replica is still fine


def test_nested_warm_calls_carry_the_run_and_settings(fleet):
    r = tr.wire_parent(3)
    kids = r["kids"]
    assert [k["x"] for k in kids] == [0, 1, 2]
    assert [k["ctx"]["call_id"] for k in kids] == [f"root/wire_child-{i}" for i in range(3)]
    assert {k["ctx"]["run_name"] for k in kids} == {r["ctx"]["run_name"]}
    assert all(k["ctx"]["has_settings"] for k in kids)
    assert len({k["ctx"]["pid"] for k in kids}) == 1 and kids[0]["ctx"]["pid"] != r["ctx"]["pid"]


def test_a_replica_that_lacks_the_static_part_asks_for_it(fleet, monkeypatch):
    # The caller sends a task's static part (task, settings, fqn, market, queue) in full once per
    # replica and a 12-byte digest after that; a replica that does not know the digest asks.
    assert tr.wire_value(1) == 1
    client = next(c for c in reuse_client.registry().by_name.values() if c.name.startswith(reuse.POOL_PREFIX + "reuse_wire:"))
    unknown = encode(WarmCall(VERSION, b"\0" * 12, None, "r", "root", 0, 0, 0, [1], {}))
    assert ray.get(client.slots[0].run.remote(unknown)) == reuse_replica.NEED_STATIC
    reuse.shutdown_pools("reuse_wire")
    monkeypatch.setattr(reuse_executor, "_for_slot", lambda payload, st, slot: payload)  # never in full up front
    assert tr.wire_value(2) == 2  # a fresh replica: it asks, gets it in full, runs the call
    assert tr.wire_value(3) == 3
    _wait_stats("reuse_wire", lambda s: s and s["served"] == 2 and s["created"] == 1)


def test_a_pool_whose_manager_died_is_recreated_and_the_call_retried(fleet):
    first = tr.wire_echo(1)["ctx"]
    name = next(n for n in reuse_client.registry().known_managers if n.startswith(reuse.POOL_PREFIX + "reuse_wire:"))
    ray.kill(reuse_client.registry().known_managers[name], no_restart=True)  # its replica dies with it
    time.sleep(reuse.REFRESH_S + 0.5)  # the caller's replica list is stale too: it asks the dead manager
    run = flyte.run(tr.wire_echo, 2)
    out = run.outputs(timeout=60)
    assert out["args"] == (2,) and out["ctx"]["pid"] != first["pid"]
    # the lost replica cost a system retry at most, never a user one
    assert run.user_failures == 0 and [h.failure_kind for h in run.history][-1] is None
    assert all(h.failure_kind in ("system", None) for h in run.history)
    assert _wait_stats("reuse_wire", lambda s: s and s["ready"] == 1)["created"] == 1  # a fresh pool


def test_an_async_warm_call_that_times_out_never_keeps_its_replica_busy(fleet):
    from flyte_ray.errors import TaskTimeoutError

    pid = asyncio.run(tr.replica_pid.aio())
    with pytest.raises(TaskTimeoutError):
        asyncio.run(tr.awaits_too_long.aio(30))
    assert asyncio.run(tr.replica_pid.aio()) == pid  # cancelled where it awaited: the same replica serves on
    with pytest.raises(TaskTimeoutError):
        asyncio.run(tr.blocks_its_loop.aio(30))
    # it ignored the cancel: its replica was replaced (a call to the blocked one would have waited
    # for it and come back from the same process)
    assert asyncio.run(tr.replica_pid.aio()) != pid


def test_a_replica_calling_its_own_pool_does_not_starve(fleet):
    """#18: a parent in a ReusePolicy(replicas=2, concurrency=1) environment calls children of
    the same environment (and of a regular one): the children run on the other replica instead of
    queueing behind their own caller; with replicas=(1, 2) the pool grows to serve them."""
    assert tr.pair_parent(5) == [6, 7, -5]
    assert tr.grow_parent(4) == 13
    stats = {s["env"]: s for s in reuse.pool_stats()}
    assert stats["reuse_grow"]["replicas"] == 2  # grew for the nested call
    reuse.shutdown_pools("reuse_pair")
    reuse.shutdown_pools("reuse_grow")
