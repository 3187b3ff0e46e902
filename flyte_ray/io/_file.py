"""``File``: a reference to one object in storage, flyte-sdk's ``flyte.io.File``.

Rules (the package docstring has the ones File, Dir and DataFrame share):

* A File is its path (a URL, or an absolute local path), its name (default: the path's last
  component), a format and an optional cache key (``hash``). Nothing else: it pickles small and
  carries no handle and no storage options.
* ``open("wb")`` / ``open_sync("wb")`` publish the object only when the block exits without an
  error; an error discards it (S3: the multipart upload is aborted; a local folder: a temporary
  file beside the target is removed). Readers never see a partial object written this way.
* ``open`` is the async form: its handle's ``read``/``write`` are coroutines. A ``write`` that was
  never awaited is an error at the end of the block (and nothing is published), never lost
  bytes: code that writes synchronously (``df.to_csv(fh)``) belongs in ``open_sync``.
* ``download`` writes to a temporary name beside the target and renames it into place, so a
  failed download leaves no partial file under the target's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, Any, Generic, Optional, TypeVar

from ..storage import ObjectStore, Writer
from ..storage.keys import sanitize_component
from ._where import cache_key, check_name, fs_call, local_dest, new_url, safe_parts, shown, split, store_at, to_url

__all__ = ["AsyncFile", "File"]

T = TypeVar("T")

_READ_MODES = ("rb", "r", "rt")
_WRITE_MODES = ("wb", "w", "wt")
_TEXT_KWARGS = ("encoding", "errors", "newline")
# Buffer in front of the store's writer: a stream of small writes (CSV rows) costs one call to
# the writer per MiB, not one per row.
_WRITE_BUFFER = 2**20


@dataclass(repr=False, slots=True)
class File(Generic[T]):
    """A file in storage (flyte-sdk's ``flyte.io.File``): pass it between tasks, read it with
    ``open``/``download``, make one with ``from_local`` or ``new_remote``.

    Methods come in pairs: ``x()`` is async (await it), ``x_sync()`` blocks -- ``open``/
    ``open_sync``, ``download``/``download_sync``, ``exists``/``exists_sync``,
    ``from_local``/``from_local_sync``. ``from_existing_remote`` and ``new_remote`` only build the
    reference. New objects go under the run's storage (``flyte_ray.init(storage=...)``):
    ``<storage>/runs/<run>/io/...`` inside a task, ``<storage>/io/...`` outside one.

    Args:
        path: the object's URL or local path (local paths are made absolute).
        name: its name; default: the path's last component.
        format: a free-form format tag (flyte-sdk's ``File[T]`` format), kept as given.
        hash: a cache key for this file's content, kept as given.
    """

    path: str
    name: Optional[str] = None
    format: str = ""
    hash: Optional[str] = None

    def __post_init__(self) -> None:
        self.path = to_url(self.path, "File.path")
        if self.name is None:
            self.name = self.path.rstrip("/").rsplit("/", 1)[-1]
        if not isinstance(self.name, str):
            raise TypeError(f"File.name: expected a str or None, got {type(self.name).__name__}")
        if not isinstance(self.format, str):
            raise TypeError(f"File.format: expected a str, got {type(self.format).__name__}")
        if self.hash is not None and not isinstance(self.hash, str):
            raise TypeError(f"File.hash: expected a str or None, got {type(self.hash).__name__}")

    def __flyte_ray_cache_key__(self) -> str:
        """Its content hash when it has one, else its location (:func:`._where.cache_key`)."""
        return cache_key(self.hash, self.path)

    def __repr__(self) -> str:
        return f"File(path={shown(self.path)!r}, name={self.name!r})"

    # ---- making references ------------------------------------------------------------------

    @classmethod
    def from_existing_remote(cls, remote_path: str, file_cache_key: Optional[str] = None) -> File[T]:
        """A reference to an object that already exists (nothing is read or copied)."""
        return cls(path=to_url(remote_path, "remote_path"), hash=file_cache_key)

    @classmethod
    def new_remote(cls, file_name: Optional[str] = None, hash_method: Optional[str] = None) -> File[T]:
        """A reference to a new object in the run's storage, to write with ``open("wb")``.

        Args:
            file_name: its name (one plain file name); default: a random one.
            hash_method: a precomputed cache key (str) for its content.
        """
        if file_name is not None:
            check_name(file_name, "file_name")
        return cls(path=new_url(file_name), name=file_name, hash=_cache_key(hash_method))

    @classmethod
    def from_local_sync(
        cls, local_path: str | os.PathLike[str], remote_destination: Optional[str] = None, hash_method: Any = None
    ) -> File[T]:
        """Upload a local file and return its File (blocking form of :meth:`from_local`).

        Args:
            local_path: an existing local file.
            remote_destination: where to put it (a URL or local path; one ending with ``/`` is a
                folder to put it in); default: a new object in the run's storage.
            hash_method: a precomputed cache key (str) for its content.
        """
        src = _local_file(local_path)
        key = _cache_key(hash_method)
        leaf = os.path.basename(src)
        if remote_destination is None:
            dest = new_url(leaf)
        else:
            into = isinstance(remote_destination, str) and remote_destination.endswith("/")
            dest = to_url(remote_destination, "remote_destination")
            if into:
                dest = f"{dest}/{sanitize_component(leaf)}"
        parent, obj = split(dest)
        store = store_at(parent)
        store.put_file(src, obj)
        return cls(path=store.url_of(obj), name=leaf, hash=key)

    @classmethod
    async def from_local(
        cls, local_path: str | os.PathLike[str], remote_destination: Optional[str] = None, hash_method: Any = None
    ) -> File[T]:
        """Upload a local file and return its File (see :meth:`from_local_sync`)."""
        return await asyncio.to_thread(cls.from_local_sync, local_path, remote_destination, hash_method)

    # ---- reading and writing ----------------------------------------------------------------

    def _where(self) -> tuple[ObjectStore, str]:
        parent, key = split(self.path)
        return store_at(parent), key

    def exists_sync(self) -> bool:
        """Whether the object exists."""
        store, key = self._where()
        return bool(fs_call(store, "exists", key, "exists"))

    async def exists(self) -> bool:
        """Whether the object exists (async form of :meth:`exists_sync`)."""
        return await asyncio.to_thread(self.exists_sync)

    @contextlib.contextmanager
    def open_sync(
        self,
        mode: str = "rb",
        block_size: Optional[int] = None,
        cache_type: str = "readahead",
        cache_options: Optional[dict] = None,
        compression: Optional[str] = None,
        **kwargs: Any,
    ) -> Iterator[IO[Any]]:
        """Open the object: ``"rb"``/``"r"``/``"rt"`` stream it, ``"wb"``/``"w"``/``"wt"`` write
        it, published when the block exits cleanly (module docstring). Text modes take
        ``encoding`` (default UTF-8), ``errors``, ``newline``; ``block_size``, ``cache_type``
        and ``cache_options`` tune remote reads (fsspec's meanings)."""
        f, finish = self._open(mode, block_size, cache_type, cache_options, compression, kwargs)
        ok = False
        try:
            yield f
            ok = True
        finally:
            finish(ok)

    @contextlib.asynccontextmanager
    async def open(
        self,
        mode: str = "rb",
        block_size: Optional[int] = None,
        cache_type: str = "readahead",
        cache_options: Optional[dict] = None,
        compression: Optional[str] = None,
        **kwargs: Any,
    ) -> AsyncIterator[AsyncFile]:
        """``async with f.open(mode) as fh``: ``await fh.read()``, ``await fh.write(data)``
        (see :meth:`open_sync` for the modes and options)."""
        f, finish = await asyncio.to_thread(
            self._open, mode, block_size, cache_type, cache_options, compression, kwargs
        )
        handle = AsyncFile(f)
        ok = False
        try:
            yield handle
            ok = handle._check_writes()
        finally:
            await asyncio.to_thread(finish, ok)

    def _open(
        self,
        mode: str,
        block_size: Optional[int],
        cache_type: str,
        cache_options: Optional[dict],
        compression: Optional[str],
        kwargs: dict[str, Any],
    ) -> tuple[IO[Any], Any]:
        """The handle for ``mode`` and ``finish(ok)``, which closes it (publishing a write only
        when ``ok``)."""
        if mode not in _READ_MODES + _WRITE_MODES:
            raise ValueError(f"File.open: mode {mode!r} is not supported; use one of {_READ_MODES + _WRITE_MODES}")
        if compression is not None:
            raise ValueError(f"File.open: compression={compression!r} is not supported; (de)compress the stream")
        text = "b" not in mode
        unknown = sorted(k for k in kwargs if not (text and k in _TEXT_KWARGS))
        if unknown:
            accepted = "encoding, errors, newline (text modes only)"
            raise TypeError(f"File.open: unexpected keyword arguments {unknown}; accepted: {accepted}")
        encoding, errors, newline = kwargs.get("encoding") or "utf-8", kwargs.get("errors"), kwargs.get("newline")
        store, key = self._where()
        if mode in _READ_MODES:
            raw = _reader(store, key, self.path, block_size, cache_type, cache_options)
            f: IO[Any] = io.TextIOWrapper(raw, encoding, errors, newline) if text else raw

            def finish_read(ok: bool) -> None:
                f.close()

            return f, finish_read
        writer = _LocalWriter(store.path(key)) if store.is_local else store.open_writer(key)
        buffered = io.BufferedWriter(_WriterIO(writer), buffer_size=_WRITE_BUFFER)
        out: IO[Any] = io.TextIOWrapper(buffered, encoding, errors, newline) if text else buffered

        def finish_write(ok: bool) -> None:
            try:
                if ok:
                    out.flush()  # text -> buffer -> writer
                    writer.commit()
            finally:
                writer.discard()  # no-op after a commit
                with contextlib.suppress(Exception):
                    out.close()

        return out, finish_write

    def download_sync(self, local_path: Optional[str | os.PathLike[str]] = None) -> str:
        """Download the object; returns the local path. ``local_path``: the file to write, or a
        folder to put it in (an existing one, or a path ending with a separator); default: a new
        temporary folder."""
        leaf = self.name or ""
        if safe_parts(leaf) != [leaf]:
            raise ValueError(f"File.download: the name {leaf!r} is not a plain file name; pass local_path")
        target = local_dest(local_path, leaf)
        store, key = self._where()
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fetch_to(store, key, target, self.path)
        return target

    async def download(self, local_path: Optional[str | os.PathLike[str]] = None) -> str:
        """Download the object; returns the local path (see :meth:`download_sync`)."""
        return await asyncio.to_thread(self.download_sync, local_path)


class AsyncFile:
    """The handle of ``File.open``: the file's methods as coroutines (each runs in a worker
    thread, since storage calls block). ``async for line in fh`` reads lines."""

    def __init__(self, f: IO[Any]):
        self._f = f
        self._unawaited = 0  # write() calls whose coroutine has not finished

    async def read(self, size: int = -1) -> Any:
        return await asyncio.to_thread(self._f.read, size)

    async def readline(self, size: int = -1) -> Any:
        return await asyncio.to_thread(self._f.readline, size)

    async def readlines(self, hint: int = -1) -> list:
        return await asyncio.to_thread(self._f.readlines, hint)

    def write(self, data: Any) -> Any:
        self._unawaited += 1
        return self._write(data)

    async def _write(self, data: Any) -> int:
        try:
            return await asyncio.to_thread(self._f.write, data)
        finally:
            self._unawaited -= 1

    async def flush(self) -> None:
        await asyncio.to_thread(self._f.flush)

    async def seek(self, offset: int, whence: int = 0) -> int:
        return await asyncio.to_thread(self._f.seek, offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readable(self) -> bool:
        return self._f.readable()

    def writable(self) -> bool:
        return self._f.writable()

    def __aiter__(self) -> AsyncFile:
        return self

    async def __anext__(self) -> Any:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    def _check_writes(self) -> bool:
        if self._unawaited:
            raise RuntimeError(
                f"File.open: {self._unawaited} write() call(s) were never awaited, so the object was not "
                "published; use `await fh.write(...)`, or File.open_sync for code that writes synchronously"
            )
        return True


# ---- helpers shared with Dir ----------------------------------------------------------------


def fetch_to(store: ObjectStore, key: str, target: str, shown_path: str) -> None:
    """Download ``key`` to ``target`` through a temporary name beside it (no partial file under
    the target's name, and a symlink at the target is replaced, never followed)."""
    tmp = f"{target}.part-{uuid.uuid4().hex[:8]}"
    try:
        store.get_file(key, tmp)
        os.replace(tmp, target)
    except FileNotFoundError:
        raise FileNotFoundError(f"{shown(shown_path)} does not exist") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _reader(
    store: ObjectStore,
    key: str,
    path: str,
    block_size: Optional[int],
    cache_type: str,
    cache_options: Optional[dict],
) -> IO[bytes]:
    try:
        if store.is_local:
            return open(store.path(key), "rb")  # noqa: SIM115 -- closed by the caller's finish
        # A streamed read has no operation of the store's: each request runs under the storage
        # client's own connect/read timeouts and bounded retries (the store's fs sets them).
        opts: dict[str, Any] = {"cache_type": cache_type, "cache_options": cache_options or {}}
        if block_size:
            opts["block_size"] = block_size
        return store.fs.open(store.path(key), "rb", **opts)
    except FileNotFoundError:
        raise FileNotFoundError(f"{shown(path)} does not exist") from None


def _local_file(local_path: Any) -> str:
    src = to_url(local_path, "local_path")
    if "://" in src:
        raise ValueError(f"local_path: expected a local file, got the URL {shown(src)!r}")
    if os.path.isdir(src):
        raise ValueError(f"local_path: {src!r} is a folder; use Dir.from_local for folders")
    if not os.path.isfile(src):
        raise ValueError(f"local_path: {src!r} does not exist (expected an existing local file)")
    return src


def _cache_key(hash_method: Any) -> Optional[str]:
    if hash_method is None or isinstance(hash_method, str):
        return hash_method
    raise TypeError(
        f"hash_method: flyte_ray.io takes a precomputed cache key (str) or None, got {type(hash_method).__name__}"
    )


class _WriterIO(io.RawIOBase):
    """A store :class:`~flyte_ray.storage.Writer` as a raw binary stream (closing it publishes
    nothing: the File's ``finish`` commits or discards)."""

    mode = "wb"

    def __init__(self, writer: Writer):
        super().__init__()
        self._writer = writer

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._writer.write(data)
        return len(data)


class _LocalWriter(Writer):
    """A local file written whole or not at all: a temporary file beside the target, renamed onto
    it on commit, removed on discard (the store's local writer writes in place)."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._path = path
        self._tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        super().__init__(open(self._tmp, "wb"))  # noqa: SIM115 -- closed by commit/discard

    def _finish(self) -> None:
        super()._finish()
        os.replace(self._tmp, self._path)

    def _abandon(self) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):
                self._f.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)
