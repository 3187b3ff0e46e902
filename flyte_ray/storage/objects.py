"""Object I/O over fsspec: :class:`ObjectStore`, one root URL and the operations flyte-ray needs.

Keys
----
A store is rooted at a URL; every operation takes a *key*, a ``/``-separated path relative to
that root (``""`` is the root itself). Keys are trusted: the store does not sanitise them, so
build them from constants and :func:`~flyte_ray.storage.keys.sanitize_component` (as
:meth:`Storage.key <flyte_ray.storage.location.Storage.key>` does). Listings return keys in the
same form.

Atomicity, per backend
----------------------
* ``get`` never returns a partial object on any backend: S3/GCS serve an object whole; a local
  file written by ``put_atomic`` appears only when complete.
* ``put_atomic`` -- one object, all or nothing. Object stores (S3, GCS): one PUT (a large one a
  multipart upload, which never becomes visible unless completed). Local folder: a temporary
  file in the same folder, then ``os.replace``. ``memory://``: a direct write (one process, no
  torn state to observe).
* ``create_if_absent`` -- at most one creator wins, and the object appears with its full content.
  Local folder: the data goes to a temporary file that is hard-linked (``os.link``) onto the key,
  which fails when the key exists. S3: one conditional PUT (``If-None-Match: *``, s3fs's
  ``mode="create"``; the same request ``fs.open(path, "xb")`` sends). Every other backend (and an
  S3 client too old to send the condition): check that the key is absent, write, wait 20 ms for
  a concurrent writer to land, read back and compare with the data written. That *narrows* the
  race, it does not close it: make the data unique to the caller (e.g. an owner id) so that the
  read-back tells writers apart. ``verify=True`` reads back on S3 as well, for S3-compatible
  servers that may ignore the condition.
* ``put_file``, ``put_files`` and :class:`Writer` uploads are atomic per object where
  :attr:`ObjectStore.atomic_writes` (S3): an object becomes visible whole or not at all (a killed
  upload, single PUT or multipart, never does; a discarded :class:`Writer` aborts its multipart
  upload). Elsewhere a reader may see a partial file while it is written: callers that need more
  commit with a small ``put_atomic`` marker written last.
* ``delete`` / ``delete_many`` / ``delete_tree`` are idempotent: a missing key is not an error
  (S3 does not report one anyway).
* ``list`` of a missing prefix is ``[]`` on every backend; listings bypass fsspec's listings cache,
  so other processes' writes are visible.

What is trusted: the keys (see above), and the backend's own promises (S3's atomic PUT and
conditional PUT, POSIX ``os.replace``/``os.link`` on one file system). Nothing else -- callers
that need integrity beyond that (sizes, markers) check it themselves.

S3 requests, per operation (s3fs adds none of its own HEADs or parent listings on these paths):

* ``get``: one GET (s3fs's ``cat_file`` would send a HEAD first).
* ``put_atomic``, ``put_file``: one PUT (or one multipart upload for large data).
* ``create_if_absent``: one conditional PUT (plus one GET with ``verify=True``).
* ``list``: one LIST (s3fs's ``ls`` of an empty prefix lists the parent too).
* ``get_file`` with a known ``size`` up to s3fs's block size (50 MiB): one GET read up to 4 MiB at
  a time; otherwise s3fs's ``get_file`` (HEAD, then GETs).
* ``delete``: one DELETE; ``delete_many``: one DeleteObjects per 1000 keys.
* ``fetch_while_listing``: one GET and one LIST, the LIST sent once the GET's response has begun.

Time limits
-----------
Every operation runs under a limit (:mod:`.limits`): ``timeout`` seconds, or by default (None)
the store's ``op_timeout`` plus the time to move the bytes at ``min_rate`` where the operation
knows them (``math.inf``: no limit). On async backends (s3fs, gcsfs) the operation runs on
fsspec's loop under ``asyncio.wait_for``; when the limit (or the client's own timeout) passes,
:class:`StorageTimeoutError` names the operation, the key and the URL, never credentials. By
default ``get`` on S3 limits each wait (the response, each 4 MiB read) rather than the transfer;
``get_file``/``get_files`` of unknown size beyond the single-GET path rely on the client's
timeouts and bounded retries. On S3, :meth:`~ObjectStore.open_writer` returns an
:class:`~._s3.S3Writer` (each request limited, its multipart upload aborted on failure);
uploads a killed process left are removed by :meth:`~ObjectStore.abort_stale_uploads`. Sync
backends (a local folder, ``memory://``) enforce no limit: their calls cannot be interrupted, and
a local disk does not stall like a network peer.

Threads and event loops: the methods block. An async caller runs them off its event loop unless
:attr:`ObjectStore.is_local` (a local folder answers in microseconds); never call them on
fsspec's own loop thread.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar, overload

import fsspec
import fsspec.asyn
from fsspec.spec import AbstractFileSystem

from ._helpers import Future as _Future
from ._helpers import gather_bounded as _gather_bounded
from ._helpers import left as _left
from ._helpers import silent_unlink as _silent_unlink
from ._helpers import write_beside as _write_beside
from ._s3 import S3Writer
from ._s3 import cat as _s3_cat
from ._s3 import fetch_while_listing as _s3_fetch_while_listing
from ._s3 import get_file as _s3_get_file
from ._s3 import lsdir as _s3_lsdir
from ._uploads import abort as _abort_uploads
from ._uploads import aborted_on_timeout as _aborted_on_timeout
from ._uploads import multipart_from as _multipart_from
from .keys import is_local_url, load_env_options, normalize_url
from .limits import DEFAULT_MIN_RATE, Expired, env_op_timeout, is_client_timeout, limited, redact_url, remaining
from .limits import with_client_defaults as _with_client_defaults
from .values import Entry, StorageTimeoutError, Writer

logger = logging.getLogger(__name__)

__all__ = ["Entry", "ObjectStore", "StorageTimeoutError", "Writer"]

T = TypeVar("T")

# Backends where writing one object is atomic -- it is either entirely there or absent, and a
# killed (multipart) upload never becomes visible. S3 (s3fs) only for now: GCS and Azure blobs
# have the same property but are not exercised by the tests here.
_ATOMIC_WRITE_PROTOCOLS = frozenset({"s3", "s3a"})
# Backends where a request does not cross the network.
_NEARBY_PROTOCOLS = frozenset({"file", "local", "memory"})
# create_if_absent without a server-side condition: how long to let a concurrent writer land
# before reading back (the same pause the cache's lease election has always used).
_SETTLE_S = 0.02
# Errors meaning "this client or server cannot send a conditional PUT" (s3fs or botocore too
# old): create_if_absent then falls back to write-and-read-back, for good on this store.
_NO_CONDITION = (ValueError, NotImplementedError, TypeError)


class ObjectStore:
    """Object I/O under one root URL (see the module docstring for the rules).

    Args:
        url: the root: any fsspec URL or local path (local paths are made absolute).
        options: fsspec storage options (default: ``$FLYTE_RAY_STORAGE_OPTIONS`` or ``{}``). The
            filesystem gets client timeouts and retry bounds on top of them where they do not set
            their own (:func:`~.limits.with_client_defaults`).
        op_timeout: the default limit of each operation in seconds, on top of moving its bytes at
            ``min_rate`` (None: ``$FLYTE_RAY_STORAGE_TIMEOUT``, else 60; ``math.inf``: no limit).
        min_rate: bytes per second a transfer of known size is allowed to slow down to.

    Picklable (the filesystem is rebuilt on first use after unpickling). ``repr`` shows the URL
    only: options may hold secrets.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        options: dict[str, Any] | None = None,
        *,
        op_timeout: float | None = None,
        min_rate: float = DEFAULT_MIN_RATE,
    ):
        self._url = normalize_url(url)
        self._options: dict[str, Any] = dict(options) if options is not None else load_env_options()
        self._op_timeout = float(op_timeout) if op_timeout is not None else env_op_timeout()
        if not self._op_timeout > 0:
            raise ValueError(f"op_timeout must be positive, got {op_timeout!r}")
        if not min_rate > 0:
            raise ValueError(f"min_rate must be positive, got {min_rate!r}")
        self._min_rate = float(min_rate)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._fs: AbstractFileSystem | None = None
        self._root = ""
        self._protocol = fsspec.utils.get_protocol(self._url)
        self._local = is_local_url(self._url)
        # Cleared when the S3 client or server turns out unable to send a conditional PUT.
        self._conditional = True

    @classmethod
    def of(cls, storage: Any, *parts: str) -> ObjectStore:
        """A store rooted at ``storage.prefix_url(*parts)`` with the storage's options (any
        :class:`~flyte_ray.storage.location.Storage`)."""
        return cls(storage.prefix_url(*parts) if parts else storage.url, storage.options)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._url, "options": self._options, "op_timeout": self._op_timeout, "min_rate": self._min_rate}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._url = state["url"]
        self._options = state["options"]
        self._op_timeout = state.get("op_timeout") or env_op_timeout()
        self._min_rate = state.get("min_rate") or DEFAULT_MIN_RATE
        self._init_runtime()

    def __repr__(self) -> str:
        return f"ObjectStore({self._url!r})"

    # ---- what this store is ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The root URL (local roots are absolute paths without ``file://``)."""
        return self._url

    @property
    def options(self) -> dict[str, Any]:
        """fsspec storage options as given (a copy; without the client defaults)."""
        return dict(self._options)

    @property
    def op_timeout(self) -> float:
        """The default limit of one operation, in seconds (``math.inf``: none)."""
        return self._op_timeout

    @property
    def min_rate(self) -> float:
        return self._min_rate

    @property
    def fs(self) -> AbstractFileSystem:
        """The fsspec filesystem (fsspec caches instances: equal URL and options share one)."""
        if self._fs is None:
            options = _with_client_defaults(self._protocol, self._options)
            fs, root = fsspec.core.url_to_fs(self._url, **options)
            self._root = root.rstrip("/")
            self._fs = fs
        return self._fs

    @property
    def root(self) -> str:
        """The root as a path of :attr:`fs` (no protocol)."""
        self.fs  # noqa: B018 -- sets _root
        return self._root

    @property
    def is_local(self) -> bool:
        """True for a local folder: operations are plain file calls, fast enough to run on an
        event loop thread; every other backend should be called off the loop."""
        return self._local

    @property
    def is_remote(self) -> bool:
        """True where a request costs a network round trip (not a local folder, not memory)."""
        return self._protocol not in _NEARBY_PROTOCOLS

    @property
    def atomic_writes(self) -> bool:
        """True where every write of one object (``put_file``, a committed :class:`Writer`) is
        all or nothing, so that one object can be its own commit point (S3)."""
        return self._protocol in _ATOMIC_WRITE_PROTOCOLS

    @property
    def is_s3(self) -> bool:
        """True when :attr:`fs` is s3fs: the S3 fast paths (module docstring) are used."""
        return self._protocol in _ATOMIC_WRITE_PROTOCOLS and hasattr(self.fs, "_call_s3")

    @property
    def single_get_max(self) -> int:
        """Largest object :meth:`get_file` fetches with one GET (s3fs's block size on S3, else 0)."""
        return int(getattr(self.fs, "default_block_size", 0) or 0) if self.is_s3 else 0

    def path(self, key: str) -> str:
        """The :attr:`fs` path of ``key``."""
        root = self.root
        return f"{root}/{key}" if key else (root or "/")

    def url_of(self, key: str) -> str:
        """The URL of ``key``."""
        return f"{self._url.rstrip('/')}/{key}" if key else self._url

    def _key_of(self, path: str) -> str:
        path = str(path).rstrip("/")
        root = self.root
        return path[len(root) + 1 :] if path.startswith(root + "/") else path.rsplit("/", 1)[-1]

    # ---- running a call under a time limit ------------------------------------------------

    def limit(self, timeout: float | None = None, nbytes: int = 0) -> float | None:
        """The limit of an operation moving ``nbytes``: ``timeout`` when given (``math.inf``:
        None, no limit), else the store's default (module docstring)."""
        if timeout is not None:
            return None if math.isinf(timeout) else timeout
        if math.isinf(self._op_timeout):
            return None
        return self._op_timeout + max(nbytes, 0) / self._min_rate

    def _stall(self, timeout: float | None) -> tuple[float | None, float | None]:
        """``(total, per wait)`` limits of a read of unknown size: the caller's ``timeout`` as a
        total, else the store's ``op_timeout`` on each wait."""
        if timeout is not None:
            return self.limit(timeout), None
        return None, self.limit()

    def _run(
        self, op: str, key: str, timeout: float | None, make: Callable[[], Awaitable[T]], stall: float | None = None
    ) -> T:
        """Run the coroutine ``make()`` on fsspec's loop under ``timeout`` (already resolved by
        :meth:`limit`; ``stall``: the per-wait limit ``make`` applies itself, for the message).
        Our limit or the client's own timeout raise StorageTimeoutError."""
        try:
            return fsspec.asyn.sync(self.fs.loop, limited, make, timeout)
        except Expired:
            shown = timeout if timeout is not None else stall
            raise StorageTimeoutError(op, key, shown, redact_url(self.url_of(key))) from None
        except StorageTimeoutError:
            raise
        except Exception as e:
            if is_client_timeout(e):
                raise StorageTimeoutError(op, key, timeout, redact_url(self.url_of(key)), type(e).__name__) from e
            raise

    def _call(self, op: str, key: str, timeout: float | None, method: str, *args: Any, **kwargs: Any) -> Any:
        """``fs.<method>(*args)``: its coroutine ``fs._<method>`` under the (resolved) limit on
        async backends, the plain (unlimited) call on sync ones."""
        fs = self.fs
        if getattr(fs, "async_impl", False):
            coro_fn = getattr(fs, "_" + method)
            return self._run(op, key, timeout, lambda: coro_fn(*args, **kwargs))
        return getattr(fs, method)(*args, **kwargs)

    # ---- single objects -------------------------------------------------------------------

    def get(self, key: str, *, timeout: float | None = None) -> bytes | None:
        """The whole content of ``key``, or None when it does not exist (S3: one GET)."""
        try:
            return self._get(key, timeout)
        except FileNotFoundError:
            return None

    def _get(self, key: str, timeout: float | None) -> bytes:
        path = self.path(key)
        if self._local:
            with open(path, "rb") as f:
                return f.read()
        total, stall = self._stall(timeout)
        if self.is_s3:
            return self._run("get", key, total, lambda: _s3_cat(self.fs, path, stall=stall), stall)
        return self._call("get", key, total if stall is None else stall, "cat_file", path)

    def put_atomic(self, key: str, data: bytes, *, timeout: float | None = None) -> None:
        """Write ``data`` as the whole of ``key``, replacing it; readers see the old or the new
        object, never a mix (S3: one PUT)."""
        path = self.path(key)
        if self._local:
            tmp = _write_beside(path, data)
            try:
                os.replace(tmp, path)
            except BaseException:
                _silent_unlink(tmp)
                raise
            return
        with _aborted_on_timeout(self, [key], len(data)):
            self._call("put_atomic", key, self.limit(timeout, len(data)), "pipe_file", path, data)

    def create_if_absent(self, key: str, data: bytes, *, verify: bool = False, timeout: float | None = None) -> bool:
        """Create ``key`` with ``data`` unless it exists; True when this call created it.

        See the module docstring for how exclusive this is per backend.
        """
        path = self.path(key)
        if self._local:
            tmp = _write_beside(path, data)
            try:
                os.link(tmp, path)  # fails if the key exists; it appears with its full content
                return True
            except FileExistsError:
                return False
            finally:
                _silent_unlink(tmp)
        limit = self.limit(timeout, len(data))
        deadline = None if limit is None else time.monotonic() + limit
        if self.is_s3 and self._conditional:
            fs: Any = self.fs
            try:
                # put_object with If-None-Match: * (a multipart upload carries it on complete).
                self._run("create_if_absent", key, limit, lambda: fs._pipe_file(path, data, mode="create"))
            except FileExistsError:
                return False
            except Exception as e:
                if not (isinstance(e, _NO_CONDITION) or type(e).__name__ == "ParamValidationError"):
                    raise
                logger.warning("%s: conditional PUT unavailable (%s); create_if_absent reads back instead", self, e)
                self._conditional = False
            else:
                return not verify or self.get(key, timeout=_left(deadline)) == data
        if self._call("create_if_absent", key, limit, "exists", path):
            return False
        self.put_atomic(key, data, timeout=_left(deadline))
        time.sleep(_SETTLE_S)  # let a concurrent writer land before reading back
        return self.get(key, timeout=_left(deadline)) == data

    def delete(self, key: str, *, timeout: float | None = None) -> None:
        """Delete one object; a missing one is not an error (S3: one DELETE)."""
        path = self.path(key)
        try:
            if self._local:
                os.unlink(path)
            else:
                self._call("delete", key, self.limit(timeout), "rm_file", path)
        except FileNotFoundError:
            pass

    def delete_many(self, keys: Sequence[str], *, timeout: float | None = None) -> None:
        """Delete objects; missing ones are not an error (S3: one DeleteObjects per 1000 keys)."""
        keys = list(keys)
        if not keys:
            return
        limit = self.limit(timeout)
        if self.is_s3:
            fs: Any = self.fs
            paths = [self.path(k) for k in keys]

            async def bulk() -> None:
                # Not fs._rm: it expands glob characters ("[", "*", "?") that keys may contain.
                await asyncio.gather(*(fs._bulk_delete(paths[i : i + 1000]) for i in range(0, len(paths), 1000)))

            self._run("delete_many", keys[0], limit, bulk)
            return
        fs = self.fs
        if not self._local and getattr(fs, "async_impl", False):

            async def each() -> None:
                async def one(path: str) -> None:
                    try:
                        await fs._rm_file(path)
                    except FileNotFoundError:
                        pass

                await asyncio.gather(*(one(self.path(k)) for k in keys))

            self._run("delete_many", keys[0], limit, each)
            return
        for k in keys:
            self.delete(k)  # sync backends: no limit to enforce

    def delete_tree(self, prefix: str, *, timeout: float | None = None) -> None:
        """Delete everything under ``prefix`` (and the folder itself); missing is not an error."""
        try:
            self._call("delete_tree", prefix, self.limit(timeout), "rm", self.path(prefix), recursive=True)
        except FileNotFoundError:
            pass

    # ---- listings -------------------------------------------------------------------------

    @overload
    def list(self, prefix: str = "", *, detail: Literal[False] = False, timeout: float | None = None) -> list[str]: ...

    @overload
    def list(self, prefix: str = "", *, detail: Literal[True], timeout: float | None = None) -> list[Entry]: ...

    def list(self, prefix: str = "", *, detail: bool = False, timeout: float | None = None) -> list[str] | list[Entry]:
        """The children of ``prefix`` (one level): keys, or :class:`Entry` with ``detail``.

        A missing prefix lists as ``[]``. One LIST on S3; fresh (no listings cache) everywhere.
        """
        path = self.path(prefix)
        fs = self.fs
        limit = self.limit(timeout)
        if self.is_s3:
            raw: builtins.list[Any] = self._run("list", prefix, limit, lambda: _s3_lsdir(fs, path))
            return self._entries(raw) if detail else [self._key_of(e["name"]) for e in raw]
        # Object-store filesystems cache listings; other processes' writes must be visible.
        fs.invalidate_cache(path)
        try:
            raw = self._call("list", prefix, limit, "ls", path, detail=detail)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return self._entries(raw) if detail else [self._key_of(p) for p in raw]

    def _entries(self, raw: builtins.list[Any]) -> builtins.list[Entry]:
        return [Entry(self._key_of(e["name"]), e.get("size"), e.get("type") == "directory") for e in raw]

    def find(self, prefix: str = "", *, timeout: float | None = None) -> builtins.list[str]:
        """Keys of every object under ``prefix``, recursively, sorted ([] when there is none)."""
        path = self.path(prefix)
        self.fs.invalidate_cache(path)
        try:
            found = self._call("find", prefix, self.limit(timeout), "find", path, withdirs=False, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(self._key_of(p) for p in found)

    # ---- files ----------------------------------------------------------------------------

    def get_file(
        self, key: str, lpath: str | os.PathLike[str], *, size: int | None = None, timeout: float | None = None
    ) -> None:
        """Download ``key`` to the local file ``lpath`` (FileNotFoundError when absent).

        ``size``: the object's size when the caller knows it (it also sizes the default limit);
        on S3 an object up to :attr:`single_get_max` is then fetched with one GET, read up to
        4 MiB at a time, and otherwise (or if that GET breaks) with s3fs's ``get_file``. On
        failure ``lpath`` may hold a partial file.
        """
        path, lpath = self.path(key), os.fspath(lpath)
        limit = self.limit(timeout, size or 0) if (size is not None or timeout is not None) else None
        if self.is_s3 and size is not None and size <= self.single_get_max:
            deadline = None if limit is None else time.monotonic() + limit
            fs = self.fs
            try:
                self._run("get_file", key, limit, lambda: _s3_get_file(fs, path, lpath))
                return
            except (FileNotFoundError, StorageTimeoutError):
                raise
            except Exception as e:  # noqa: BLE001 -- s3fs's get_file resumes broken reads
                logger.warning("single-GET download of %s failed (%s); retrying with get_file", path, e)
            limit = remaining(deadline)
        self._call("get_file", key, limit, "get_file", path, lpath)

    def put_file(self, lpath: str | os.PathLike[str], key: str, *, timeout: float | None = None) -> None:
        """Upload the local file ``lpath`` as ``key`` (S3: one PUT, or a multipart upload)."""
        path = self.path(key)
        if self._local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        size = os.path.getsize(lpath)
        with _aborted_on_timeout(self, [key], size):
            self._call("put_file", key, self.limit(timeout, size), "put_file", os.fspath(lpath), path)

    def get_files(
        self, keys: Sequence[str], lpaths: Sequence[str], *, size: int | None = None, timeout: float | None = None
    ) -> None:
        """Download each key to the local path at the same position (concurrently on async
        backends). The local folders must exist. ``size``: their total size when known (it
        sizes the default limit; without it only the client's timeouts bound a stall)."""
        if keys:
            limit = self.limit(timeout, size or 0) if (size is not None or timeout is not None) else None
            self._transfer("get_files", keys[0], limit, "get", [self.path(k) for k in keys], list(lpaths))

    def put_files(self, lpaths: Sequence[str], keys: Sequence[str], *, timeout: float | None = None) -> None:
        """Upload each local file as the key at the same position (concurrently on async
        backends)."""
        if not keys:
            return
        paths = [self.path(k) for k in keys]
        if self._local:
            for d in sorted({os.path.dirname(p) for p in paths}):
                os.makedirs(d, exist_ok=True)
        sizes = [os.path.getsize(lp) for lp in lpaths]
        big = [k for k, n in zip(keys, sizes) if n >= _multipart_from(self)]
        with _aborted_on_timeout(self, big, max(sizes, default=0)):
            self._transfer("put_files", keys[0], self.limit(timeout, sum(sizes)), "put", list(lpaths), paths)

    def _transfer(
        self, op: str, key: str, limit: float | None, method: str, src: builtins.list[str], dst: builtins.list[str]
    ) -> None:
        """``fs.get``/``fs.put`` of explicit lists (no glob expansion or trailing-slash rules);
        on async backends one ``_get_file``/``_put_file`` per pair, so that a time limit cancels
        them all."""
        fs: Any = self.fs
        if not getattr(fs, "async_impl", False):
            getattr(fs, method)(src, dst)
            return
        one = getattr(fs, f"_{method}_file")
        self._run(op, key, limit, lambda: _gather_bounded([functools.partial(one, a, b) for a, b in zip(src, dst)]))

    def open_writer(self, key: str) -> Writer:
        """A :class:`Writer` streaming into ``key``; on S3 each request runs under the store's
        limit for its bytes (module docstring)."""
        path = self.path(key)
        if self._local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        if self.is_s3:

            def run(op: str, timeout: float | None, make: Callable[[], Awaitable[Any]]) -> Any:
                return self._run(op, key, timeout, make)

            return S3Writer(self.fs, path, run, lambda n: self.limit(None, n), self.single_get_max)
        return Writer(self.fs.open(path, "wb"))

    # ---- multipart uploads left behind (S3) -----------------------------------------------

    def abort_stale_uploads(self, prefix: str = "", older_than: float = 3600.0) -> int:
        """Abort the multipart uploads under ``prefix`` started more than ``older_than`` seconds
        ago (by the server's clock against ours) -- what killed writers left behind; returns how
        many. Best-effort: failures are logged. S3 only; elsewhere 0 (nothing is left behind)."""
        return _abort_uploads(self, prefix, older_than=older_than) if self.is_s3 else 0

    # ---- a GET that overlaps a LIST -------------------------------------------------------

    def fetch_while_listing(
        self,
        key: str,
        prefix: str = "",
        *,
        lpath: str | os.PathLike[str] | None = None,
        size: int | None = None,
        timeout: float | None = None,
    ) -> tuple[bytes | None | BaseException, builtins.list[Entry] | BaseException]:
        """Fetch ``key`` (into ``lpath`` when given, else into memory) while listing ``prefix``.

        Returns ``(fetched, listing)``, each the result or the exception it raised (absent:
        FileNotFoundError); ``fetched`` is the bytes, or None once written to ``lpath``. For
        readers that guess which object they need and confirm the guess with the listing.

        On S3, for an object of known ``size`` up to :attr:`single_get_max`, both run on fsspec's
        loop: one GET, and one LIST sent once the GET's response has begun. Elsewhere the listing
        runs in a helper thread while the fetch runs in this one (:meth:`get_file` or
        :meth:`get`). ``timeout`` bounds the whole on S3 and each request elsewhere; it raises
        instead of being returned.
        """
        lp = os.fspath(lpath) if lpath is not None else None
        if self.is_s3 and size is not None and size <= self.single_get_max:
            fs, path, list_path = self.fs, self.path(key), self.path(prefix)
            got, raw = self._run(
                "fetch_while_listing",
                key,
                self.limit(timeout, size),
                lambda: _s3_fetch_while_listing(fs, path, lp, list_path),
            )
            return got, (raw if isinstance(raw, BaseException) else self._entries(raw))
        lister = _Future(lambda: self.list(prefix, detail=True, timeout=timeout), name="flyte-ray-storage-list")
        fetched: bytes | None | BaseException
        try:
            if lp is None:
                fetched = self._get(key, timeout)
            else:
                self.get_file(key, lp, size=size, timeout=timeout)
                fetched = None
        except StorageTimeoutError:
            lister.wait_quietly()
            raise
        except Exception as e:  # noqa: BLE001 -- handed to the caller
            fetched = e
        except BaseException:
            lister.wait_quietly()
            raise
        listing: builtins.list[Entry] | BaseException
        try:
            listing = lister.result()
        except StorageTimeoutError:
            raise
        except Exception as e:  # noqa: BLE001
            listing = e
        return fetched, listing
