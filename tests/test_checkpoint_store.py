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
import time
import uuid
from typing import Any, Callable

import pytest

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
    assert m is not None and m["kind"] == "bytes" and m["size"] == len(payload) and m["seq"] == 1


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
    cp.save(str(src))
    assert cp.latest()["seq"] == 2  # type: ignore[index]


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
    cp.save(src)
    assert [m["seq"] for m in cp.versions()] == [2, 3]
    root = cp.fs._strip_protocol(cp.url)
    cp.fs.invalidate_cache(root)
    seq_dirs = {p[len(root) + 1 :].split("/")[0] for p in cp.fs.find(root)}
    assert seq_dirs == {"000000000002", "000000000003"}
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
    for i in range(6):
        cp.write(f"v{i}".encode(), metadata={"i": i})
    assert cp.read() == b"v5"
    assert [m["seq"] for m in cp.versions()] == [4, 5, 6]
    # pruned folders are gone, not just unmarked
    fs = cp.fs
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(cp.fs._strip_protocol(cp.url), detail=False))
    assert names == ["000000000004", "000000000005", "000000000006"]

    one = make_cp("keep1", keep=1)
    for i in range(3):
        one.write(b"x%d" % i)
    assert [m["seq"] for m in one.versions()] == [3]
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
    assert [m["seq"] for m in third.versions()] == [2, 3]


def test_incomplete_version_ignored(make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path) -> None:
    cp = make_cp()
    cp.write(b"good")
    fs = cp.fs
    root = fs._strip_protocol(cp.url)
    # A crashed writer's folder: payload but no marker, with a larger seq.
    if cp.url.startswith("/"):
        os.makedirs(f"{root}/000000000009/data")
    fs.pipe_file(f"{root}/000000000009/data/payload", b"half-written")
    # A garbage marker (truncated write) also does not count.
    if cp.url.startswith("/"):
        os.makedirs(f"{root}/000000000010/data")
    fs.pipe_file(f"{root}/000000000010/data/payload", b"x")
    fs.pipe_file(f"{root}/000000000010/_COMPLETE", b'{"seq": 10, "ki')
    fresh = make_cp()
    assert fresh.read() == b"good"
    out = fresh.restore(tmp_path / "r")
    assert out is not None and out.read_bytes() == b"good"
    assert [m["seq"] for m in fresh.versions()] == [1]
    # The next save skips past the incomplete seqs and then prunes them.
    fresh.write(b"next")
    assert fresh.latest()["seq"] == 11  # type: ignore[index]
    assert fresh.read() == b"next"
    fs.invalidate_cache(root)
    left = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    assert left == ["000000000001", "000000000011"]


def test_damaged_newest_falls_back(make_cp: Callable[..., Checkpoint], tmp_path: pathlib.Path) -> None:
    cp = make_cp()
    cp.write(b"older")
    cp.write(b"newer")
    fs = cp.fs
    root = fs._strip_protocol(cp.url)
    fs.pipe_file(f"{root}/000000000002/data/payload", b"new")  # truncated behind our back
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
    assert (tmp_path / "checkpoints/run-1/pkg.mod.task/abc/000000000001/_COMPLETE").is_file()
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
    assert len(found) == 8  # 4 payloads + 4 markers, all under the root


# --------------------------------------------------------------------------------------------
# crash safety with a real SIGKILLed writer
# --------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, sys
    from flyte_ray.checkpoint import Checkpoint
    url, options, src = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    Checkpoint(url, options=options).save(src)
    print("DONE", flush=True)
    """
)


def _start_child(url: str, options: dict[str, Any], src: pathlib.Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, json.dumps(options), str(src)],
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
    root = pathlib.Path(cp.url)
    for attempt in range(5):
        seq = max(int(p.name) for p in root.iterdir()) + 1
        target = root / f"{seq:012d}" / "data" / "big.bin"
        proc = _start_child(cp.url, {}, big_file)
        killed = _kill_when(proc, target.exists)
        if killed and not (root / f"{seq:012d}" / "_COMPLETE").exists():
            break
        # Lost the race (save finished first): that is a legitimate newer checkpoint; retry
        # with it removed so the "previous" checkpoint stays the small one.
        shutil.rmtree(root / f"{seq:012d}")
    else:
        pytest.fail("could not kill the writer mid-upload in 5 tries")
    print(f"killed on try {attempt + 1} with {target.stat().st_size} of {big_file.stat().st_size} bytes copied")
    _assert_previous_intact(cp, prev, tmp_path / "restored")
    # A later save works, skips the half-written seq, becomes newest, and prunes the leftover.
    after = Checkpoint(cp.url)
    after.write(b"after crash")
    assert after.read() == b"after crash"
    assert after.latest()["seq"] == seq + 1  # type: ignore[index]
    assert not (root / f"{seq:012d}").exists()


def test_sigkill_during_s3_save(s3_server: dict[str, Any], tmp_path: pathlib.Path, big_file: pathlib.Path) -> None:
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

    proc = _start_child(url, s3_server["options"], big_file)
    assert _kill_when(proc, upload_in_flight), "the 200 MB upload finished before it could be killed"
    _assert_previous_intact(cp, prev, tmp_path / "restored")
    after = Checkpoint(url, options=s3_server["options"])
    after.write(b"after crash")
    assert after.read() == b"after crash"
    assert [m["seq"] for m in after.versions()] == [1, 2]
    assert Checkpoint(url, options=s3_server["options"]).read() == b"after crash"
