"""flyte-sdk names beyond the task API, on the embedded one-CPU Ray: ``flyte.durable`` and
``flyte.trace`` replayed on retry, ``custom_context``, ``flyte.report``; tasks in
tests/tasks_dropin.py."""

import json

import pytest

import flyte_ray as flyte
import flyte_ray.durable

import tasks_dropin as td

pytestmark = pytest.mark.usefixtures("embedded")


def _notes(path):
    return [json.loads(line) for line in open(path)]


def test_durable_time_and_sleep_are_replayed_on_retry(tmp_path):
    marker = str(tmp_path / "m")
    out = td.durable_retry(marker, 2.0)
    first, second = _notes(marker)
    assert (first["attempt"], second["attempt"]) == (0, 1)
    # the retry sees the first attempt's clock, to the bit
    assert second["t"] == first["t"] == out["t"] and second["iso"] == first["iso"]
    # attempt 0 slept its 2 s and failed after; the retry's deadline had passed: no second sleep
    assert first["slept"] >= 2.0 and second["slept"] < first["slept"] / 2


def test_durable_sleep_aio_is_replayed_on_retry(tmp_path):
    marker = str(tmp_path / "m")
    flyte.run(td.durable_retry_async, marker, 2.0).outputs()
    first, second = _notes(marker)
    assert first["slept"] >= 2.0 and second["slept"] < first["slept"] / 2


def test_durable_outside_a_task_is_the_plain_clock():
    import time

    a = flyte_ray.durable.time()
    assert abs(a - time.time()) < 60 and flyte_ray.durable.time() >= a
    flyte_ray.durable.sleep(0)
    with pytest.raises(ValueError, match="durable.sleep.seconds"):
        flyte_ray.durable.sleep(-1)
    with pytest.raises(TypeError, match="durable.sleep.seconds"):
        flyte_ray.durable.sleep("5")


def test_traced_steps_run_once_across_retries(tmp_path):
    marker = str(tmp_path / "m")
    out = flyte.run(td.traced_steps, marker).outputs()
    assert out == [0, 10, 20, (7, "7"), 0]
    notes = _notes(marker)
    # every traced call ran in attempt 0 only: attempts 1 and 2 replayed all five
    assert [n.get("step", n.get("pair")) for n in notes] == [0, 1, 2, 7, 0]


def test_custom_context_flows_to_children_and_a_block_overrides_it():
    run = flyte.with_runcontext(custom_context={"trace_id": "root-abc", "experiment": "v1"}).run(td.root_cc)
    a, b, inside, c, parent = run.outputs()
    assert a == c == parent == {"trace_id": "root-abc", "experiment": "v1"}
    assert b == inside == {"trace_id": "override", "experiment": "v1", "extra": "x"}
    assert flyte.get_custom_context() == {}
    assert "root-abc" not in repr(run._call.run_overrides)  # values stay out of reprs


def test_custom_context_rejects_bad_values():
    with pytest.raises(TypeError, match=r"with_runcontext.custom_context\['n'\]: expected a string value"):
        flyte.with_runcontext(custom_context={"n": 1})
    with pytest.raises(TypeError, match="custom_context"):
        with flyte.custom_context(n=1):
            pass
    with pytest.raises(ValueError, match="at most"):
        flyte.with_runcontext(custom_context={"big": "x" * 70_000})
    with flyte.custom_context(a="1"):
        with flyte.custom_context(b="2"):
            assert flyte.get_custom_context() == {"a": "1", "b": "2"}
        assert flyte.get_custom_context() == {"a": "1"}


def test_report_is_kept_with_the_run_and_flushed_at_the_end():
    run = flyte.run(td.reporting)
    assert run.outputs() == "ok"
    page = run.report()
    assert "<p>one</p>" in page and "<b>two</b>" in page and "Tab 2" in page
    assert "<i>after the flush</i>" in page  # the attempt's end flushed what was left
    assert run.report(attempt=0) == page and run.report(attempt=5) is None


def test_report_without_report_true_keeps_nothing(caplog):
    run = flyte.run(td.not_reporting)
    assert run.outputs() == "ok" and run.report() is None
    r = flyte_ray.report.current_report()  # the driver's dummy report
    flyte_ray.report.log("<p>x</p>")
    assert r.flush() is None and "<p>x</p>" in r.get_final_report()


def test_flyte_sdk_cache_policy_objects_make_the_version():
    from flyte_ray.cache import cache_key

    class BodyAndTag:
        def get_version(self, salt, params):
            return f"{params.func.__name__}:{salt}:v2"

    def f(x):
        return x

    pinned = flyte.Cache(policies=[BodyAndTag()])
    assert isinstance(BodyAndTag(), flyte.CachePolicy)
    v1, k1 = cache_key(f, (1,), policy=pinned)
    assert (v1, k1) == cache_key(f, (1,), policy=flyte.Cache(policies=BodyAndTag()))  # one or a list
    assert v1 != cache_key(f, (1,), policy=flyte.Cache())[0]  # the policy, not the body, versions it
    assert cache_key(f, (1,), policy=flyte.Cache(policies=BodyAndTag(), salt="s"))[0] != v1
    both = flyte.Cache(policies=[flyte.FunctionBodyPolicy(), lambda task, inputs: "k"])
    assert cache_key(f, (1,), policy=both)[1] != cache_key(f, (1,), policy=flyte.Cache(policies=[flyte.FunctionBodyPolicy()]))[1]
    with pytest.raises(TypeError, match="CachePolicy objects"):
        flyte.Cache(policies=[object()])


def test_checkpoint_save_and_load_are_awaitable_in_async_code_and_block_in_sync_code(tmp_path):
    import asyncio

    cp = flyte.Checkpoint(str(tmp_path / "cp"))
    assert cp.save(b"sync") is None and cp.read() == b"sync"  # flytekit: blocks

    async def flyte_sdk_style():
        await cp.save(b"async")
        path = await cp.load()
        unawaited = cp.save(b"not awaited")  # still saved: the work does not depend on the await
        await unawaited
        handle = cp.save(b"background", background=True)  # a handle at once, either way
        handle.wait()
        return path.read_bytes()

    assert asyncio.run(flyte_sdk_style()) == b"async"
    assert cp.read() == b"background"


def test_run_aio_init_aio_and_action_id(tmp_path):
    import asyncio

    assert callable(flyte.init.aio) and callable(flyte.init_from_config.aio)

    async def main():
        run = await flyte.run.aio(td.action_names)
        await run.wait.aio()
        return await run.outputs.aio()

    text, name, run_name = asyncio.run(main())
    assert text.startswith("dropin.action_names#root") and name == "root" and run_name


def test_with_runcontext_flyte_sdk_arguments(tmp_path):
    import tasks_flytekit as fk

    marker = str(tmp_path / "m")
    assert flyte.run(fk.cached, x=5, marker=marker).outputs() == 6
    assert flyte.with_runcontext(disable_run_cache=True).run(fk.cached, x=5, marker=marker).outputs() == 6
    assert flyte.run(fk.cached, x=5, marker=marker).outputs() == 6  # the cache still answers
    assert open(marker).read().count("ran") == 2
    flyte.with_runcontext(log_format="json", service_account="sa", notifications=None)  # ignored on Ray
    with pytest.raises(ValueError, match="dry_run: flyte-ray has no dry run"):
        flyte.with_runcontext(dry_run=True)
    with pytest.raises(ValueError, match="max_action_concurrency"):
        flyte.with_runcontext(max_action_concurrency=4)


def test_trace_records_are_untrusted_input(tmp_path):
    """A tampered pickle record is never unpickled (its HMAC fails): the step runs again."""
    from flyte_ray._core.settings import Settings
    from flyte_ray.checkpoint import Storage
    from flyte_ray.context import TaskContext, reset_context, set_context

    runs = []

    @flyte.trace
    def step(i):
        runs.append(i)
        return {i}  # a set: not JSON, so a signed pickle

    settings = Settings(storage=Storage(str(tmp_path / "store")))

    def attempt(n):
        token = set_context(TaskContext(run_name="r1", fqn="t.f", call_id="root", attempt=n, settings=settings))
        try:
            return step(3)
        finally:
            reset_context(token)

    assert attempt(0) == {3} and attempt(1) == {3} and runs == [3]  # recorded, then replayed
    (rec,) = [p for p in (tmp_path / "store").rglob("*") if p.is_file() and "traces" in p.parts]
    data = rec.read_bytes()
    rec.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a hostile writer flips one bit
    assert attempt(2) == {3} and runs == [3, 3]  # not unpickled: the step ran again
    from flyte_ray import replay

    assert "bad" in replay._warned  # and it said so (once per process)


def test_io_values_key_the_cache_by_content_hash_when_they_have_one():
    from flyte_ray.cache import stable_hash
    from flyte_ray.io import DataFrame, Dir, File

    same = File(path="s3://b/one/a.txt", hash="sha:1"), File(path="s3://b/two/a.txt", hash="sha:1")
    assert stable_hash(same[0]) == stable_hash(same[1])  # content-based caching (flyte-sdk)
    assert stable_hash(File(path="s3://b/one/a.txt")) != stable_hash(File(path="s3://b/two/a.txt"))
    assert stable_hash(Dir(path="s3://b/d", hash="h")) != stable_hash(File(path="s3://b/d", hash="h"))
    assert stable_hash(DataFrame(uri="s3://b/t")) == stable_hash(DataFrame(uri="s3://b/t"))


def test_run_base_dir_is_the_runs_folder():
    run = flyte.run(td.base_dir)
    assert run.outputs().endswith(f"/runs/{run.name}")


def test_nested_calls_in_a_pool_larger_than_the_cluster_run_beside_their_parent():
    """flyte-sdk's big_fanout shape: replicas=3 of 1 CPU on a 1-CPU cluster. The replicas that
    cannot start must never receive the children (they hung there before); with concurrency 20
    the parent's own replica runs them."""
    from flyte_ray.reuse import shutdown_pools

    try:
        assert flyte.run(td.pool_parent, 30).outputs(timeout=120) == sum(range(30)) - 3
    finally:
        shutdown_pools()


@pytest.mark.parametrize("start", ["init_from_config.aio", "with_runcontext().run.aio"])
def test_init_aio_started_cluster_outlives_the_event_loop(tmp_path, start):
    """An embedded Ray started inside ``asyncio.run(...)`` -- by ``init_from_config.aio()`` or by
    the first ``run.aio`` -- must survive the loop (it was started in a pool thread before, and
    Ray's processes died with that thread when asyncio.run shut the pool down)."""
    import os
    import subprocess
    import sys

    if start == "init_from_config.aio":
        first = f"asyncio.run(flyte.init_from_config.aio(storage={str(tmp_path)!r}, num_cpus=1))\n"
        then = "run = flyte.run(td.action_names)\n"
    else:
        first = f"os.environ['FLYTE_RAY_STORAGE'] = {str(tmp_path)!r}\n"
        then = "run = asyncio.run(flyte.with_runcontext().run.aio(td.action_names))\n"
    script = (
        "import asyncio, os, flyte_ray as flyte, tasks_dropin as td\n"
        + first
        + then
        + "print('OK', run.outputs(timeout=60)[1])\n"
        + "flyte.shutdown()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=150)
    assert "OK root" in out.stdout, out.stderr[-2000:]
