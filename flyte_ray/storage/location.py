"""Where flyte-ray keeps its durable data: :class:`Storage`, a root URL plus fsspec options.

Rules:

* The root is any fsspec URL or local path; local paths are made absolute, trailing slashes
  dropped. Without one, ``$FLYTE_RAY_STORAGE`` is used, else ``~/.flyte-ray/storage``.
* Options default to the JSON object in ``$FLYTE_RAY_STORAGE_OPTIONS`` (else ``{}``). They may
  hold secrets: ``repr`` shows only their keys, never their values.
* Every key built here from user-supplied names goes through
  :func:`~flyte_ray.storage.keys.sanitize_component`, so it cannot leave the root.
* Picklable (it travels to Ray workers): the filesystem object is not pickled but rebuilt on
  first use.

Object I/O itself lives in :class:`~flyte_ray.storage.objects.ObjectStore`: :attr:`Storage.store`
is the one rooted here (keys from :meth:`Storage.key`), ``ObjectStore.of(storage, *parts)`` one
rooted further down.
"""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from .keys import (
    DEFAULT_STORAGE_DIR,
    ENV_STORAGE,
    is_local_url,
    join,
    load_env_options,
    normalize_url,
    sanitize_component,
    sanitize_path,
)
from .objects import ObjectStore

__all__ = ["Storage"]


class Storage:
    """Root location for flyte-ray's durable data (checkpoints, the task-output cache).

    Args:
        url: Any fsspec URL or local path (``s3://bucket/prefix``, ``gs://...``,
            ``memory://...``, ``/tmp/x``, ``file:///tmp/x``). Defaults to ``$FLYTE_RAY_STORAGE``,
            else ``~/.flyte-ray/storage``. Local paths are made absolute.
        options: fsspec storage options (e.g. ``{"endpoint_url": ..., "key": ..., "secret": ...}``
            for S3). Defaults to the JSON object in ``$FLYTE_RAY_STORAGE_OPTIONS``, else ``{}``.
        op_timeout: the time limit of each storage operation in seconds, on top of the time to
            move its bytes (None: ``$FLYTE_RAY_STORAGE_TIMEOUT``, else 60); it travels with the
            storage to every worker (``flyte_ray.init(storage_timeout=...)``).

    Picklable: the filesystem object is not pickled but rebuilt lazily on first use, because
    storage objects travel to Ray workers.
    """

    __slots__ = ("_fs", "_op_timeout", "_options", "_store", "_url")

    def __init__(
        self,
        url: str | os.PathLike[str] | None = None,
        options: dict[str, Any] | None = None,
        op_timeout: float | None = None,
    ):
        if url is None:
            url = os.environ.get(ENV_STORAGE) or DEFAULT_STORAGE_DIR
        self._url = normalize_url(url)
        self._options: dict[str, Any] = dict(options) if options is not None else load_env_options()
        self._op_timeout = op_timeout
        self._fs: AbstractFileSystem | None = None
        self._store: ObjectStore | None = None

    @property
    def url(self) -> str:
        """Root URL (local paths are absolute paths without ``file://``)."""
        return self._url

    @property
    def options(self) -> dict[str, Any]:
        """fsspec storage options (a copy)."""
        return dict(self._options)

    @property
    def op_timeout(self) -> float | None:
        """The per-operation time limit given to this storage (None: the store's default)."""
        return self._op_timeout

    @property
    def is_local(self) -> bool:
        """True for plain paths and ``file://`` URLs (not visible to other machines)."""
        return is_local_url(self._url)

    @property
    def fs(self) -> AbstractFileSystem:
        """The fsspec filesystem for :attr:`url` (cached, rebuilt after unpickling)."""
        if self._fs is None:
            self._fs, _ = fsspec.core.url_to_fs(self._url, **self._options)
        return self._fs

    @property
    def store(self) -> ObjectStore:
        """The :class:`ObjectStore` rooted at :attr:`url` (cached, rebuilt after unpickling);
        address objects in it with :meth:`key`."""
        if self._store is None:
            self._store = ObjectStore(self._url, self._options, op_timeout=self._op_timeout)
        return self._store

    def key(self, *parts: str) -> str:
        """The sanitised key ``<part>/<part>/...`` relative to the root (``""`` for no parts);
        each part may use ``/`` for hierarchy."""
        comps: list[str] = []
        for p in parts:
            comps.extend(sanitize_path(p))
        return "/".join(comps)

    def prefix_url(self, *parts: str) -> str:
        """``<root>/<part>/<part>...``; each part may use ``/`` for hierarchy and is sanitised."""
        comps: list[str] = []
        for p in parts:
            comps.extend(sanitize_path(p))
        return join(self._url, *comps)

    def checkpoint_url(self, run_name: str, fqn: str, call_id: str) -> str:
        """Prefix for one task call's checkpoints: ``<root>/checkpoints/<run>/<fqn>/<call_id>``.

        ``run_name`` and ``fqn`` are single components (a ``/`` in them is encoded);
        ``call_id`` may contain ``/`` to express parent/child hierarchy.
        """
        return join(
            self._url,
            "checkpoints",
            sanitize_component(run_name),
            sanitize_component(fqn),
            *sanitize_path(call_id),
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._url, "options": self._options, "op_timeout": self._op_timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._url = state["url"]
        self._options = state["options"]
        self._op_timeout = state.get("op_timeout")
        self._fs = None
        self._store = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Storage):
            return NotImplemented
        return self._url == other._url and self._options == other._options

    def __hash__(self) -> int:
        return hash(self._url)

    def __repr__(self) -> str:
        # Options may hold secrets: show only their keys.
        return f"Storage({self._url!r}, options_keys={sorted(self._options)})"
