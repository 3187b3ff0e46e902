"""Checkpoint markers are untrusted input: a planted ``_COMPLETE`` is validated field by field,
never followed outside its version, and restores fall back to the previous good version.
Real local folders, memory:// and S3 on a moto server; no Ray."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
import uuid
from typing import Any

import pytest

from flyte_ray.checkpoint import Checkpoint, layout
from flyte_ray.storage import ObjectStore

try:  # pytest puts tests/ on sys.path (no tests/__init__.py); the repo root may not be
    from _s3server import s3_server  # noqa: F401 -- session fixture
except ImportError:  # pragma: no cover
    from tests._s3server import s3_server  # noqa: F401

SECRET = b"the host's private file -- never to be returned by a checkpoint"


@pytest.fixture(params=["local", "memory", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> tuple[str, dict[str, Any]]:
    unique = uuid.uuid4().hex[:12]
    if request.param == "local":
        return str(tmp_path / "store"), {}
    if request.param == "memory":
        return f"memory://flyte-ray-trust/{unique}", {}
    s3 = request.getfixturevalue("s3_server")
    return f"{s3['url']}/{unique}", dict(s3["options"])


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


def _vid(tag: str = "0badc0de") -> str:
    return f"{time.time_ns() + 10**9:020d}-{tag}"


def _secret_target(root: str, options: dict[str, Any], tmp_path: pathlib.Path) -> tuple[str, str]:
    """Plant the secret outside the checkpoint prefix; return (relative name from a version's
    data folder, absolute path or URL of it)."""
    if root.startswith("/"):
        secret = tmp_path / "outside" / "secret.txt"
        secret.parent.mkdir()
        secret.write_bytes(SECRET)
        return os.path.relpath(secret, f"{root}/cp/{'0' * 29}/data"), str(secret)
    ObjectStore(root, options).put_atomic("secret.txt", SECRET)
    return "../../../secret.txt", f"{root}/secret.txt"


def _marker(vid: str, **fields: Any) -> dict[str, Any]:
    m = {
        "format": layout.MARKER_FORMAT,
        "version": vid,
        "kind": "bytes",
        "name": "payload",
        "size": len(SECRET),
        "files": 1,
        "created": time.time(),
        "metadata": None,
    }
    for k, v in fields.items():
        if v is _DROP:
            m.pop(k)
        else:
            m[k] = v
    return m


_DROP = object()

# case -> how the planted marker differs from a good one ({"name": REL} / {"name": ABS}: the path
# to the secret, relative to the version's data folder, or absolute)
REL, ABS = "<relative path to the secret>", "<absolute path to the secret>"
BAD_MARKERS: dict[str, dict[str, Any]] = {
    "dotdot_name": {"name": REL},
    "absolute_name": {"name": ABS},
    "missing_name": {"name": _DROP},
    "null_name": {"name": None},
    "backslash_name": {"name": "..\\..\\secret.txt"},
    "dot_name": {"name": ".."},
    "marker_name": {"name": "_COMPLETE"},
    "long_name": {"name": "x" * 300},
    "negative_size": {"size": -1},
    "string_size": {"size": str(len(SECRET))},
    "bool_files": {"files": True},
    "float_size": {"size": float(len(SECRET))},
    "two_files_blob": {"files": 2},
    "missing_size": {"size": _DROP},
    "other_version": {"version": "00000000000000000001-00000000"},
    "unknown_kind": {"kind": "exec"},
    "old_format": {"format": 1},
    "bool_format": {"format": True},
    "string_created": {"created": "yesterday"},
    "dir_with_name": {"kind": "dir", "name": REL, "files": 1},
    "not_an_object": {"__raw__": b'["payload"]'},
    "deeply_nested": {"__raw__": b"[" * 100_000 + b"]" * 100_000},
}


def _plant(cp: Checkpoint, vid: str, case: str, rel: str, abs_path: str) -> None:
    store = ObjectStore(cp.url, cp.options)
    spec = dict(BAD_MARKERS[case])
    raw = spec.pop("__raw__", None)
    if raw is None:
        spec = {k: (rel if v == REL else abs_path if v == ABS else v) for k, v in spec.items()}
        raw = json.dumps(_marker(vid, **spec)).encode()
    # a payload of the claimed size where a well-formed marker would look for it
    store.put_atomic(f"{vid}/data/payload", SECRET)
    store.put_atomic(f"{vid}/_COMPLETE", raw)


@pytest.mark.parametrize("case", sorted(BAD_MARKERS))
def test_planted_marker_is_never_followed(
    backend: tuple[str, dict[str, Any]], tmp_path: pathlib.Path, case: str, logged: list[str]
) -> None:
    root, options = backend
    rel, abs_path = _secret_target(root, options, tmp_path)
    cp = Checkpoint(f"{root}/cp", options=options)
    cp.write(b"good")
    good = cp.latest()
    assert good is not None
    bad = _vid()
    _plant(cp, bad, case, rel, abs_path)
    for reader in (cp, Checkpoint(cp.url, options=options)):  # warm (knows "good") and fresh
        assert reader.read() == b"good"
        dest = tmp_path / f"r-{uuid.uuid4().hex[:6]}"
        out = reader.restore(dest)
        assert out is not None and out.read_bytes() == b"good"
        assert sorted(p.name for p in dest.iterdir()) == ["payload"]
        assert reader.latest() == good
        assert [m["version"] for m in reader.versions()] == [good["version"]]
        assert reader.prev_exists()
    # the secret was never touched, and nothing was written next to it
    if root.startswith("/"):
        assert pathlib.Path(abs_path).read_bytes() == SECRET
        assert sorted(p.name for p in pathlib.Path(abs_path).parent.iterdir()) == ["secret.txt"]
    warned = [m for m in logged if "marker is not valid" in m]
    assert warned and all(bad in w for w in warned)
    assert len(warned) == 2  # once per checkpoint object, not once per read


def test_missing_name_no_longer_breaks_every_restore(
    backend: tuple[str, dict[str, Any]], tmp_path: pathlib.Path
) -> None:
    """The marker of a bytes version without ``name`` (which used to raise KeyError on every
    restore of the call) is skipped; a later good save becomes the newest and prunes it."""
    root, options = backend
    cp = Checkpoint(f"{root}/cp", options=options)
    cp.write(b"one", metadata={"step": 1})
    bad = _vid()
    _plant(cp, bad, "missing_name", "", "")
    fresh = Checkpoint(cp.url, options=options)
    assert fresh.read() == b"one"
    assert fresh.latest()["metadata"] == {"step": 1}  # type: ignore[index]
    fresh.write(b"two")
    fresh.flush()
    assert Checkpoint(cp.url, options=options).read() == b"two"
    # the invalid version was older than the new save and counts as incomplete: pruned
    assert bad not in {k.split("/")[0].split(".")[0] for k in ObjectStore(cp.url, options).find("")}


def test_check_marker_accepts_what_saves_write() -> None:
    vid = _vid()
    for m in (
        layout.folder_marker(vid, "bytes", "model.bin", 10, 1, {"step": 3}),
        layout.folder_marker(vid, "dir", None, 0, 0, None),
        layout.folder_marker(vid, "dir", None, 5, 2, [1, "x", None]),
    ):
        checked = layout.check_marker(json.dumps(m).encode(), vid)
        assert checked == m
    # extra fields are dropped; readers add layout and url themselves
    m = dict(layout.folder_marker(vid, "bytes", "p", 1, 1, None), layout="object", url="s3://elsewhere/x")
    checked = layout.check_marker(json.dumps(m).encode(), vid)
    assert isinstance(checked, dict) and "layout" not in checked and "url" not in checked
    assert isinstance(layout.check_marker(b'{"created": NaN}', vid), str)
    nan = dict(layout.folder_marker(vid, "bytes", "p", 1, 1, None), created=float("nan"))
    assert layout.check_marker(json.dumps(nan).encode(), vid) == "created is not a number"
