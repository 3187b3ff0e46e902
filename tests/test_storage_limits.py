"""Time limits on storage and bounded state: store-wide default limits, client timeouts and retry
bounds, errors that name the URL but never credentials, checkpoints on a stalled endpoint, and
multipart uploads that are never left behind. Real moto S3 and a loopback server that never
answers; no Ray, no mocks of fsspec/s3fs/botocore."""

from __future__ import annotations

import io
import math
import os
import pathlib
import pickle
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import flyte_ray.checkpoint.save as ckpt_save
from flyte_ray.checkpoint import Checkpoint
from flyte_ray.storage import ObjectStore, StorageTimeoutError, limits

try:  # pytest puts tests/ on sys.path (no tests/__init__.py); the repo root may not be
    from _s3server import s3_server  # noqa: F401 -- session fixture
    from _silent import silent_endpoint  # noqa: F401 -- module fixture
except ImportError:  # pragma: no cover
    from tests._s3server import s3_server  # noqa: F401
    from tests._silent import silent_endpoint  # noqa: F401

KEY_ID, SECRET = "AKIA-KEYID-never-shown", "hunter2-secret-never-shown"


def _no_secret(err: BaseException) -> None:
    for text in (str(err), repr(err)):
        assert KEY_ID not in text and SECRET not in text, text


# --------------------------------------------------------------------------------------------
# defaults: limits, client options, errors
# --------------------------------------------------------------------------------------------


def test_client_defaults_never_override_what_the_user_set() -> None:
    out = limits.with_client_defaults("s3", {"key": "k"})
    assert out["config_kwargs"] == limits.S3_CONFIG_DEFAULTS and out["key"] == "k"
    mine = {"config_kwargs": {"read_timeout": 120, "retries": {"max_attempts": 1}}, "anon": True}
    out = limits.with_client_defaults("s3", mine)
    assert out["config_kwargs"] == {"read_timeout": 120, "retries": {"max_attempts": 1}, "connect_timeout": 10}
    assert mine == {"config_kwargs": {"read_timeout": 120, "retries": {"max_attempts": 1}}, "anon": True}
    gcs = limits.with_client_defaults("gs", {})["requests_timeout"]
    assert gcs.total is None and gcs.sock_read == limits.GCS_SOCK_READ and gcs.sock_connect == limits.GCS_SOCK_CONNECT
    assert limits.with_client_defaults("gs", {"requests_timeout": 5}) == {"requests_timeout": 5}
    assert limits.with_client_defaults("memory", {"x": 1}) == {"x": 1}
    # gcsfs takes them (constructing it sends no request)
    gs = ObjectStore("gs://some-bucket/p", {"token": "anon"})
    assert gs.fs.requests_timeout.sock_read == limits.GCS_SOCK_READ  # type: ignore[attr-defined]
    assert gs.options == {"token": "anon"}
    assert limits.with_client_defaults("file", {}) == {}


def test_store_applies_client_defaults_but_reports_the_given_options(s3_server: dict[str, Any]) -> None:
    store = ObjectStore(f"{s3_server['url']}/defaults-{uuid.uuid4().hex[:8]}", s3_server["options"])
    assert store.options == s3_server["options"]  # as given
    config = store.fs.config_kwargs  # type: ignore[attr-defined]
    assert config["connect_timeout"] == 10 and config["read_timeout"] == 30
    assert config["retries"] == {"max_attempts": 3, "mode": "standard"}
    store.put_atomic("k", b"v")
    assert store.get("k") == b"v"


def test_default_limits(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv(limits.ENV_STORAGE_TIMEOUT, raising=False)
    store = ObjectStore(tmp_path, {})
    assert store.op_timeout == 60.0 and store.min_rate == 2**20
    assert store.limit() == 60.0 and store.limit(None, 2**20 * 10) == 70.0
    assert store.limit(0.5, 10**12) == 0.5  # what the caller says
    assert store.limit(math.inf) is None  # no limit, when asked for
    monkeypatch.setenv(limits.ENV_STORAGE_TIMEOUT, "7.5")
    assert ObjectStore(tmp_path, {}).limit() == 7.5
    monkeypatch.setenv(limits.ENV_STORAGE_TIMEOUT, "none")
    assert ObjectStore(tmp_path, {}).limit() is None
    monkeypatch.setenv(limits.ENV_STORAGE_TIMEOUT, "soon")
    with pytest.raises(ValueError, match=limits.ENV_STORAGE_TIMEOUT):
        ObjectStore(tmp_path, {})
    monkeypatch.delenv(limits.ENV_STORAGE_TIMEOUT)
    with pytest.raises(ValueError):
        ObjectStore(tmp_path, {}, op_timeout=0)
    clone = pickle.loads(pickle.dumps(ObjectStore(tmp_path, {}, op_timeout=3, min_rate=5)))
    assert clone.op_timeout == 3 and clone.min_rate == 5
    cp = pickle.loads(pickle.dumps(Checkpoint(tmp_path / "cp", op_timeout=4)))
    assert cp._store.op_timeout == 4


def test_client_timeouts_are_recognised() -> None:
    try:
        from botocore.exceptions import ReadTimeoutError
    except ImportError:  # pragma: no cover
        pytest.skip("botocore not installed")
    read = ReadTimeoutError(endpoint_url="http://x")
    assert limits.is_client_timeout(read) and limits.is_client_timeout(TimeoutError())
    try:
        raise OSError("wrapped") from read
    except OSError as e:
        assert limits.is_client_timeout(e)
    try:  # only an explicit cause counts, never an error met while handling another
        try:
            raise read
        except ReadTimeoutError:
            raise FileNotFoundError("k") from None
    except FileNotFoundError as e:
        assert not limits.is_client_timeout(e)
    assert not limits.is_client_timeout(ValueError("x"))


def test_redact_url() -> None:
    assert limits.redact_url("s3://bucket/p/k") == "s3://bucket/p/k"
    assert limits.redact_url("https://user:pw@host:9000/p/k?X-Amz-Signature=abc#f") == "https://host:9000/p/k"
    assert limits.redact_url("/local/path") == "/local/path"


def test_storage_timeout_error_pickles_and_names_the_url() -> None:
    err = StorageTimeoutError("get", "a/b", 1.5, "s3://bucket/root/a/b")
    assert "'a/b'" in str(err) and "s3://bucket/root/a/b" in str(err) and "1.5 s" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is StorageTimeoutError and str(back) == str(err) and back.url == err.url
    client = StorageTimeoutError("list", "p", None, "s3://b/p", "ReadTimeoutError")
    assert "ReadTimeoutError" in str(client) and isinstance(client, TimeoutError)


# --------------------------------------------------------------------------------------------
# a stalled endpoint: every operation fails within its limit, without leaking secrets
# --------------------------------------------------------------------------------------------


def _stalled_options(endpoint: str, **extra: Any) -> dict[str, Any]:
    # No config_kwargs: the store's client defaults apply (the limits under test fire first).
    return {"endpoint_url": endpoint, "key": KEY_ID, "secret": SECRET, "skip_instance_cache": True, **extra}


@pytest.fixture
def stalled_url() -> str:
    return f"s3://stalled-bucket/{uuid.uuid4().hex[:8]}"


_DEFAULT_LIMITED: dict[str, Callable[[ObjectStore, pathlib.Path], Any]] = {
    "get": lambda s, t: s.get("k"),
    "put_atomic": lambda s, t: s.put_atomic("k", b"v"),
    "create_if_absent": lambda s, t: s.create_if_absent("k", b"v", verify=True),
    "list": lambda s, t: s.list("k"),
    "delete": lambda s, t: s.delete("k"),
    "get_file": lambda s, t: s.get_file("k", t / "out", size=5),
    "put_file": lambda s, t: s.put_file(t / "in", "k"),
    "writer_small": lambda s, t: s.open_writer("k").commit(),
    "writer_parts": lambda s, t: s.open_writer("k").write(b"x" * (s.single_get_max + 1)),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(_DEFAULT_LIMITED))
def test_default_limit_on_a_server_that_never_answers(
    silent_endpoint: str, stalled_url: str, tmp_path: pathlib.Path, case: str
) -> None:
    """No ``timeout`` argument: the store-wide default limit ends every operation."""
    (tmp_path / "in").write_bytes(b"hello")
    store = ObjectStore(stalled_url, _stalled_options(silent_endpoint), op_timeout=0.5)
    with pytest.raises(StorageTimeoutError) as info:
        _DEFAULT_LIMITED[case](store, tmp_path)
    err = info.value
    assert err.key == "k" and err.url == f"{stalled_url}/k" and stalled_url in str(err)
    _no_secret(err)


@pytest.mark.timeout(120)
def test_client_timeout_is_a_storage_timeout(silent_endpoint: str, stalled_url: str) -> None:
    """The client's own read timeout (after its retries) ends a call whose limit is far away: it
    raises StorageTimeoutError too, naming the client's error."""
    options = _stalled_options(
        silent_endpoint, config_kwargs={"read_timeout": 0.2, "connect_timeout": 0.2, "retries": {"max_attempts": 1}}
    )
    store = ObjectStore(stalled_url, options, op_timeout=100)
    with pytest.raises(StorageTimeoutError) as info:
        store.list("")
    assert info.value.client is not None and stalled_url in str(info.value)
    _no_secret(info.value)


def _fails_with_storage_timeout(fn: Callable[[], Any], url: str) -> StorageTimeoutError:
    with pytest.raises(StorageTimeoutError) as info:
        fn()
    assert url in str(info.value)
    _no_secret(info.value)
    return info.value


@pytest.mark.timeout(120)
def test_checkpoint_on_a_stalled_store_fails_within_its_limits(
    silent_endpoint: str, stalled_url: str, tmp_path: pathlib.Path
) -> None:
    options = _stalled_options(silent_endpoint)
    url = f"{stalled_url}/cp"
    cp = Checkpoint(url, options=options, op_timeout=0.5)
    _fails_with_storage_timeout(lambda: cp.write(b"state"), url)
    _fails_with_storage_timeout(lambda: cp.save(io.BytesIO(b"streamed")), url)
    src = tmp_path / "dir"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    _fails_with_storage_timeout(lambda: cp.save(src), url)
    for reader in (cp, Checkpoint(url, options=options, op_timeout=0.5)):
        _fails_with_storage_timeout(reader.read, url)
        _fails_with_storage_timeout(lambda r=reader: r.restore(tmp_path / "r"), url)  # type: ignore[misc]
        _fails_with_storage_timeout(reader.latest, url)
    cp.flush()  # the helper threads of the failed saves end too


# --------------------------------------------------------------------------------------------
# multipart uploads are never left behind
# --------------------------------------------------------------------------------------------


def _uploads(fs: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    return fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix).get("Uploads", [])


def _plant_upload(fs: Any, bucket: str, key: str) -> str:
    mpu = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)
    fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=mpu["UploadId"], PartNumber=1, Body=b"p" * 100)
    return mpu["UploadId"]


class _Reader:
    """Yields ``good`` chunks of 8 MiB, then ends (``fail``: raises instead)."""

    def __init__(self, good: int, fail: bool):
        self.left, self.fail = good, fail

    def read(self, n: int) -> bytes:
        if self.left == 0:
            if self.fail:
                raise OSError("source broke")
            return b""
        self.left -= 1
        return b"z" * n


def test_streamed_save_in_parts(s3_server: dict[str, Any]) -> None:
    """A stream longer than one part is a multipart upload: committed whole, or on failure
    aborted (nothing visible, no upload left)."""
    bucket = s3_server["bucket"]
    prefix = f"parts-{uuid.uuid4().hex[:8]}"
    url = f"{s3_server['url']}/{prefix}/cp"
    cp = Checkpoint(url, options=s3_server["options"])
    cp.save(_Reader(8, fail=False))  # 64 MiB: two parts
    assert cp.read() == b"z" * (64 * 2**20)
    with pytest.raises(OSError, match="source broke"):
        cp.save(_Reader(7, fail=True))  # one 50 MiB part sent, then the source breaks
    assert _uploads(cp.fs, bucket, prefix) == []
    assert Checkpoint(url, options=s3_server["options"]).read() == b"z" * (64 * 2**20)


def test_first_save_aborts_stale_uploads_under_its_prefix_only(
    s3_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server["bucket"]
    prefix = f"stale-{uuid.uuid4().hex[:8]}"
    url = f"{s3_server['url']}/{prefix}/cp"
    seed = Checkpoint(url, options=s3_server["options"])
    fs = seed.fs
    mine = _plant_upload(fs, bucket, f"{prefix}/cp/01700000000000000000-deadbeef.payload")
    sibling = _plant_upload(fs, bucket, f"{prefix}/cp2/01700000000000000000-deadbeef.payload")
    # Young uploads are left alone (they may be another writer's, in progress). moto reports
    # every upload as begun in 2010, so "young" here means a threshold longer than that.
    monkeypatch.setattr(ckpt_save, "STALE_UPLOAD_AGE", 1e10)
    seed.write(b"first")
    seed.flush()
    assert {u["UploadId"] for u in _uploads(fs, bucket, prefix)} == {mine, sibling}
    monkeypatch.setattr(ckpt_save, "STALE_UPLOAD_AGE", 3600.0)
    seed.write(b"warm saves send nothing more")
    seed.flush()
    assert {u["UploadId"] for u in _uploads(fs, bucket, prefix)} == {mine, sibling}
    retry = Checkpoint(url, options=s3_server["options"])
    assert retry.read() == b"warm saves send nothing more"
    retry.write(b"after a crash")  # this object's first save
    retry.flush()
    assert [u["UploadId"] for u in _uploads(fs, bucket, prefix)] == [sibling]
    assert Checkpoint(url, options=s3_server["options"]).read() == b"after a crash"


@pytest.mark.timeout(120)
def test_upload_that_runs_out_of_time_leaves_no_multipart_upload(
    s3_server: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    bucket = s3_server["bucket"]
    prefix = f"cut-{uuid.uuid4().hex[:8]}"
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(101 * 2**20)  # a multipart upload for s3fs (two 50 MiB blocks and more)
    # a limit that passes while the parts are being sent (moto takes about a second for them)
    store = ObjectStore(f"{s3_server['url']}/{prefix}", s3_server["options"], op_timeout=0.3, min_rate=1e15)
    with pytest.raises(StorageTimeoutError):
        store.put_file(big, "big.bin")
    assert _uploads(store.fs, bucket, prefix) == []
    assert store.get("big.bin") is None
    assert os.path.getsize(big) == 101 * 2**20
