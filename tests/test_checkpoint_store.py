"""Tests for flyte_ray.checkpoint: real local folders, memory://, and S3 on a real moto server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from typing import Any, Callable

import pytest

import flyte_ray.checkpoint as ckpt_mod
from flyte_ray.checkpoint import Checkpoint, Storage, sanitize_component
try:  # pytest puts tests/ on sys.path (no tests/__init__.py); the repo root may not be
    from _s3server import s3_server  # noqa: F401 -- session fixture
except ImportError:  # pragma: no cover
    from tests._s3server import s3_server  # noqa: F401

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# helpers / fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["local", "memory", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> tuple[str, dict[str, Any]]:
    """(root url, storage options) for a fresh, unique root on each backend."""
    unique = uuid.uuid4().hex[:12]
    if request.param == "local":
        return str(tmp_path / "store"), {}
    if request.param == "memory":
        return f"memory://flyte-ray-tests/{unique}", {}
    s3 = request.getfixturevalue("s3_server")
    return f"{s3['url']}/{unique}", dict(s3["options"])


@pytest.fixture
def make_cp(backend: tuple[str, dict[str, Any]]) -> Callable[..., Checkpoint]:
    root, options = backend

    def make(name: str = "cp", keep: int = 2) -> Checkpoint:
        return Checkpoint(f"{root}/{name}", options=options, keep=keep)

    return make


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _vid(ns: int | None = None, tag: str = "0badc0de") -> str:
    """A version id in the store's format (``<time_ns:020d>-<8 hex>``)."""
    return f"{time.time_ns() if ns is None else ns:020d}-{tag}"


def _dirs(cp: Checkpoint) -> list[str]:
    """Version ids of everything under ``cp`` (version folders, complete or not, and
    single-object versions ``<vid>.<name>``), sorted; anything else is returned as is."""
    fs = cp.fs
    root = fs._strip_protocol(cp.url)
    fs.invalidate_cache(root)
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    return sorted(m.group(1) if (m := ckpt_mod.layout.OBJ_RE.fullmatch(n)) else n for n in names)


def _sha(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------


def test_empty_checkpoint(make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path) -> None:
    cp = make_cp()
    assert cp.read() is None
    assert cp.restore(tmp_path / "r") is None
    assert cp.restore() is None
    assert cp.prev_exists() is False
    assert cp.latest() is None and cp.versions() == []
    assert cp.load() is None


def test_bytes_round_trip(make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path) -> None:
    cp = make_cp()
    payload = os.urandom(300_000)
    cp.write(payload)
    assert cp.read() == payload
    assert cp.prev_exists()
    out = cp.restore(tmp_path / "r")
    assert out is not None and out.parent == tmp_path / "r" and out.read_bytes() == payload
    m = cp.latest()
    assert m is not None and m["kind"] == "bytes" and m["size"] == len(payload)
    assert ckpt_mod.layout.VID_RE.fullmatch(m["version"])
    # On S3 a single blob without metadata is one object, its own commit point; elsewhere a
    # version folder with a marker.
    if cp.url.startswith("s3://"):
        assert m["layout"] == "object" and m["url"] == f"{cp.url}/{m['version']}.payload"
    else:
        assert m["layout"] == "folder" and m["url"] == f"{cp.url}/{m['version']}"
    assert _dirs(cp) == [m["version"]]


def test_file_round_trip(make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(1_000_003))
    cp = make_cp()
    cp.save(src, metadata={"step": 7})
    out = cp.restore(tmp_path / "r")
    assert out == tmp_path / "r" / "model.bin"
    assert out.read_bytes() == src.read_bytes()
    assert cp.read() == src.read_bytes()
    assert cp.latest()["metadata"] == {"step": 7}  # type: ignore[index]
    # str paths work the same (flytekit passes str)
    first = cp.latest()["version"]  # type: ignore[index]
    cp.save(str(src))
    assert cp.latest()["version"] > first  # type: ignore[index]
    assert [m["version"] for m in cp.versions()][0] == first


def test_directory_round_trip(make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path) -> None:
    src = tmp_path / "state"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    (src / "sub" / "deeper" / "c name ñ.json").write_text(json.dumps({"x": 1}))
    (src / "empty.bin").write_bytes(b"")
    cp = make_cp()
    cp.save(src)
    out = cp.restore(tmp_path / "r")
    assert out == tmp_path / "r"
    assert _tree(out) == _tree(src)
    with pytest.raises(ValueError):
        cp.read()
    tmp_out = cp.restore()
    assert tmp_out is not None and _tree(tmp_out) == _tree(src)
    # pruning of directory versions removes their whole tree
    (src / "a.txt").write_text("alpha 2")
    cp.save(src)
    v2 = cp.latest()["version"]  # type: ignore[index]
    cp.save(src)
    v3 = cp.latest()["version"]  # type: ignore[index]
    assert [m["version"] for m in cp.versions()] == [v2, v3]
    root = cp.fs._strip_protocol(cp.url)
    cp.fs.invalidate_cache(root)
    seq_dirs = {p[len(root) + 1 :].split("/")[0] for p in cp.fs.find(root)}
    assert seq_dirs == {v2, v3}
    assert _tree(cp.restore(tmp_path / "r3")) == _tree(src)  # type: ignore[arg-type]


def test_reader_round_trip(make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path) -> None:
    payload = os.urandom(20 * 2**20 + 5)  # > 2 chunks of 8 MiB
    cp = make_cp()
    cp.save(io.BytesIO(payload))
    assert cp.read() == payload
    src = tmp_path / "f"
    src.write_bytes(payload[:1000])
    with open(src, "rb") as f:  # a BufferedReader, as flytekit passes
        cp.save(f)
    out = cp.restore(tmp_path / "r")
    assert out is not None and out.read_bytes() == payload[:1000]
    cp.save(b"raw bytes")
    assert cp.read() == b"raw bytes"


def test_flyte_sdk_style(make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path) -> None:
    cp = make_cp()
    src = tmp_path / "ckpt.txt"
    src.write_text("v1")

    async def go() -> pathlib.Path | None:
        await cp.save.aio(src)
        return await cp.load.aio()

    loaded = asyncio.run(go())
    assert loaded is not None and loaded.read_text() == "v1" and loaded.parent == cp.path
    assert cp.load() == loaded and cp.load_sync() == loaded  # cached, no re-download
    src.write_text("v2")
    cp.save_sync(src)
    again = cp.load()
    assert again is not None and again.read_text() == "v2"
    asyncio.run(cp.save_async(b"v3"))
    assert asyncio.run(cp.load_async()).read_bytes() == b"v3"  # type: ignore[union-attr]
    assert cp.remote_destination == cp.url
    assert cp.remote_source is not None and cp.remote_source.startswith(cp.url + "/")


# --------------------------------------------------------------------------------------------
# versions, retention, attempts
# --------------------------------------------------------------------------------------------


def test_newest_complete_and_keep(make_cp: Callable[..., Checkpoint]) -> None:
    cp = make_cp(keep=3)
    vids = []
    for i in range(6):
        cp.write(f"v{i}".encode(), metadata={"i": i})
        vids.append(cp.latest()["version"])  # type: ignore[index]
    assert vids == sorted(vids) and len(set(vids)) == 6
    assert cp.read() == b"v5"
    assert [m["version"] for m in cp.versions()] == vids[3:]
    assert [m["metadata"] for m in cp.versions()] == [{"i": 3}, {"i": 4}, {"i": 5}]
    # pruned folders are gone, not just unmarked (pruning runs after the commit, in the
    # background; flush waits for it, as any later call on the object does)
    cp.flush()
    assert _dirs(cp) == vids[3:]
    # another object (a retry) sees the same
    assert [m["version"] for m in make_cp(keep=3).versions()] == vids[3:]

    one = make_cp("keep1", keep=1)
    for i in range(3):
        one.write(b"x%d" % i)
    one.flush()
    assert [m["version"] for m in one.versions()] == _dirs(one)
    assert len(_dirs(one)) == 1
    assert one.read() == b"x2"


def test_other_attempt_sees_newest(make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path) -> None:
    first = make_cp()
    first.write(b"attempt-1 step 10")
    second = make_cp()  # a retry builds its own object on the same URL
    assert second.prev_exists() and second.read() == b"attempt-1 step 10"
    second.write(b"attempt-2 step 20")
    assert first.read() == b"attempt-2 step 20"  # no stale listing cache
    # and across pickling (how it travels to a Ray worker)
    third = pickle.loads(pickle.dumps(second))
    assert third.read() == b"attempt-2 step 20"
    third.write(b"attempt-3")
    assert [m["version"] for m in third.versions()] == _dirs(third)
    assert len(third.versions()) == 2
    # An object that saved an older version and still has it cached (the restore fetches it
    # while it lists) must still return the newest, and leave no temporary files behind.
    out = first.restore(tmp_path / "r1")
    assert out is not None and out.read_bytes() == b"attempt-3"
    assert sorted(p.name for p in (tmp_path / "r1").iterdir()) == ["payload"]
    assert second.read() == b"attempt-3"


def test_incomplete_version_ignored(make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path) -> None:
    cp = make_cp()
    cp.write(b"good")
    good = cp.latest()["version"]  # type: ignore[index]
    fs = cp.fs
    root = fs._strip_protocol(cp.url)
    crashed, garbage = _vid(tag="00000009"), _vid(tag="00000010")
    assert good < crashed < garbage
    # A crashed writer's folder: payload but no marker, with a newer id.
    if cp.url.startswith("/"):
        os.makedirs(f"{root}/{crashed}/data")
    fs.pipe_file(f"{root}/{crashed}/data/payload", b"half-written")
    # A garbage marker (truncated write) also does not count.
    if cp.url.startswith("/"):
        os.makedirs(f"{root}/{garbage}/data")
    fs.pipe_file(f"{root}/{garbage}/data/payload", b"x")
    fs.pipe_file(f"{root}/{garbage}/_COMPLETE", b'{"version": "' + garbage.encode() + b'", "ki')
    fresh = make_cp()
    assert fresh.read() == b"good"
    out = fresh.restore(tmp_path / "r")
    assert out is not None and out.read_bytes() == b"good"
    assert [m["version"] for m in fresh.versions()] == [good]
    # The next save gets a newer id than the incomplete ones and then prunes them.
    fresh.write(b"next")
    new = fresh.latest()["version"]  # type: ignore[index]
    assert new > garbage
    assert fresh.read() == b"next"
    assert _dirs(fresh) == [good, new]


def test_damaged_newest_falls_back(make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path) -> None:
    cp = make_cp()
    cp.write(b"older")
    cp.write(b"newer")
    fs = cp.fs
    root = fs._strip_protocol(cp.url)
    newest = cp.latest()
    assert newest is not None
    if newest["layout"] == "folder":
        fs.pipe_file(f"{root}/{newest['version']}/data/payload", b"new")  # truncated behind our back
    else:
        # A single object cannot be half-written; what can happen is that it vanishes (pruned
        # by a concurrent writer) after a reader decided to fetch it.
        fs.rm_file(f"{root}/{newest['version']}.payload")
        assert cp.read() == b"older"  # cp fetches the version it saved while it lists: a 404
        out = cp.restore(tmp_path / "warm")
        assert out is not None and out.read_bytes() == b"older"
        assert sorted(p.name for p in (tmp_path / "warm").iterdir()) == ["payload"]
    fresh = make_cp()
    assert fresh.read() == b"older"
    out = fresh.restore(tmp_path / "r")
    assert out is not None and out.read_bytes() == b"older"


def test_pickle_and_invalid_args(tmp_path: pathlib.Path) -> None:
    cp = Checkpoint(tmp_path / "c", keep=2)
    cp.write(b"x")
    _ = cp.fs, cp.path
    clone = pickle.loads(pickle.dumps(cp))
    assert clone.url == cp.url and clone.keep == 2 and clone.read() == b"x"
    with pytest.raises(ValueError):
        Checkpoint(tmp_path / "c", keep=0)
    with pytest.raises(FileNotFoundError):
        cp.save(tmp_path / "does-not-exist")


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


def test_storage_defaults_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv("FLYTE_RAY_STORAGE", raising=False)
    monkeypatch.delenv("FLYTE_RAY_STORAGE_OPTIONS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    s = Storage()
    assert s.url == str(tmp_path / ".flyte-ray" / "storage") and s.is_local and s.options == {}
    monkeypatch.setenv("FLYTE_RAY_STORAGE", "s3://bucket/prefix/")
    monkeypatch.setenv("FLYTE_RAY_STORAGE_OPTIONS", json.dumps({"endpoint_url": "http://x"}))
    s = Storage()
    assert s.url == "s3://bucket/prefix" and not s.is_local and s.options == {"endpoint_url": "http://x"}
    assert Storage("file:///tmp/x").is_local and Storage("file:///tmp/x").url == "/tmp/x"
    assert not Storage("memory://a").is_local and not Storage("gs://b/p").is_local
    assert Storage("/tmp/x", options={}).options == {}
    s2 = pickle.loads(pickle.dumps(Storage("memory://z", {"a": 1})))
    assert s2 == Storage("memory://z", {"a": 1})


def test_storage_checkpoint_layout(tmp_path: pathlib.Path) -> None:
    st = Storage(tmp_path)
    assert st.checkpoint_url("run-1", "pkg.mod.task", "abc/def") == f"{tmp_path}/checkpoints/run-1/pkg.mod.task/abc/def"
    assert st.prefix_url("cache", "v1") == f"{tmp_path}/cache/v1"
    cp = st.checkpoint("run-1", "pkg.mod.task", "abc")
    cp.write(b"hi")
    (marker,) = (tmp_path / "checkpoints/run-1/pkg.mod.task/abc").glob("*/_COMPLETE")
    assert marker.parent.name == cp.latest()["version"]  # type: ignore[index]
    _ = st.fs
    assert pickle.loads(pickle.dumps(st)).fs is not None


HOSTILE = [
    "..",
    ".",
    "",
    "/etc/passwd",
    "s3://other/bucket",
    "a/../../b",
    "../../../../tmp/evil",
    "..\\..\\windows",
    "nul\x00byte",
    "ünïcødé/日本語",
    "%2E%2E",
    "%",
    "a b",
    "a_b",
    "x" * 500,
    "x" * 499,
    "~/home",
    "C:\\temp",
]


@pytest.mark.parametrize("root", ["/srv/store", "s3://bucket/prefix", "memory://m/p"])
def test_sanitisation_cannot_escape(root: str) -> None:
    st = Storage(root)
    seen: dict[str, tuple[str, ...]] = {}
    for run in HOSTILE:
        for fqn in ("..", "/abs", "ok.task"):
            for call in HOSTILE:
                url = st.checkpoint_url(run, fqn, call)
                assert url.startswith(st.url + "/checkpoints/")
                rest = url[len(st.url) + 1 :]
                comps = rest.split("/")
                assert all(c not in ("", ".", "..") for c in comps), url
                assert "://" not in rest and "\\" not in rest and "\x00" not in rest and ":" not in rest
                assert all(len(c) <= 120 for c in comps)
                assert url not in seen, (url, seen.get(url), (run, fqn, call))
                seen[url] = (run, fqn, call)
        url = st.prefix_url(run, "x")
        rest = url[len(st.url) + 1 :]
        assert url.startswith(st.url + "/") and ".." not in rest.split("/")
    # run and fqn are single components: "/" inside them does not create hierarchy
    assert st.checkpoint_url("a/b", "f", "c") != st.checkpoint_url("a", "b/f", "c")
    # call_id "/" is hierarchy: children live under their parent's prefix
    assert st.checkpoint_url("r", "f", "p/c").startswith(st.checkpoint_url("r", "f", "p") + "/")


def test_sanitize_component_is_injective_on_tricky_pairs() -> None:
    pairs = [("a b", "a%20b"), ("..", "%2E%2E"), ("", "%"), ("x" * 500, "x" * 501), ("é", "%C3%A9")]
    for a, b in pairs:
        assert sanitize_component(a) != sanitize_component(b)
    assert sanitize_component("plain-Name_1.2") == "plain-Name_1.2"


def test_hostile_names_round_trip_on_backend(backend: tuple[str, dict[str, Any]]) -> None:
    root, options = backend
    st = Storage(root, options)
    for i, call in enumerate(["a/../../b", "ünï/日本", "s3://x/y", "%"]):
        cp = st.checkpoint("run ..", "/etc/passwd", call)
        cp.write(b"%d" % i)
        assert Checkpoint(cp.url, options=options).read() == b"%d" % i
    found = st.fs.find(st.fs._strip_protocol(st.url))
    # 4 payloads + 4 markers, all under the root (on S3 each of these saves is one object)
    assert len(found) == (4 if root.startswith("s3://") else 8)


# --------------------------------------------------------------------------------------------
# crash safety with a real SIGKILLed writer
# --------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from flyte_ray.checkpoint import Checkpoint
    url, options, src, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    if mode == "background":  # the loop goes on while the upload runs; killed mid-upload
        h = Checkpoint(url, options=options).save(src, background=True)
        print("SNAPSHOT", h.state, flush=True)
        h.wait()
    elif mode == "stream":
        class Slow:  # a stream that never ends: the save is always killed mid-way
            def read(self, n):
                time.sleep(0.02)
                return b"s" * n
        Checkpoint(url, options=options).save(Slow())
    else:
        Checkpoint(url, options=options).save(src)
    print("DONE", flush=True)
    """
)


def _start_child(url: str, options: dict[str, Any], src: pathlib.Path, mode: str = "path") -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, json.dumps(options), str(src), mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill_when(proc: subprocess.Popen[bytes], in_flight: Callable[[], bool], timeout: float = 60) -> bool:
    """SIGKILL ``proc`` as soon as ``in_flight()``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if in_flight():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    raise AssertionError("child never started uploading")


def _assert_previous_intact(cp: Checkpoint, prev: bytes, tmp: pathlib.Path) -> None:
    fresh = Checkpoint(cp.url, options=cp.options)
    assert fresh.read() == prev
    out = fresh.restore(tmp)
    assert out is not None and out.name == "prev.bin"
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(prev).digest()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    p = tmp_path_factory.mktemp("big") / "big.bin"
    with open(p, "wb") as f:
        f.truncate(200 * 2**20)  # sparse: cheap to create, still 200 MB to upload
    return p


def _prev_checkpoint(cp: Checkpoint, tmp_path: pathlib.Path) -> bytes:
    prev = os.urandom(3 * 2**20)
    src = tmp_path / "prev.bin"
    src.write_bytes(prev)
    cp.save(src)
    return prev


def test_sigkill_during_local_save(tmp_path: pathlib.Path, big_file: pathlib.Path) -> None:
    cp = Checkpoint(tmp_path / "cp")
    prev = _prev_checkpoint(cp, tmp_path)
    prev_vid = cp.latest()["version"]  # type: ignore[index]
    root = pathlib.Path(cp.url)
    found: list[pathlib.Path] = []

    def upload_in_flight() -> bool:
        found[:] = [p for p in root.iterdir() if p.name != prev_vid and (p / "data" / "big.bin").exists()]
        return bool(found)

    for attempt in range(5):
        proc = _start_child(cp.url, {}, big_file)
        killed = _kill_when(proc, upload_in_flight)
        if killed and not (found[0] / "_COMPLETE").exists():
            break
        # Lost the race (save finished first): that is a legitimate newer checkpoint; retry
        # with it removed so the "previous" checkpoint stays the small one.
        for p in root.iterdir():
            if p.name != prev_vid:
                shutil.rmtree(p)
    else:
        pytest.fail("could not kill the writer mid-upload in 5 tries")
    crashed = found[0]
    target = crashed / "data" / "big.bin"
    print(f"killed on try {attempt + 1} with {target.stat().st_size} of {big_file.stat().st_size} bytes copied")
    assert crashed.name > prev_vid
    _assert_previous_intact(cp, prev, tmp_path / "restored")
    # A later save works, gets a newer id than the half-written one, becomes newest, and
    # prunes the leftover.
    after = Checkpoint(cp.url)
    after.write(b"after crash")
    assert after.read() == b"after crash"
    newest = after.latest()["version"]  # type: ignore[index]
    assert newest > crashed.name
    assert not crashed.exists()
    assert sorted(p.name for p in root.iterdir()) == [prev_vid, newest]


@pytest.mark.parametrize("mode", ["path", "stream", "background"])
def test_sigkill_during_s3_save(
    s3_server: dict[str, Any], tmp_path: pathlib.Path, big_file: pathlib.Path, mode: str
) -> None:
    """On S3 a single blob is one object with no marker: killed mid-upload (a multipart upload
    of a file, or of a stream), it must never become visible."""
    url = f"{s3_server['url']}/crash-{uuid.uuid4().hex[:8]}/cp"
    cp = Checkpoint(url, options=s3_server["options"])
    prev = _prev_checkpoint(cp, tmp_path)
    fs = cp.fs
    bucket = s3_server["bucket"]
    key_prefix = url[len(f"s3://{bucket}/") :]

    def upload_in_flight() -> bool:
        # A large put is a multipart upload: it is in flight once parts are being sent.
        ups = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key_prefix).get("Uploads", [])
        for u in ups:
            parts = fs.call_s3("list_parts", Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", [])
            if parts:
                return True
        return False

    proc = _start_child(url, s3_server["options"], big_file, mode)
    assert _kill_when(proc, upload_in_flight), "the 200 MB upload finished before it could be killed"
    _assert_previous_intact(cp, prev, tmp_path / "restored")
    after = Checkpoint(url, options=s3_server["options"])
    after.write(b"after crash")
    assert after.read() == b"after crash"
    vs = after.versions()
    assert len(vs) == 2 and vs[0]["name"] == "prev.bin" and vs[1]["name"] == "payload"
    assert Checkpoint(url, options=s3_server["options"]).read() == b"after crash"
    after.flush()
    # the killed upload left nothing visible behind: only the two committed versions remain
    assert _dirs(after) == [m["version"] for m in vs]


def test_newest_even_when_a_clock_ran_ahead(make_cp: Callable[..., Checkpoint], monkeypatch: pytest.MonkeyPatch) -> None:
    """Version ids come from the clock, but a save never commits below an existing version.

    A writer whose clock ran ahead (another machine) leaves a version that sorts in the future;
    the next save, by an object that never listed the prefix, sees it in the listing it takes
    while uploading and re-uploads under a newer id.
    """
    real = time.time_ns

    def write_ahead(data: bytes, seconds: int) -> str:
        monkeypatch.setattr(ckpt_mod.layout.time, "time_ns", lambda: real() + seconds * 10**9)
        ahead = make_cp()
        ahead.write(data)
        monkeypatch.setattr(ckpt_mod.layout.time, "time_ns", real)
        return ahead.latest()["version"]  # type: ignore[index]

    future = write_ahead(b"from the future", 3_600)
    behind = make_cp()  # never listed: its first id comes from its own (earlier) clock
    behind.write(b"now")
    assert behind.latest()["version"] > future  # type: ignore[index]
    assert make_cp().read() == b"now"
    behind.flush()
    assert _dirs(behind) == [m["version"] for m in behind.versions()]  # the first upload is gone
    # A stream cannot be replayed: that save fails instead of committing below a newer version.
    write_ahead(b"further ahead", 7_200)
    with pytest.raises(RuntimeError, match="sorts after"):
        make_cp().save(io.BytesIO(b"stream"))
    assert make_cp().read() == b"further ahead"
    # An object that has listed the prefix (a retry reads first) never picks an older id.
    reader = make_cp()
    assert reader.read() == b"further ahead"
    reader.save(io.BytesIO(b"after reading"))
    assert make_cp().read() == b"after reading"


def test_warm_save_does_not_list(make_cp: Callable[..., Checkpoint], monkeypatch: pytest.MonkeyPatch) -> None:
    """After its first listing an object tracks the versions itself: saves issue no ``ls``,
    and pruning still keeps exactly ``keep`` versions."""
    cp = make_cp(keep=2)
    cp.write(b"0")
    calls: list[Any] = []
    real_ls = cp.fs.ls
    monkeypatch.setattr(cp.fs, "ls", lambda *a, **k: calls.append(a) or real_ls(*a, **k))
    for i in range(1, 4):
        cp.write(b"%d" % i)
    cp.flush()
    assert calls == []
    monkeypatch.undo()
    assert make_cp().read() == b"3" and len(_dirs(cp)) == 2


# --------------------------------------------------------------------------------------------
# single-object versions (S3): failures publish nothing; request counts
# --------------------------------------------------------------------------------------------


class _FailingReader:
    """Yields ``good`` chunks of 8 MiB, then raises (a stream that breaks mid-save)."""

    def __init__(self, good: int):
        self.left = good

    def read(self, n: int) -> bytes:
        if self.left == 0:
            raise OSError("source broke")
        self.left -= 1
        return b"z" * n


def test_failed_stream_publishes_nothing(make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path) -> None:
    cp = make_cp()
    cp.write(b"previous")
    prev = cp.latest()["version"]  # type: ignore[index]
    with pytest.raises(OSError, match="source broke"):
        cp.save(_FailingReader(2))
    assert cp.read() == b"previous"
    assert make_cp().read() == b"previous"
    out = make_cp().restore(tmp_path / "r")
    assert out is not None and out.read_bytes() == b"previous"
    if cp.url.startswith("s3://"):
        # not even a truncated object, and no multipart upload left behind
        assert _dirs(cp) == [prev]
        bucket, key, _ = cp.fs.split_path(cp.url)
        assert cp.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key).get("Uploads", []) == []
    # the next save works and prunes whatever the broken one left
    cp.write(b"next")
    cp.flush()
    assert make_cp().read() == b"next" and len(_dirs(cp)) == 2


def test_listing_failure_fails_the_save_and_retracts_it(
    make_cp: Callable[..., Checkpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh object cannot confirm its version is the newest without its listing: the save
    raises, and what it uploaded (on S3 an already visible single object) is deleted again."""
    make_cp().write(b"previous")
    cp = make_cp()

    def broken() -> list[str]:
        raise ConnectionError("listing failed")

    monkeypatch.setattr(cp, "_list_vids", broken)
    with pytest.raises(ConnectionError):
        cp.write(b"unconfirmed")
    cp.flush()
    monkeypatch.undo()
    assert make_cp().read() == b"previous"
    assert len(_dirs(cp)) == 1


def test_s3_request_counts(s3_server: dict[str, Any], tmp_path: pathlib.Path) -> None:
    """The S3 requests behind each operation (see the module docstring): a warm save of a blob
    is one PUT, a warm restore one LIST plus one GET, a retry's restore one LIST then one GET."""
    url = f"{s3_server['url']}/counts-{uuid.uuid4().hex[:8]}/cp"
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(3 * 2**20))
    cp = Checkpoint(url, options=s3_server["options"])
    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(model.name)

    def ops(fn: Callable[[], Any], target: Checkpoint = cp) -> list[str]:
        target.flush()
        calls.clear()
        fn()
        out = list(calls)
        target.flush()
        return out

    cp.save(src)  # first save: PUT + the listing, in parallel
    cp.fs.s3.meta.events.register("before-call.s3", record)
    try:
        cp.save(src)
        cp.flush()
        # one upload; the oldest version's DELETE is the save's background prune (keep=2), which
        # may already have run when the save returns
        assert [c for c in ops(lambda: cp.save(src)) if c != "DeleteObject"] == ["PutObject"]
        calls.clear()
        cp.save(src)
        cp.flush()  # keep=2: the oldest version goes, one DELETE
        assert calls == ["PutObject", "DeleteObject"]
        assert sorted(ops(lambda: cp.restore(tmp_path / "r1"))) == ["GetObject", "ListObjectsV2"]
        assert sorted(ops(cp.read)) == ["GetObject", "ListObjectsV2"]
        retry = Checkpoint(url, options=s3_server["options"])
        assert retry.fs is cp.fs  # fsspec caches the instance: the hook sees its calls too
        assert ops(lambda: retry.restore(tmp_path / "r2"), retry) == ["ListObjectsV2", "GetObject"]
        assert (tmp_path / "r2" / "model.bin").read_bytes() == src.read_bytes()
        # with metadata: the folder layout, payload then marker
        saved = ops(lambda: cp.save(src, metadata={"step": 1}))  # (its background prune may DELETE)
        assert [c for c in saved if c != "DeleteObject"] == ["PutObject", "PutObject"]
        assert ops(lambda: Checkpoint(url, options=s3_server["options"]).latest()) == ["ListObjectsV2", "GetObject"]
    finally:
        cp.fs.s3.meta.events.unregister("before-call.s3", record)


# --------------------------------------------------------------------------------------------
# background saves
# --------------------------------------------------------------------------------------------


def test_background_save_returns_after_the_snapshot_and_reads_see_it(
    make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path
) -> None:
    cp = make_cp()
    src = tmp_path / "state.bin"
    src.write_bytes(b"v1" * 1000)
    h = cp.save(src, background=True)
    assert h is not None and h.blocked_s >= 0 and h.nbytes == 2000
    src.write_bytes(b"changed after the save returned")  # the snapshot was taken: no effect
    assert cp.read() == b"v1" * 1000  # a read of the same object waits for its own uploads
    assert h.done() and h.state == "committed" and h.result() == cp.latest()["version"]  # type: ignore[index]
    assert make_cp().read() == b"v1" * 1000  # a fresh object (a retry) sees it too
    buf = bytearray(b"mutable")
    h2 = cp.save(buf, background=True, metadata={"step": 2})
    buf[:] = b"XXXXXXX"
    assert h2.result(timeout=30) is not None
    assert cp.read() == b"mutable" and cp.latest()["metadata"] == {"step": 2}  # type: ignore[index]
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"a")
    (tree / "sub" / "b.txt").write_bytes(b"b")
    h3 = cp.save(tree, background=True)
    shutil.rmtree(tree)  # gone before the upload ran: the snapshot has it
    h3.result(timeout=30)
    out = cp.restore(tmp_path / "restored")
    assert out is not None and _tree(out) == {"a.txt": b"a", "sub/b.txt": b"b"}
    assert cp.flush(timeout=30)


def test_a_newer_background_save_supersedes_a_queued_one_and_one_uploads_at_a_time(
    make_cp: Callable[..., Checkpoint],
) -> None:
    cp = make_cp(keep=5)
    gate = threading.Event()
    uploading = threading.Event()
    real = cp._save_snapshot
    active: list[int] = []
    peak: list[int] = [0]

    def slow(snap: Any) -> Any:  # the upload of the first save stalls until released
        active.append(1)
        peak[0] = max(peak[0], len(active))
        uploading.set()
        gate.wait(30)
        try:
            return real(snap)
        finally:
            active.pop()

    cp._save_snapshot = slow  # type: ignore[method-assign]
    cp._uploader = None
    first = cp.save(b"one", background=True)
    assert uploading.wait(10)
    second = cp.save(b"two", background=True)
    third = cp.save(b"three", background=True)
    assert second.state == "superseded" and second.result() is None
    assert first.state == "uploading" and third.state == "queued"
    gate.set()
    assert third.result(timeout=30) is not None and first.result(timeout=30) is not None
    assert peak[0] == 1
    assert [b for b in (cp.read(),)] == [b"three"]
    assert len(cp.versions()) == 2  # "two" never uploaded


def test_a_failed_background_upload_stays_on_its_handle_and_the_previous_version_restores(
    make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path
) -> None:
    cp = make_cp()
    cp.write(b"good")

    def broken(snap: Any) -> Any:
        raise OSError("the store went away")

    cp._uploader = None
    cp._save_snapshot = broken  # type: ignore[method-assign]
    h = cp.save(b"bad", background=True)
    with pytest.raises(OSError, match="went away"):
        h.result(timeout=30)
    assert h.state == "failed"
    assert make_cp().read() == b"good"
    with pytest.raises(FileNotFoundError):
        cp.save(tmp_path / "missing", background=True)  # bad input fails at the call, not later
    with pytest.raises(TypeError, match="background"):
        cp.save(b"x", background="yes")  # type: ignore[arg-type]
