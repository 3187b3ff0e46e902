"""Where :mod:`flyte_ray.io` keeps bytes, which store reads and writes a path, and how names from
storage become local paths.

Rules:

* The storage is the run's: ``ctx().settings`` inside a task, the driver's ``init`` settings
  outside one, resolved at each use (never kept in a File, Dir or DataFrame: its options may
  hold credentials). A Ray worker thread outside any task has neither, so it gets a clear error
  rather than silently another storage. A driver that has not called ``init`` uses the storage
  ``init()`` would choose (``$FLYTE_RAY_STORAGE``, else ``~/.flyte-ray/storage``).
* New objects go under ``<storage>/runs/<run>/io/<random>/<name>`` inside a task and
  ``<storage>/io/<random>/<name>`` outside one; ``<name>`` is sanitised into one key component.
* A path is read and written through an :class:`~flyte_ray.storage.ObjectStore` rooted beside
  it, with the storage's options when the path has the storage's protocol (one endpoint and
  account per protocol, as flyte-sdk assumes), none otherwise, and the storage's time limit.
* Names that come from storage (listing keys, a File's name) are untrusted: :func:`safe_parts`
  accepts only relative names made of ordinary components, and :func:`target_in` creates the
  folders below a download root without ever following a symlink.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

import fsspec.utils

from .._core.process import PROCESS
from .._core.settings import DriverSettings, Settings
from .._ray.waiting import is_worker
from ..context import ctx
from ..storage import ObjectStore
from ..storage.keys import normalize_url, sanitize_component
from ..storage.limits import redact_url

__all__ = [
    "IO_DIR",
    "check_name",
    "fs_call",
    "local_dest",
    "new_url",
    "safe_parts",
    "settings",
    "shown",
    "split",
    "store_at",
    "target_in",
    "to_url",
]

#: The folder of io objects, under a run's folder inside a task, under the root outside one.
IO_DIR = "io"


def settings() -> Settings:
    """The settings whose storage io uses here (see the module docstring)."""
    c = ctx()
    if c is not None and c.settings is not None:
        return c.settings
    driver = PROCESS.part(DriverSettings).value
    if driver is not None:
        return driver
    if is_worker():
        raise RuntimeError(
            "flyte_ray.io: this Ray worker thread runs outside any task (flyte_ray.ctx() is None), so the run's "
            "storage is unknown. Use File/Dir/DataFrame in the task's own thread, in asyncio.to_thread, or in a "
            "thread started with contextvars.copy_context().run."
        )
    return Settings()


def to_url(value: Any, arg: str) -> str:
    """``value`` (a str or path-like naming a local path or URL) in canonical form: local paths
    absolute (a worker may run in another folder), trailing slashes dropped."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise TypeError(
            f"{arg}: expected a local path or a URL (str or os.PathLike, e.g. '/data/x.csv' or "
            f"'s3://bucket/x.csv'), got {type(value).__name__} {value!r}"
        )
    return normalize_url(value)


def shown(url: str) -> str:
    """``url`` for messages and reprs: no credentials (user info, query)."""
    return redact_url(url)


def split(url: str) -> tuple[str, str]:
    """``(parent URL, last component)`` of ``url`` (``s3://b/x/y`` -> ``s3://b/x``, ``y``)."""
    head, sep, tail = url.rstrip("/").rpartition("/")
    if not sep or not tail or head.endswith(":/"):  # "x", "s3://bucket": no object below a root
        raise ValueError(f"{shown(url)!r} names no object (expected <folder or bucket>/<name>)")
    return head or "/", tail


def store_at(url: str) -> ObjectStore:
    """The store rooted at ``url`` (see the module docstring for its options and limit)."""
    storage = settings().storage
    same = fsspec.utils.get_protocol(url) == fsspec.utils.get_protocol(storage.url)
    return ObjectStore(url, storage.options if same else {}, op_timeout=storage.op_timeout)


def fs_call(store: ObjectStore, op: str, key: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """``store.fs.<method>(...)`` on ``key`` under the store's time limit (raising
    ``StorageTimeoutError``), for the operations ObjectStore has no method of its own for
    (``exists``, ``isdir``, ``info``): its one limited call path, not a second copy of it."""
    return store._call(op, key, store.limit(), method, store.path(key), *args, **kwargs)


def cache_key(content_hash: str | None, where: Any) -> str:
    """What identifies an io value in a cache key (``__flyte_ray_cache_key__``): its content
    hash when it has one (two uploads of the same content then share cached results, as
    flyte-sdk documents), else its location."""
    return "hash:" + content_hash if content_hash is not None else "at:" + str(where)


def new_url(name: str | None) -> str:
    """A fresh URL for a new object or folder called ``name`` (random when None)."""
    storage = settings().storage
    c = ctx()
    where = ("runs", c.run_name, IO_DIR) if c is not None else (IO_DIR,)
    leaf = sanitize_component(name) if name else uuid.uuid4().hex[:16]
    return f"{storage.prefix_url(*where, uuid.uuid4().hex)}/{leaf}"


def check_name(name: Any, arg: str) -> str:
    """``name`` if it is one plain file name (no separators, not ``.``/``..``), else ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"{arg}: expected a file name (str), got {type(name).__name__}")
    if safe_parts(name) != [name]:
        raise ValueError(f"{arg}: {name!r} is not a plain file name (no '/', '\\', NUL, '.' or '..')")
    return name


def safe_parts(name: str) -> list[str] | None:
    """The components of the relative name ``name`` (``/``-separated), or None when any would
    leave the folder it is joined to: an absolute name, an empty, ``.`` or ``..`` component, a
    NUL, or a separator of this OS other than ``/``."""
    if not name or "\x00" in name:
        return None
    parts = name.split("/")
    for p in parts:
        if p in ("", ".", "..") or os.path.isabs(p) or os.sep in p or (os.altsep and os.altsep in p):
            return None
        if os.path.splitdrive(p)[0]:  # "C:x" on Windows
            return None
    return parts


def target_in(root: str, parts: list[str]) -> str:
    """The local path of ``parts`` under the folder ``root``, creating the folders between. A
    component that exists as a symlink or as a file is refused (ValueError), so nothing is ever
    written outside ``root``, whatever the names or what is already there."""
    d = root
    for p in parts[:-1]:
        d = os.path.join(d, p)
        if os.path.islink(d):
            raise ValueError(f"download: {d!r} is a symlink; refusing to write through it")
        if not os.path.isdir(d):
            if os.path.lexists(d):
                raise ValueError(f"download: {d!r} exists and is not a folder")
            os.mkdir(d)
    target = os.path.join(d, parts[-1])
    if os.path.isdir(target) and not os.path.islink(target):
        raise ValueError(f"download: {target!r} is a folder, where a file of the same name was to go")
    return target


def local_dest(local_path: Any, leaf: str) -> str:
    """Where a download goes: ``local_path`` itself, or ``<local_path>/<leaf>`` when it ends with
    a separator or is an existing folder; a new temporary folder holding ``leaf`` when None."""
    if local_path is None:
        return os.path.join(tempfile.mkdtemp(prefix="flyte-ray-io-"), leaf)
    if isinstance(local_path, os.PathLike):
        local_path = os.fspath(local_path)
    if not isinstance(local_path, str) or not local_path:
        raise TypeError(f"local_path: expected a local path (str or os.PathLike) or None, got {local_path!r}")
    into = local_path.endswith(os.sep) or (os.altsep is not None and local_path.endswith(os.altsep))
    path = os.path.abspath(os.path.expanduser(local_path))
    return os.path.join(path, leaf) if into or os.path.isdir(path) else path
