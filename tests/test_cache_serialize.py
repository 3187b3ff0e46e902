"""``Cache(serialize=True)`` without a Ray cluster: atomic lease takeover, failed runners that do
not make every waiter re-run, time limits on a stalled storage. The cached-call flow is driven on
the calling thread through the blocking port; "processes" are threads with their own
in-process state (the storage lease is what elects between them). Real local folders and S3 on a
moto server, a loopback server that never answers."""

from __future__ import annotations

import json
import logging
import pathlib
import random
import threading
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from flyte_ray import Cache
from flyte_ray._core.drive import drive
from flyte_ray._ray.port import BLOCKING
from flyte_ray.cache import flow
from flyte_ray.cache import store as cache_store
from flyte_ray.storage import ObjectStore, Storage
from flyte_ray.storage.limits import ENV_STORAGE_TIMEOUT

try:  # pytest puts tests/ on sys.path (no tests/__init__.py); the repo root may not be
    from _s3server import s3_server  # noqa: F401 -- session fixture
    from _silent import silent_endpoint  # noqa: F401 -- module fixture
except ImportError:  # pragma: no cover
    from tests._s3server import s3_server  # noqa: F401
    from tests._silent import silent_endpoint  # noqa: F401

pytestmark = pytest.mark.timeout(120)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def logged() -> Any:
    h = _Records()
    log = logging.getLogger("flyte_ray")
    log.addHandler(h)
    try:
        yield h.messages
    finally:
        log.removeHandler(h)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Storage:
    """Backends whose create-if-absent is exclusive (a hard link, a conditional PUT)."""
    if request.param == "local":
        return Storage(tmp_path / "store", {})
    s3 = request.getfixturevalue("s3_server")
    return Storage(f"{s3['url']}/{uuid.uuid4().hex[:12]}", dict(s3["options"]))


class _Jittery(ObjectStore):
    """A real store whose reads and deletes take a random 0-30 ms longer (network latency): it
    opens the window in which a compare-then-delete takeover lets two waiters run."""

    def get(self, key: str, **kw: Any) -> bytes | None:
        out = super().get(key, **kw)
        time.sleep(random.uniform(0, 0.03))
        return out

    def delete(self, key: str, **kw: Any) -> None:
        time.sleep(random.uniform(0, 0.03))
        super().delete(key, **kw)


class _JitteryStorage(Storage):
    __slots__ = ()

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = _Jittery(self.url, self.options)
        return self._store


def _with_latency(storage: Storage) -> Storage:
    return _JitteryStorage(storage.url, storage.options)


class _PerThread:
    """Stands in for the process state: every thread is a process of its own."""

    def __init__(self) -> None:
        self.local = threading.local()

    def part(self, cls: type) -> Any:
        state = getattr(self.local, "state", None)
        if state is None:
            state = self.local.state = cls()
        return state


@pytest.fixture
def processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flow, "PROCESS", _PerThread())


@pytest.fixture(autouse=True)
def _fresh_process_state() -> None:
    flow.PROCESS.part(flow.CacheState).reset()


def triple(x: int) -> int:
    return 3 * x


class Serialized:
    """Calls of ``triple`` under ``Cache(serialize=True)``; ``body(x)`` is what a run does."""

    def __init__(self, storage: Storage, body: Callable[[int], Any]):
        self.storage = storage
        self.body = body
        self.runs = 0
        self.lock = threading.Lock()

    def call(self, x: int) -> Any:
        return SimpleNamespace(
            spec=SimpleNamespace(cache=Cache(serialize=True), fqn="serialize.triple"),
            task=triple,
            args=(x,),
            kwargs={},
            settings=SimpleNamespace(storage=self.storage),
            run_overrides=None,
        )

    def __call__(self, x: int) -> Any:
        async def inner(call: Any) -> Any:
            with self.lock:
                self.runs += 1
                n = self.runs
            return self.body(n)

        return drive(flow.cached_call(self.call(x), BLOCKING, inner))

    def entry(self, x: int) -> cache_store.Entry:
        return cache_store.Entry(self.call(x))

    def at_once(self, x: int, n: int) -> list[Any]:
        """``n`` threads call at the same moment; each one's result or exception."""
        barrier = threading.Barrier(n)
        out: list[Any] = [None] * n

        def go(i: int) -> None:
            barrier.wait()
            try:
                out[i] = self(x)
            except BaseException as e:  # noqa: BLE001 -- returned
                out[i] = e

        threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(100)
        return out


def _slow(value: Any, seconds: float = 0.5) -> Callable[[int], Any]:
    def body(n: int) -> Any:
        time.sleep(seconds)
        return value

    return body


def _failing(seconds: float = 0.5, succeed_from: int = 10**9) -> Callable[[int], Any]:
    def body(n: int) -> Any:
        time.sleep(seconds)
        if n < succeed_from:
            raise ValueError(f"boom {n}")
        return f"ok after {n}"

    return body


def _leftovers(storage: Storage) -> list[str]:
    return [k for k in storage.store.find("") if ".lease" in k]


# --------------------------------------------------------------------------------------------
# taking over a lease is atomic
# --------------------------------------------------------------------------------------------


def _race_take_over(store: ObjectStore, key: str, expired: bytes, n: int = 8) -> list[int]:
    barrier = threading.Barrier(n)
    won: list[int] = []

    def go(i: int) -> None:
        barrier.wait()
        if cache_store.take_over(store, key, expired, b'{"owner": "taker %d"}' % i):
            won.append(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_take_over_has_one_winner(storage: Storage) -> None:
    store = _with_latency(storage).store
    for rnd in range(3):
        key = f"leases/{rnd}.lease"
        expired = json.dumps({"owner": "dead", "expires": time.time() - 5}).encode()
        store.put_atomic(key, expired)
        won = _race_take_over(store, key, expired)
        assert len(won) == 1, won
        assert store.get(key) == b'{"owner": "taker %d"}' % won[0]
    assert [k for k in store.find("leases") if "takeover" in k] == []  # tokens cleaned up


@pytest.mark.usefixtures("processes")
def test_waiters_race_to_take_over_an_expired_lease_and_one_runs(storage: Storage, logged: list[str]) -> None:
    """Several waiters in different processes see the same expired lease at once; on a store with
    latency (where the former compare-then-delete takeover let 2-4 of 8 run), exactly one runs."""
    storage = _with_latency(storage)
    for x in range(3):
        logged.clear()
        calls = Serialized(storage, _slow(7))
        e = calls.entry(x)
        storage.store.put_atomic(e.lease, json.dumps({"owner": "dead", "expires": time.time() - 5}).encode())
        out = calls.at_once(x, 8)
        assert out == [7] * 8
        assert calls.runs == 1
        assert sum("took over the lease" in m for m in logged) == 1
    assert _leftovers(storage) == []


@pytest.mark.usefixtures("processes")
def test_a_taker_that_died_mid_takeover_does_not_block_forever(storage: Storage) -> None:
    calls = Serialized(storage, _slow(8, 0.1))
    e = calls.entry(2)
    raw = json.dumps({"owner": "dead", "expires": time.time() - 5}).encode()
    storage.store.put_atomic(e.lease, raw)
    token = f"{e.lease}.takeover.{cache_store.hashlib.sha256(raw).hexdigest()[:32]}.0"
    storage.store.put_atomic(token, json.dumps({"taker": "died too", "expires": time.time() - 1}).encode())
    assert calls(2) == 8 and calls.runs == 1
    assert _leftovers(storage) == []


def test_hostile_lease_content_is_only_data(storage: Storage, tmp_path: pathlib.Path) -> None:
    calls = Serialized(storage, _slow(9, 0.05))
    e = calls.entry(3)
    hostile = {"owner": "../../../" + "x" * 10_000, "expires": "never", "failed": 10**9, "error": ["not", "text"]}
    storage.store.put_atomic(e.lease, json.dumps(hostile).encode())
    # a lease that never changes expires by the waiter's clock after LEASE_TTL
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache_store, "LEASE_TTL", 0.5)
        assert calls(3) == 9
    assert calls.runs == 1
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# a failing runner: waiters get its error instead of each running the call again
# --------------------------------------------------------------------------------------------


def test_in_process_waiters_get_the_runners_error(storage: Storage) -> None:
    calls = Serialized(storage, _failing())
    out = calls.at_once(4, 5)
    assert calls.runs == cache_store.MAX_FAILURES == 2  # not once per waiter
    assert all(isinstance(o, ValueError) for o in out), out
    assert sorted({str(o) for o in out}) == ["boom 1", "boom 2"]
    # the waiters that did not run got the last runner's exception itself
    last = [o for o in out if str(o) == "boom 2"]
    assert len(last) == 4 and all(o is last[0] for o in last)


def test_with_max_failures_1_waiters_never_run_again(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """``FLYTE_RAY_CACHE_MAX_FAILURES=1``: the waiters get the first runner's error, as it was
    raised (its cause kept), and nobody runs the call again."""
    monkeypatch.setattr(cache_store, "MAX_FAILURES", 1)

    def body(n: int) -> Any:
        time.sleep(0.5)
        try:
            raise KeyError("root cause")
        except KeyError as cause:
            raise ValueError(f"boom {n}") from cause

    calls = Serialized(storage, body)
    out = calls.at_once(9, 4)
    assert calls.runs == 1
    assert all(o is out[0] for o in out) and isinstance(out[0], ValueError)
    assert isinstance(out[0].__cause__, KeyError)


def test_in_process_one_waiter_runs_again_after_a_failure(storage: Storage) -> None:
    calls = Serialized(storage, _failing(succeed_from=2))
    out = calls.at_once(5, 4)
    assert calls.runs == 2
    assert sorted(map(str, out)) == ["boom 1", "ok after 2", "ok after 2", "ok after 2"]
    assert calls(5) == "ok after 2" and calls.runs == 2  # stored


@pytest.mark.usefixtures("processes")
def test_waiters_in_other_processes_stop_after_max_failures(storage: Storage) -> None:
    calls = Serialized(storage, _failing())
    out = calls.at_once(6, 4)
    assert calls.runs == 2
    own = [o for o in out if isinstance(o, ValueError)]
    gave_up = [o for o in out if isinstance(o, cache_store.CacheRunFailed)]
    assert sorted(map(str, own)) == ["boom 1", "boom 2"] and len(gave_up) == 2, out
    assert all(o.failures == 2 and o.error == "ValueError: boom 2" and "boom 2" in str(o) for o in gave_up)
    # a caller that arrives later (it never waited for a runner) runs the call itself
    later = Serialized(storage, _failing(0.05, succeed_from=1))
    assert later(6) == "ok after 1" and later.runs == 1
    assert later(6) == "ok after 1" and later.runs == 1
    assert _leftovers(storage) == []


@pytest.mark.usefixtures("processes")
def test_waiters_in_other_processes_hand_over_once(storage: Storage) -> None:
    calls = Serialized(storage, _failing(succeed_from=2))
    out = calls.at_once(7, 4)
    assert calls.runs == 2
    assert sorted(map(str, out)) == ["boom 1", "ok after 2", "ok after 2", "ok after 2"]


# --------------------------------------------------------------------------------------------
# a stalled storage: the call runs uncached, within bounded time, and says nothing secret
# --------------------------------------------------------------------------------------------


def test_cached_call_on_a_stalled_storage_runs_uncached(
    silent_endpoint: str, monkeypatch: pytest.MonkeyPatch, logged: list[str]
) -> None:
    key_id, secret = "AKIA-KEYID-never-shown", "hunter2-secret-never-shown"
    monkeypatch.setenv(ENV_STORAGE_TIMEOUT, "0.5")
    monkeypatch.setattr(cache_store, "LEASE_TTL", 1.5)  # lease requests: 1 s
    options = {"endpoint_url": silent_endpoint, "key": key_id, "secret": secret, "skip_instance_cache": True}
    storage = Storage(f"s3://stalled-bucket/{uuid.uuid4().hex[:8]}", options)
    calls = Serialized(storage, _slow(10, 0.01))
    e = calls.entry(8)
    assert cache_store.lookup(e) is None  # the lookup gives up: a miss
    assert calls(8) == 10 and calls.runs == 1  # lookup, lease and store all fail: runs uncached
    text = "\n".join(logged)
    assert "did not finish within" in text and "stalled-bucket" in text
    assert key_id not in text and secret not in text
