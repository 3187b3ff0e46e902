"""Task output caching on a real embedded Ray (one CPU): hits, misses, overrides, serialize, S3."""

import asyncio
import concurrent.futures
import dataclasses
import datetime
import enum
import importlib.util
import json
import os
import pathlib
import sys
import threading
import time
import uuid

import pytest

import flyte_ray as flyte
from flyte_ray._controller.controller import get_controller
from flyte_ray import Cache
from flyte_ray import cache as cache_mod
from flyte_ray.cache import store as cache_store

import tasks_cache as tk

try:
    from _s3server import s3_server  # noqa: F401 -- session fixture (same import name as the store tests)
except ImportError:  # pragma: no cover
    from tests._s3server import s3_server  # noqa: F401

pytestmark = [pytest.mark.usefixtures("embedded"), pytest.mark.timeout(120)]


@pytest.fixture
def counter(tmp_path):
    return str(tmp_path / "runs")


@pytest.fixture
def supervised(monkeypatch):
    """Counts calls that reach supervision (i.e. schedule Ray work) from this process."""
    calls = []
    controller = get_controller()
    real = controller._hosted  # the step after the cache: where supervision runs

    async def spy(call, port):
        calls.append(call.spec.fqn)
        return await real(call, port)

    monkeypatch.setattr(controller, "_hosted", spy)
    return calls


# ------------------------------------------------------------------------------ hits and misses


def test_equal_inputs_hit_without_running_positional_or_keyword(counter, supervised):
    first = tk.add(counter, 1)
    assert first["sum"] == 11 and tk.count(counter) == 1 and len(supervised) == 1
    assert tk.add(counter, x=1) == first  # keyword
    assert tk.add(counter=counter, x=1, y=10) == first  # explicit default
    assert asyncio.run(tk.add.aio(counter, 1)) == first  # async caller
    assert tk.count(counter) == 1
    assert len(supervised) == 1  # hits scheduled nothing on Ray
    assert tk.add(counter, 2)["sum"] == 12 and tk.add(counter, 1, 11)["sum"] == 12
    assert tk.count(counter) == 3


def test_a_hit_returns_a_fresh_copy(counter):
    v = tk.add(counter, 5)
    v["sum"] = "mutated"
    assert tk.add(counter, 5)["sum"] == 15


def test_change_in_an_ignored_input_hits(counter):
    assert tk.with_note(counter, 3, note="a") == 6
    assert tk.with_note(counter, 3, note="something else") == 6
    assert tk.with_note(counter, 3) == 6
    assert tk.count(counter) == 1
    assert tk.with_note(counter, 4, note="a") == 8
    assert tk.count(counter) == 2


def test_override_behavior_recomputes_and_stores(counter):
    assert tk.stamp(counter, 1) == 1001
    assert tk.stamp(counter, 1) == 1001  # hit
    assert tk.stamp.override(cache="override")(counter, 1) == 2001  # ran again, stored
    assert tk.stamp(counter, 1) == 2001  # the next auto call hits the new value
    assert tk.stamp.override(cache="disable")(counter, 1) == 3001  # disable: runs, stores nothing
    assert tk.stamp(counter, 1) == 2001


def test_run_level_overwrite_cache_recomputes(counter):
    assert flyte.run(tk.stamp, counter, 2).outputs() == 1002
    assert flyte.run(tk.stamp, counter, 2).outputs() == 1002
    assert flyte.with_runcontext(overwrite_cache=True).run(tk.stamp, counter, 2).outputs() == 2002
    assert tk.stamp(counter, 2) == 2002


def test_version_override_and_salt_miss(counter):
    assert tk.stamp(counter, 3) == 1003
    v2 = tk.stamp.override(cache=Cache(version_override="v2"))
    assert v2(counter, 3) == 2003 and v2(counter, 3) == 2003
    salted = tk.stamp.override(cache=Cache(salt="pepper"))
    assert salted(counter, 3) == 3003 and salted(counter, 3) == 3003
    assert tk.stamp(counter, 3) == 1003


def test_only_successful_results_are_cached(counter):
    with pytest.raises(ValueError, match="failure 1"):
        tk.flaky(counter, 1)
    assert tk.flaky(counter, 1) == "ok after 2"
    assert tk.flaky(counter, 1) == "ok after 2"
    assert tk.count(counter) == 2


def test_nested_cached_call_hits_inside_a_worker(counter):
    assert tk.parent_calls_cached(counter, 3) == [13, 13]
    assert tk.count(counter) == 1
    assert tk.add(counter, 3)["sum"] == 13 and tk.count(counter) == 1  # the driver hits the worker's entry


# ------------------------------------------------------------------------------ versions

_MODULE = '''
import flyte_ray as flyte

env = flyte.TaskEnvironment(name="cache_edit", cache="auto")


def _make():  # built in a function so the task travels by value (workers cannot import this file)
    @env.task{decorator}
    def work(counter: str, x: int) -> int:
        with open(counter, "a") as f:
            f.write("1\\n")
        {comment}
        return x + {body}

    return work


work = _make()
'''


def _load(tmp_path, body, comment="", decorator=""):
    name = f"cache_edit_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.py"
    path.write_text(_MODULE.format(body=body, comment=comment, decorator=decorator))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod.work


def test_edited_function_body_misses_and_formatting_does_not(counter, tmp_path):
    v1 = _load(tmp_path, "1")
    assert v1.name == "cache_edit.work"
    assert v1(counter, 1) == 2 and v1(counter, 1) == 2 and tk.count(counter) == 1
    same = _load(tmp_path, "1", comment="# a comment only", decorator="(retries=1)")
    assert same.name == v1.name and cache_mod.cache_version(same) == cache_mod.cache_version(v1)
    assert same(counter, 1) == 2 and tk.count(counter) == 1  # comments and decorator args don't count
    v2 = _load(tmp_path, "100")
    assert v2.name == v1.name and cache_mod.cache_version(v2) != cache_mod.cache_version(v1)
    assert v2(counter, 1) == 101 and tk.count(counter) == 2  # the edited body missed
    assert v2(counter, 1) == 101 and tk.count(counter) == 2


def test_version_without_source_hashes_code():
    ns: dict = {}
    exec("def f(x):\n    return x + 1\n", ns)
    exec("def g(x):\n    return x + 2\n", ns)
    a, b = cache_mod.cache_version(ns["f"]), cache_mod.cache_version(ns["g"])
    assert len(a) == 64 and a != b and a == cache_mod.cache_version(ns["f"])


def test_cache_key_binding_salt_policies_and_ignored_inputs():
    key = lambda *a, policy=None, **k: cache_mod.cache_key(tk.add, a, k, policy)[1]  # noqa: E731
    assert key("c", 1) == key("c", x=1) == key(counter="c", x=1, y=10)
    assert key("c", 1) != key("c", 1, 11)
    assert key("c", 1, policy=Cache(salt="s")) != key("c", 1)
    odd = Cache(ignored_inputs=("x",), policies=[lambda task, inputs: str(inputs["x"] % 2)])
    assert key("c", 1, policy=odd) == key("c", 3, policy=odd) != key("c", 2, policy=odd)
    with pytest.raises(ValueError) as info:
        cache_mod.cache_key(tk.add, ("c", 1), {}, Cache(ignored_inputs=("nope", "zz")))
    assert "'nope'" in str(info.value) and "'zz'" in str(info.value) and "counter, x, y" in str(info.value)


def test_unknown_ignored_input_fails_at_call_time(counter):
    with pytest.raises(ValueError, match=r"'nope'.*accepted: counter, x"):
        tk.bad_ignored(counter, 1)


# ------------------------------------------------------------------------------ input hashing


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Inner:
    a: int
    b: list


def test_stable_hash_canonical_encoding():
    h = cache_mod.stable_hash
    assert h({"a": 1, "b": 2}) == h({"b": 2, "a": 1})  # dict order does not matter
    assert h({3, 1, 2}) == h({2, 3, 1}) == h(frozenset({1, 2, 3}))
    assert len({h(1), h(1.0), h(True), h("1"), h(b"1"), h([1]), h((1,)), h(None)}) == 8
    assert h(Inner(1, [2])) == h(Inner(1, [2])) != h(Inner(1, [3]))
    assert h(Color.RED) != h("red") and h(Color.RED) == h(Color("red"))
    d = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert h(d) == h(d.replace()) != h(d.replace(tzinfo=None))
    assert h(pathlib.PurePosixPath("/a/b")) == h(pathlib.PurePosixPath("/a/b")) != h("/a/b")
    assert h(float("nan")) == h(float("nan"))
    # the encoding is part of the cache's contract: pin one digest so a change is noticed
    assert h({"a": [1, 2.5, "x", None, True]}) == PINNED


PINNED = "eff4b39452757d5a4e226ec8dc388799a138065482123e922906dd0bbfe66bb9"


def test_pydantic_and_numpy_inputs_hash_by_value():
    h = cache_mod.stable_hash
    m1, m2 = tk.Model(name="n", weights=[1.0, 2.0]), tk.Model(name="n", weights=[1.0, 2.0])
    assert m1 is not m2 and h(m1) == h(m2) != h(tk.Model(name="n", weights=[1.0]))
    assert h(m1) != h(m1.model_dump(mode="json"))  # the model's type counts
    np = pytest.importorskip("numpy", reason="numpy not installed")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert h(a) == h(a.copy()) == h(np.asfortranarray(a))  # layout does not matter, values do
    assert h(a) != h(a.reshape(4, 3)) and h(a) != h(a.astype(np.float64)) and h(a) != h(a + 1)
    assert h(np.int64(3)) != h(np.int32(3))
    with pytest.raises(TypeError, match="numpy array of Python objects"):
        h(np.array([object()]))


def test_structured_inputs_hit_across_equal_objects(counter):
    np = pytest.importorskip("numpy", reason="numpy not installed")
    p = tk.Point(1.0, 2.0, ("t",))
    m = tk.Model(name="m", weights=[0.5])
    assert tk.structured(counter, p, m, np.ones((2, 2))) == 3.0
    assert tk.structured(counter, tk.Point(1.0, 2.0, ("t",)), tk.Model(name="m", weights=[0.5]),
                         np.ones((2, 2))) == 3.0
    assert tk.count(counter) == 1
    tk.structured(counter, p, m, np.zeros((2, 2)))
    tk.structured(counter, tk.Point(1.0, 2.5), m, np.ones((2, 2)))
    assert tk.count(counter) == 3


def test_unhashable_argument_is_a_clear_type_error(counter):
    with pytest.raises(TypeError) as info:
        tk.takes_anything(counter, {"k": [1, threading.Lock()]})
    msg = str(info.value)
    assert "'thing'" in msg and "cache.takes_anything" in msg and "thing['k'][1]" in msg
    assert "ignored_inputs=('thing',)" in msg
    assert tk.count(counter) == 0
    loop = []
    loop.append(loop)
    with pytest.raises(TypeError, match="contains itself"):
        tk.takes_anything(counter, loop)


# ------------------------------------------------------------------------------ serialize


def test_serialize_ten_concurrent_async_calls_run_once(counter):
    async def ten():
        return await asyncio.gather(*(tk.slow.aio(counter, 1, 1.0) for _ in range(10)))

    assert asyncio.run(ten()) == [2] * 10
    assert tk.count(counter) == 1

    async def ten_async_task():
        return await asyncio.gather(*(tk.aslow(counter, 2, 0.5) for _ in range(10)))

    out = asyncio.run(ten_async_task())
    assert out == [[2, 2]] * 10 and len({id(x) for x in out}) == 10  # each caller its own copy
    assert tk.count(counter) == 2


def test_serialize_ten_threads_with_sync_calls_run_once(counter):
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        outs = list(pool.map(lambda _: tk.slow(counter, 5, 1.0), range(10)))
    assert outs == [6] * 10 and tk.count(counter) == 1


def test_serialize_a_failed_runner_hands_over_to_a_waiter(counter):
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futs = [pool.submit(tk.flaky, counter, 1) for _ in range(3)]
        results = []
        for f in futs:
            try:
                results.append(f.result())
            except ValueError as e:
                results.append(str(e))
    assert sorted(results) == ["failure 1", "ok after 2", "ok after 2"]
    assert tk.count(counter) == 2


def test_serialize_across_worker_processes(counter):
    # two sibling tasks (separate worker processes, one CPU) call the same serialized task:
    # the second waits on the first one's lease (releasing its CPU) and shares the output
    out = asyncio.run(tk.two_siblings.aio(counter, 7))
    assert [v for _, v in out] == [8, 8]
    assert out[0][0] != out[1][0]  # the siblings ran in different processes
    assert tk.count(counter) == 1
    assert len({ln for ln in open(counter).read().splitlines()}) == 1


def _entry_paths(task, *args):
    version, key = cache_mod.cache_key(task, args, {}, task.spec.cache)
    path = cache_mod.cache_url(flyte.current_settings().storage, task.name, version, key)
    return path, path + ".lease"


def test_serialize_waits_for_another_processes_lease_then_reads_its_output(counter):
    path, lease = _entry_paths(tk.slow, counter, 8, 1.0)
    os.makedirs(os.path.dirname(lease), exist_ok=True)
    with open(lease, "w") as f:
        json.dump({"owner": "elsewhere", "expires": time.time() + 60}, f)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(tk.slow, counter, 8, 1.0)
        time.sleep(0.5)
        assert not fut.done()  # waiting on the foreign lease
        from ray import cloudpickle

        e = type("E", (), {"fqn": tk.slow.name, "version": "", "key": ""})()
        with open(path, "wb") as f:
            f.write(cache_store.pack(e, cloudpickle.dumps(999), "elsewhere"))
        os.unlink(lease)
        assert fut.result(timeout=10) == 999
    assert tk.count(counter) == 0


def test_serialize_takes_over_an_expired_lease(counter):
    _, lease = _entry_paths(tk.slow, counter, 9, 0.1)
    os.makedirs(os.path.dirname(lease), exist_ok=True)
    with open(lease, "w") as f:
        json.dump({"owner": "dead", "expires": time.time() - 5}, f)
    assert tk.slow(counter, 9, 0.1) == 10
    assert tk.count(counter) == 1 and not os.path.exists(lease)


def test_unreadable_stored_output_is_a_miss(counter):
    path, _ = _entry_paths(tk.add, counter, 4)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(cache_mod.MAGIC + b'{"size": 100}\n' + b"short")  # truncated
    assert tk.add(counter, 4)["sum"] == 14 and tk.count(counter) == 1
    assert tk.add(counter, 4)["sum"] == 14 and tk.count(counter) == 1


# ------------------------------------------------------------------------------ S3


def test_cache_on_s3(s3_server, counter, embedded):
    prefix = uuid.uuid4().hex
    flyte.init(storage=f"s3://{s3_server['bucket']}/{prefix}", storage_options=s3_server["options"])
    try:
        first = tk.add(counter, 21)
        assert tk.add(counter, x=21) == first and tk.count(counter) == 1
        fs = flyte.current_settings().storage.fs
        stored = fs.find(f"{s3_server['bucket']}/{prefix}/cache")
        assert len(stored) == 1 and stored[0].split("/")[-3] == "cache.add"

        async def five():
            return await asyncio.gather(*(tk.slow.aio(counter, 30, 0.5) for _ in range(5)))

        assert asyncio.run(five()) == [31] * 5 and tk.count(counter) == 2
        assert tk.slow(counter, 30, 0.5) == 31 and tk.count(counter) == 2
        assert not [p for p in fs.find(f"{s3_server['bucket']}/{prefix}/cache") if p.endswith(".lease")]
        # the lease is created with If-None-Match on S3: a second create fails
        store = flyte.current_settings().storage.store
        assert cache_store.create_lease(store, "lease-probe", b'{"owner": "a"}')
        assert not cache_store.create_lease(store, "lease-probe", b'{"owner": "b"}')
    finally:
        flyte.init(storage=embedded)


def test_runner_renews_its_lease_while_it_runs(counter, monkeypatch):
    monkeypatch.setattr(cache_store, "LEASE_TTL", 0.6)
    _, lease = _entry_paths(tk.slow, counter, 11, 1.5)
    beats = set()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(tk.slow, counter, 11, 1.5)
        while not fut.done():
            try:
                beats.add(json.load(open(lease))["beat"])
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.02)
        assert fut.result() == 12
    assert max(beats) >= 2 and not os.path.exists(lease)
    assert tk.count(counter) == 1


def test_cancelling_one_waiter_leaves_the_shared_call_running(counter):
    async def main():
        calls = [asyncio.ensure_future(tk.aslow.aio(counter, 3, 1.0)) for _ in range(3)]
        await asyncio.sleep(0.3)
        calls[1].cancel()
        return await asyncio.gather(*calls, return_exceptions=True)

    out = asyncio.run(main())
    assert out[0] == out[2] == [3, 3] and isinstance(out[1], asyncio.CancelledError)
    assert tk.count(counter) == 1
