"""The cache never executes bytes it did not write: stored outputs are authenticated with a key
kept outside the storage. The cached-call flow is driven on the calling thread through the
blocking port (no Ray cluster): real local folders, memory:// and S3 on a moto server."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import pickle
import stat
import subprocess
import sys
import textwrap
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from flyte_ray import Cache
from flyte_ray._core.drive import drive
from flyte_ray._ray.port import BLOCKING
from flyte_ray.cache import auth, flow
from flyte_ray.cache import store as cache_store
from flyte_ray.storage import Storage

try:  # pytest puts tests/ on sys.path (no tests/__init__.py); the repo root may not be
    from _s3server import s3_server  # noqa: F401 -- session fixture
except ImportError:  # pragma: no cover
    from tests._s3server import s3_server  # noqa: F401

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def logged() -> Any:
    """Warnings of flyte-ray's loggers (they do not propagate to the root logger)."""
    h = _Records()
    log = logging.getLogger("flyte_ray")
    log.addHandler(h)
    try:
        yield h.messages
    finally:
        log.removeHandler(h)


@pytest.fixture(autouse=True)
def _fresh_auth_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees its own warnings and key files."""
    monkeypatch.setattr(auth, "_warned", set())
    monkeypatch.setattr(auth, "_files", {})


@pytest.fixture(params=["local", "memory", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Storage:
    unique = uuid.uuid4().hex[:12]
    if request.param == "local":
        return Storage(tmp_path / "store", {})
    if request.param == "memory":
        return Storage(f"memory://flyte-ray-cache-trust/{unique}", {})
    s3 = request.getfixturevalue("s3_server")
    return Storage(f"{s3['url']}/{unique}", dict(s3["options"]))


def double(x: int) -> dict:
    return {"x": x, "twice": 2 * x}


class Calls:
    """A cached call of ``double`` without Ray: what the controller's cache step receives."""

    def __init__(self, storage: Storage, policy: Cache | None = None):
        self.storage = storage
        self.policy = policy or Cache()
        self.runs = 0

    def call(self, x: int) -> Any:
        return SimpleNamespace(
            spec=SimpleNamespace(cache=self.policy, fqn="trust.double"),
            task=double,
            args=(x,),
            kwargs={},
            settings=SimpleNamespace(storage=self.storage),
            run_overrides=None,
        )

    def __call__(self, x: int) -> Any:
        async def inner(call: Any) -> Any:
            self.runs += 1
            return double(*call.args)

        return drive(flow.cached_call(self.call(x), BLOCKING, inner))

    def entry(self, x: int) -> cache_store.Entry:
        return cache_store.Entry(self.call(x))


class Evil:
    """Unpickling this runs a shell command that creates ``path``."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.path}",))


def _planted(kind: str, e: cache_store.Entry, marker: pathlib.Path) -> bytes:
    from ray import cloudpickle

    evil = cloudpickle.dumps(Evil(marker))
    meta = json.dumps({"fqn": e.fqn, "version": e.version, "key": e.key, "size": len(evil)}).encode()
    if kind == "raw_pickle":
        return evil
    if kind == "format_1":  # what every reader unpickled before
        return b"FLYTE-RAY-CACHE 1\n" + meta + b"\n" + evil
    if kind == "no_tag":
        return cache_store.MAGIC + meta + b"\n" + evil
    if kind == "forged_tag":
        return cache_store.MAGIC + meta + b"\n" + evil + b"\x00" * 32
    if kind == "other_key":
        body = cache_store.MAGIC + meta + b"\n" + evil
        return body + auth.sign(auth.derive("the attacker's own key"), body)
    raise AssertionError(kind)


PLANTED = ["raw_pickle", "format_1", "no_tag", "forged_tag", "other_key"]


@pytest.mark.parametrize("kind", PLANTED)
def test_a_planted_pickle_never_runs(storage: Storage, tmp_path: pathlib.Path, kind: str, logged: list[str]) -> None:
    calls = Calls(storage)
    e = calls.entry(3)
    marker = tmp_path / f"pwned-{kind}"
    storage.store.put_atomic(e.obj, _planted(kind, e, marker))
    assert calls(3) == {"x": 3, "twice": 6}  # a miss: the task ran
    assert calls.runs == 1
    assert not marker.exists()  # the planted pickle never executed
    assert any("ignoring the object" in m and e.url in m for m in logged)
    # the run stored a good entry over the planted one: the next call hits
    assert calls(3) == {"x": 3, "twice": 6} and calls.runs == 1
    assert not marker.exists()


def test_format_1_bytes_with_a_valid_looking_header_are_a_miss(storage: Storage) -> None:
    calls = Calls(storage)
    e = calls.entry(4)
    payload = pickle.dumps({"x": 4, "twice": 999})
    meta = json.dumps({"size": len(payload)}).encode()
    storage.store.put_atomic(e.obj, b"FLYTE-RAY-CACHE 1\n" + meta + b"\n" + payload)
    assert calls(4)["twice"] == 8 and calls.runs == 1


def test_entries_written_with_the_key_hit_and_tampering_is_a_miss(storage: Storage, logged: list[str]) -> None:
    calls = Calls(storage)
    assert calls(5) == {"x": 5, "twice": 10} and calls.runs == 1
    assert calls(5) == {"x": 5, "twice": 10} and calls.runs == 1  # a hit
    e = calls.entry(5)
    good = storage.store.get(e.obj)
    assert good is not None and good.startswith(cache_store.MAGIC)
    assert cache_store.check(good, e.secret, e)[0]["key"] == e.key  # type: ignore[arg-type,index]
    i = good.rindex(b"twice")
    tampered = {
        "payload": good[:i] + b"thrice" + good[i + 5 :],  # the pickle changed
        "header": good.replace(b'"owner":"', b'"owner":"x', 1),
        "tag": good[:-1] + bytes([good[-1] ^ 1]),
        "truncated": good[:-40],
    }
    runs = calls.runs
    for what, blob in tampered.items():
        storage.store.put_atomic(e.obj, blob)
        assert calls(5) == {"x": 5, "twice": 10}, what
        runs += 1
        assert calls.runs == runs, what
    assert sum("authentication tag does not match" in m for m in logged) >= 3


def test_an_entry_moved_to_another_key_is_a_miss(storage: Storage, logged: list[str]) -> None:
    calls = Calls(storage)
    calls(6)
    good = storage.store.get(calls.entry(6).obj)
    assert good is not None
    storage.store.put_atomic(calls.entry(7).obj, good)  # authentic, but for x=6
    assert calls(7) == {"x": 7, "twice": 14} and calls.runs == 2
    assert any("stored for another key" in m for m in logged)


def test_another_key_reads_nothing(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(auth.ENV_CACHE_KEY, "key one")
    calls = Calls(storage)
    calls(8)
    calls(8)
    assert calls.runs == 1
    monkeypatch.setenv(auth.ENV_CACHE_KEY, "a different key")
    calls(8)
    assert calls.runs == 2
    # hex is decoded: the same bytes as hex in either case are the same key
    assert auth.derive("ABCDEF01") == auth.derive("abcdef01") != auth.derive("abcdef0")
    assert auth.derive(" some text ") == auth.derive("some text")


# --------------------------------------------------------------------------------------------
# where the key comes from
# --------------------------------------------------------------------------------------------


def test_shared_storage_without_a_key_runs_uncached(
    s3_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch, logged: list[str]
) -> None:
    monkeypatch.delenv(auth.ENV_CACHE_KEY, raising=False)
    storage = Storage(f"{s3_server['url']}/{uuid.uuid4().hex[:8]}", dict(s3_server["options"]))
    calls = Calls(storage)
    # an authentic-looking entry is there (written by a process that had a key): not read either
    monkeypatch.setenv(auth.ENV_CACHE_KEY, "some key")
    Calls(storage)(9)
    monkeypatch.delenv(auth.ENV_CACHE_KEY)
    before = storage.store.find("")
    for _ in range(3):
        assert calls(9) == {"x": 9, "twice": 18}
    assert calls.runs == 3  # uncached, never an error
    assert storage.store.find("") == before  # nothing written
    warned = [m for m in logged if auth.ENV_CACHE_KEY in m]
    assert len(warned) == 1 and "runtime_env" in warned[0] and storage.url in warned[0]
    assert calls.entry(9).secret is None


def test_local_key_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(auth.ENV_CACHE_KEY, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    key_file = tmp_path / "home" / ".flyte-ray" / "cache.key"
    calls = Calls(Storage(tmp_path / "store", {}))
    calls(10)
    calls(10)
    assert calls.runs == 1
    st = key_file.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert len(key_file.read_text().strip()) == 64
    # the file's content as $FLYTE_RAY_CACHE_KEY is the same key (how to share it on purpose)
    assert auth.derive(key_file.read_text()) == calls.entry(10).secret
    # another process of the machine (a worker) uses the same key: its entries hit here
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT / "tests")!r})
        from test_cache_trust import Calls
        from flyte_ray.storage import Storage
        calls = Calls(Storage({str(tmp_path / "store")!r}, {{}}))
        assert calls(10)["twice"] == 20 and calls.runs == 0, "a hit on the driver's entry"
        calls(11)
        assert calls.runs == 1
        """
    )
    env = {k: v for k, v in os.environ.items() if k != auth.ENV_CACHE_KEY}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    calls(11)
    assert calls.runs == 1  # the worker's entry hit here


def test_concurrent_first_uses_agree_on_one_key_file(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    code = "from flyte_ray.cache import auth; print(auth.key_file_secret().hex())"
    env = {k: v for k, v in os.environ.items() if k != auth.ENV_CACHE_KEY}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    keys = set()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        keys.add(out.strip())
    assert len(keys) == 1
    assert sorted(p.name for p in (home / ".flyte-ray").iterdir()) == ["cache.key"]  # no temporary files


def test_a_key_file_others_can_read_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, logged: list[str]
) -> None:
    monkeypatch.delenv(auth.ENV_CACHE_KEY, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    key_file = tmp_path / "home" / ".flyte-ray" / "cache.key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text("0" * 64)
    key_file.chmod(0o644)
    calls = Calls(Storage(tmp_path / "store", {}))
    calls(12)
    calls(12)
    assert calls.runs == 2  # uncached
    assert [m for m in logged if "chmod 600" in m]
    assert calls.storage.store.find("") == []


def test_memory_storage_uses_a_process_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(auth.ENV_CACHE_KEY, raising=False)
    calls = Calls(Storage(f"memory://flyte-ray-cache-trust/{uuid.uuid4().hex[:8]}", {}))
    calls(13)
    calls(13)
    assert calls.runs == 1
