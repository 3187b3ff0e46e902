"""Tests for flyte_ray.storage: real local folders, memory://, S3 on a real moto server, and an
S3 endpoint that accepts connections and never answers (time limits). No Ray."""

from __future__ import annotations

import os
import pathlib
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flyte_ray.storage import Entry, ObjectStore, Storage, StorageTimeoutError

try:  # pytest puts tests/ on sys.path (no tests/__init__.py); the repo root may not be
    from _s3server import s3_server  # a session fixture, used by parameter name
except ImportError:  # pragma: no cover
    from tests._s3server import s3_server  # noqa: F401

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(params=["local", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> ObjectStore:
    """A store on a fresh, unique root on each backend."""
    unique = uuid.uuid4().hex[:12]
    if request.param == "local":
        return ObjectStore(tmp_path / "store", {})
    if request.param == "memory":
        return ObjectStore(f"memory://flyte-ray-storage-tests/{unique}", {})
    s3 = request.getfixturevalue("s3_server")
    return ObjectStore(f"{s3['url']}/{unique}", dict(s3["options"]))


def _race(store: ObjectStore, key: str, n: int = 8) -> list[bytes]:
    """``n`` threads call create_if_absent on ``key`` at once, each with its own data; returns
    the data of the winners."""
    barrier = threading.Barrier(n)
    won: list[bytes] = []
    errors: list[BaseException] = []

    def go(i: int) -> None:
        data = b"creator %d" % i
        try:
            barrier.wait()
            if store.create_if_absent(key, data):
                won.append(data)
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return won


# --------------------------------------------------------------------------------------------
# single objects
# --------------------------------------------------------------------------------------------


def test_get_absent_is_none(store: ObjectStore) -> None:
    assert store.get("nothing/here") is None
    assert store.get("nothing") is None


def test_put_atomic_round_trip(store: ObjectStore) -> None:
    store.put_atomic("a/b/obj", b"first")
    assert store.get("a/b/obj") == b"first"
    store.put_atomic("a/b/obj", b"second, longer")
    assert store.get("a/b/obj") == b"second, longer"
    store.put_atomic("empty", b"")
    assert store.get("empty") == b""
    # nothing else appeared next to the object (no temporary files left behind)
    assert store.list("a/b") == ["a/b/obj"]


def test_create_if_absent(store: ObjectStore) -> None:
    assert store.create_if_absent("lease", b"mine") is True
    assert store.create_if_absent("lease", b"theirs") is False
    assert store.get("lease") == b"mine"
    assert store.create_if_absent("deeper/lease", b"x", verify=True) is True
    assert store.create_if_absent("deeper/lease", b"y", verify=True) is False
    assert store.get("deeper/lease") == b"x"
    store.delete("lease")
    assert store.create_if_absent("lease", b"again") is True
    assert store.get("lease") == b"again"


def test_create_if_absent_concurrent(store: ObjectStore) -> None:
    """Exactly one of several simultaneous creators wins where the backend is exclusive (a
    local hard link, S3's conditional PUT); the object holds the winner's data."""
    for rnd in range(5):
        key = f"race/{rnd}"
        won = _race(store, key)
        if store.is_local or store.is_s3:
            assert len(won) == 1, won
        else:
            # write + read back narrows the race but does not close it: at least the last
            # writer wins
            assert len(won) >= 1
        assert store.get(key) in won
    assert sorted(store.list("race")) == [f"race/{i}" for i in range(5)]


def test_delete(store: ObjectStore) -> None:
    for k in ("d/1", "d/2", "d/3", "d/sub/4", "keep"):
        store.put_atomic(k, k.encode())
    store.delete("d/1")
    store.delete("d/1")  # missing: no error
    assert store.get("d/1") is None
    store.delete_many(["d/2", "d/3", "d/never-there"])
    assert store.list("d") in (["d/sub"], [])  # folders may linger where they exist
    assert store.get("d/sub/4") == b"d/sub/4"
    store.delete_many([])
    store.delete_tree("d")
    store.delete_tree("d")  # missing: no error
    assert store.find("d") == [] and store.list("d") == []
    assert store.get("keep") == b"keep"


# --------------------------------------------------------------------------------------------
# listings
# --------------------------------------------------------------------------------------------


def test_list_missing_prefix_is_empty(store: ObjectStore) -> None:
    assert store.list("no/such/prefix") == []
    assert store.list("no/such/prefix", detail=True) == []
    assert store.find("no/such/prefix") == []
    assert store.list() == []  # the root itself, before anything was written


def test_list_and_find(store: ObjectStore) -> None:
    store.put_atomic("p/a", b"1")
    store.put_atomic("p/b", b"22")
    store.put_atomic("p/sub/c", b"333")
    assert sorted(store.list("p")) == ["p/a", "p/b", "p/sub"]
    entries = sorted(store.list("p", detail=True))
    assert all(isinstance(e, Entry) for e in entries)
    assert [(e.key, e.is_dir) for e in entries] == [("p/a", False), ("p/b", False), ("p/sub", True)]
    assert [e.size for e in entries[:2]] == [1, 2]
    assert store.find("p") == ["p/a", "p/b", "p/sub/c"]
    assert store.list() == ["p"]
    # a listing after another writer's write sees it (no stale listings cache)
    other = ObjectStore(store.url, store.options)
    other.put_atomic("p/d", b"4")
    assert "p/d" in store.list("p")


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def test_files(store: ObjectStore, tmp_path: pathlib.Path) -> None:
    src = tmp_path / "src.bin"
    payload = os.urandom(5 * 2**20 + 3)  # more than one 4 MiB read of the single-GET path
    src.write_bytes(payload)
    store.put_file(src, "f/one.bin")
    assert store.get("f/one.bin") == payload
    out = tmp_path / "out"
    out.mkdir()
    store.get_file("f/one.bin", out / "sized", size=len(payload))
    store.get_file("f/one.bin", out / "unsized")
    assert (out / "sized").read_bytes() == payload and (out / "unsized").read_bytes() == payload
    with pytest.raises(FileNotFoundError):
        store.get_file("f/absent", out / "x", size=10)
    with pytest.raises(FileNotFoundError):
        store.get_file("f/absent", out / "y")
    small = [tmp_path / f"s{i}" for i in range(3)]
    for i, p in enumerate(small):
        p.write_bytes(b"small %d" % i)
    store.put_files([str(p) for p in small], ["many/a", "many/x/b", "many/x/y/c"])
    assert store.find("many") == ["many/a", "many/x/b", "many/x/y/c"]
    back = [str(out / f"b{i}") for i in range(3)]
    store.get_files(["many/a", "many/x/b", "many/x/y/c"], back)
    assert [pathlib.Path(p).read_bytes() for p in back] == [b"small 0", b"small 1", b"small 2"]


def test_writer(store: ObjectStore) -> None:
    with store.open_writer("w/streamed") as w:
        for i in range(3):
            w.write(b"chunk %d;" % i)
    assert store.get("w/streamed") == b"chunk 0;chunk 1;chunk 2;"
    with pytest.raises(RuntimeError), store.open_writer("w/failed") as w:
        w.write(b"half")
        raise RuntimeError("source broke")
    if store.atomic_writes:
        # a discarded upload never becomes visible where object writes are atomic
        assert store.get("w/failed") is None


def test_fetch_while_listing(store: ObjectStore, tmp_path: pathlib.Path) -> None:
    store.put_atomic("v/1", b"one")
    store.put_atomic("v/2", b"two!")
    got, listing = store.fetch_while_listing("v/2", "v", size=4)
    assert got == b"two!"
    assert not isinstance(listing, BaseException)
    assert sorted((e.key, e.size) for e in listing) == [("v/1", 3), ("v/2", 4)]
    got, listing = store.fetch_while_listing("v/1", "v", lpath=tmp_path / "one", size=3)
    assert got is None and (tmp_path / "one").read_bytes() == b"one"
    assert not isinstance(listing, BaseException) and len(listing) == 2
    got, listing = store.fetch_while_listing("v/gone", "v", size=3)
    assert isinstance(got, FileNotFoundError)
    assert not isinstance(listing, BaseException) and len(listing) == 2
    got, listing = store.fetch_while_listing("v/gone", "nowhere", lpath=tmp_path / "gone", size=3)
    assert isinstance(got, FileNotFoundError) and listing == []


# --------------------------------------------------------------------------------------------
# S3: the requests behind each operation
# --------------------------------------------------------------------------------------------


def test_s3_request_counts(s3_server: dict[str, Any], tmp_path: pathlib.Path) -> None:
    """One request per operation (see the objects module docstring): no HEADs, no parent LISTs."""
    store = ObjectStore(f"{s3_server['url']}/counts-{uuid.uuid4().hex[:8]}", s3_server["options"])
    src = tmp_path / "f"
    src.write_bytes(b"file body")
    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(model.name)

    def ops(fn: Callable[[], Any]) -> list[str]:
        calls.clear()
        fn()
        return list(calls)

    store.fs.s3.meta.events.register("before-call.s3", record)  # type: ignore[attr-defined]
    try:
        assert ops(lambda: store.get("absent")) == ["GetObject"]
        assert ops(lambda: store.put_atomic("k", b"v")) == ["PutObject"]
        assert ops(lambda: store.get("k")) == ["GetObject"]
        assert ops(lambda: store.create_if_absent("lease", b"v")) == ["PutObject"]
        assert ops(lambda: store.create_if_absent("lease", b"w")) == ["PutObject"]
        assert ops(lambda: store.create_if_absent("lease", b"w", verify=True)) == ["PutObject"]
        assert ops(lambda: store.list()) == ["ListObjectsV2"]
        assert ops(lambda: store.list("missing")) == ["ListObjectsV2"]
        assert ops(lambda: store.put_file(src, "file")) == ["PutObject"]
        assert ops(lambda: store.get_file("file", tmp_path / "back", size=9)) == ["GetObject"]
        assert sorted(ops(lambda: store.fetch_while_listing("file", "", size=9))) == ["GetObject", "ListObjectsV2"]
        assert ops(lambda: store.delete("k")) == ["DeleteObject"]
        assert ops(lambda: store.delete_many(["file", "lease"])) == ["DeleteObjects"]
    finally:
        store.fs.s3.meta.events.unregister("before-call.s3", record)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# time limits: an endpoint that accepts connections and never answers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def silent_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<port>``: a TCP server that accepts every connection, reads nothing
    and never answers (a stalled S3 endpoint)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)  # keep it open, say nothing

    t = threading.Thread(target=accept, name="silent-endpoint", daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


@pytest.fixture
def stalled(silent_endpoint: str) -> ObjectStore:
    options = {
        "endpoint_url": silent_endpoint,
        "key": "testing",
        "secret": "testing",
        "skip_instance_cache": True,
        # One attempt, and botocore's own timeouts far above the limits under test: the store's
        # limit is what must fire.
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 120, "read_timeout": 120},
    }
    return ObjectStore(f"s3://stalled-bucket/{uuid.uuid4().hex[:8]}", options)


# case -> (the operation its error must name, the call)
_LIMITED_OPS: dict[str, tuple[str, Callable[[ObjectStore, pathlib.Path], Any]]] = {
    "get": ("get", lambda s, t: s.get("k", timeout=0.5)),
    "put_atomic": ("put_atomic", lambda s, t: s.put_atomic("k", b"v", timeout=0.5)),
    "create_if_absent": ("create_if_absent", lambda s, t: s.create_if_absent("k", b"v", timeout=0.5)),
    "list": ("list", lambda s, t: s.list("k", timeout=0.5)),
    "find": ("find", lambda s, t: s.find("k", timeout=0.5)),
    "delete": ("delete", lambda s, t: s.delete("k", timeout=0.5)),
    "delete_many": ("delete_many", lambda s, t: s.delete_many(["k", "l"], timeout=0.5)),
    "delete_tree": ("delete_tree", lambda s, t: s.delete_tree("k", timeout=0.5)),
    "get_file": ("get_file", lambda s, t: s.get_file("k", t / "out", size=5, timeout=0.5)),
    "get_file_unsized": ("get_file", lambda s, t: s.get_file("k", t / "out", timeout=0.5)),
    "put_file": ("put_file", lambda s, t: s.put_file(t / "in", "k", timeout=0.5)),
    "fetch_while_listing": ("fetch_while_listing", lambda s, t: s.fetch_while_listing("k", size=5, timeout=0.5)),
    # size unknown: the GET runs here, the LIST in a helper thread; the GET's limit fires
    "fetch_while_listing_unsized": ("get", lambda s, t: s.fetch_while_listing("k", timeout=0.5)),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(_LIMITED_OPS))
def test_timeout_on_a_server_that_never_answers(stalled: ObjectStore, tmp_path: pathlib.Path, case: str) -> None:
    (tmp_path / "in").write_bytes(b"hello")
    op, call = _LIMITED_OPS[case]
    with pytest.raises(TimeoutError) as info:
        call(stalled, tmp_path)
    err = info.value
    assert isinstance(err, StorageTimeoutError)
    assert err.op == op and err.key == "k" and err.timeout == 0.5
    assert repr("k") in str(err) and op in str(err)


# --------------------------------------------------------------------------------------------
# Storage, keys, the package's own rules
# --------------------------------------------------------------------------------------------


def test_secrets_never_in_repr(tmp_path: pathlib.Path) -> None:
    options = {"key": "AKIA-not-shown", "secret": "hunter2-not-shown", "endpoint_url": "http://x"}
    st = Storage("s3://bucket/p", options)
    assert "not-shown" not in repr(st) and "secret" in repr(st)
    store = ObjectStore.of(st, "cache", "v1")
    assert "not-shown" not in repr(store)
    assert store.url == "s3://bucket/p/cache/v1" and store.options == options


def test_store_of_storage_and_keys(tmp_path: pathlib.Path) -> None:
    st = Storage(tmp_path / "root")
    assert st.key("cache", "a/b", "..") == "cache/a/b/%2E%2E"
    assert st.prefix_url("cache", "a/b", "..") == f"{st.url}/{st.key('cache', 'a/b', '..')}"
    root = ObjectStore.of(st)
    assert st.store.url == root.url and st.store is st.store
    st.store.put_atomic(st.key("top", "a b"), b"0")
    assert root.get("top/a%20b") == b"0"
    assert pickle.loads(pickle.dumps(st)).store.get(st.key("top", "a b")) == b"0"
    sub = ObjectStore.of(st, "cache")
    sub.put_atomic("x", b"1")
    assert root.get(st.key("cache", "x")) == b"1"
    assert root.is_local and not root.is_remote and not root.atomic_writes
    clone = pickle.loads(pickle.dumps(sub))
    assert clone.url == sub.url and clone.get("x") == b"1"
    assert not ObjectStore("memory://m/p").is_local and not ObjectStore("memory://m/p").is_remote
    s3 = ObjectStore("s3://b/p", {})
    assert s3.is_remote and s3.atomic_writes and not s3.is_local
    assert ObjectStore("file:///tmp/x/").url == "/tmp/x"


def test_storage_layer_imports_without_ray_or_the_rest() -> None:
    """flyte_ray/storage is loaded as a package of its own (not through flyte_ray/__init__,
    which imports Ray): it must need nothing else from flyte_ray, nor Ray."""
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        root = {str(REPO_ROOT / "flyte_ray" / "storage")!r}
        spec = importlib.util.spec_from_file_location(
            "isolated_storage", root + "/__init__.py", submodule_search_locations=[root])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["isolated_storage"] = mod
        spec.loader.exec_module(mod)
        store = mod.ObjectStore("memory://isolated/x", {{}})
        store.put_atomic("k", b"v")
        assert store.get("k") == b"v"
        bad = sorted(m for m in sys.modules if m == "ray" or m.startswith(("ray.", "flyte_ray")))
        assert not bad, bad
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
