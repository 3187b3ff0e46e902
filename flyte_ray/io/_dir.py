"""``Dir``: a reference to a folder of objects in storage, flyte-sdk's ``flyte.io.Dir``.

Rules (the package docstring has the ones File, Dir and DataFrame share):

* A Dir is its path, name, format and optional cache key, like a File. On an object store a
  folder is the objects under its prefix: an empty folder uploads nothing, and does not exist
  there afterwards.
* Symlinks are never followed, on either side: ``from_local`` and a Dir on a local path skip
  them (with a warning) rather than upload or copy what they point to.
* ``download`` treats the listing as untrusted. Every name must be relative and made of ordinary
  components (no ``..``, ``.``, empty or absolute parts), no name may be both a file and a
  folder, and the check covers the whole listing before the first byte is written: a hostile
  listing fails the download with ValueError and writes nothing. Folders under the target are
  created one component at a time and an existing symlink or file among them is refused, so
  nothing is written outside the target folder, whatever was there before.
* ``walk(recursive=False)`` and ``list_files`` list the top-level files only, as flyte-sdk
  documents (its code also descends one level).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Generic, Optional, TypeVar

from ..storage import ObjectStore
from ._file import File
from ._where import cache_key, fs_call, local_dest, new_url, safe_parts, shown, store_at, target_in, to_url

__all__ = ["Dir"]

logger = logging.getLogger("flyte_ray")

T = TypeVar("T")


@dataclass(repr=False, slots=True)
class Dir(Generic[T]):
    """A folder in storage (flyte-sdk's ``flyte.io.Dir``): pass it between tasks, list it with
    ``walk``/``list_files``/``get_file``, fetch it with ``download``, make one with ``from_local``.

    Methods come in pairs: ``x()`` is async, ``x_sync()`` blocks -- ``walk``/``walk_sync``,
    ``list_files``/``list_files_sync``, ``get_file``/``get_file_sync``, ``download``/
    ``download_sync``, ``exists``/``exists_sync``, ``from_local``/``from_local_sync``.

    Args:
        path: the folder's URL or local path (local paths are made absolute).
        name: its name; default: the path's last component.
        format: a free-form format tag, kept as given.
        hash: a cache key for the folder's content, kept as given.
    """

    path: str
    name: Optional[str] = None
    format: str = ""
    hash: Optional[str] = None

    def __post_init__(self) -> None:
        self.path = to_url(self.path, "Dir.path")
        if self.name is None:
            self.name = self.path.rstrip("/").rsplit("/", 1)[-1]
        if not isinstance(self.name, str):
            raise TypeError(f"Dir.name: expected a str or None, got {type(self.name).__name__}")
        if not isinstance(self.format, str):
            raise TypeError(f"Dir.format: expected a str, got {type(self.format).__name__}")
        if self.hash is not None and not isinstance(self.hash, str):
            raise TypeError(f"Dir.hash: expected a str or None, got {type(self.hash).__name__}")

    def __flyte_ray_cache_key__(self) -> str:
        """Its content hash when it has one, else its location (:func:`._where.cache_key`)."""
        return cache_key(self.hash, self.path)

    def __repr__(self) -> str:
        return f"Dir(path={shown(self.path)!r}, name={self.name!r})"

    # ---- making references ------------------------------------------------------------------

    @classmethod
    def from_existing_remote(cls, remote_path: str, dir_cache_key: Optional[str] = None) -> Dir[T]:
        """A reference to a folder that already exists (nothing is read or copied)."""
        return cls(path=to_url(remote_path, "remote_path"), hash=dir_cache_key)

    @classmethod
    def from_local_sync(
        cls,
        local_path: str | os.PathLike[str],
        remote_destination: Optional[str] = None,
        dir_cache_key: Optional[str] = None,
        batch_size: Optional[int] = None,
    ) -> Dir[T]:
        """Upload a local folder, subfolders included, and return its Dir (blocking form of
        :meth:`from_local`).

        Args:
            local_path: an existing local folder.
            remote_destination: the folder to upload into (URL or local path); default: a new
                folder in the run's storage.
            dir_cache_key: a precomputed cache key (str) for the folder's content.
            batch_size: accepted for flyte-sdk's signature (a positive int); the store bounds
                its concurrent transfers itself.
        """
        src = to_url(local_path, "local_path")
        if "://" in src or not os.path.isdir(src):
            what = "a file" if os.path.isfile(src) else "missing"
            if "://" in src:
                what = "a URL"
            raise ValueError(
                f"local_path: {shown(src)!r} is {what}; expected an existing local folder "
                "(File.from_local uploads a single file)"
            )
        if dir_cache_key is not None and not isinstance(dir_cache_key, str):
            raise TypeError(f"dir_cache_key: expected a str or None, got {type(dir_cache_key).__name__}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
        name = os.path.basename(src)
        if remote_destination is None:
            dest = new_url(name)
        else:
            dest = to_url(remote_destination, "remote_destination")
        files = _local_files(src)
        store = store_at(dest)
        store.put_files([os.path.join(src, *k.split("/")) for k in files], files)
        return cls(path=store.url, name=name, hash=dir_cache_key)

    @classmethod
    async def from_local(
        cls,
        local_path: str | os.PathLike[str],
        remote_destination: Optional[str] = None,
        dir_cache_key: Optional[str] = None,
        batch_size: Optional[int] = None,
    ) -> Dir[T]:
        """Upload a local folder and return its Dir (see :meth:`from_local_sync`)."""
        return await asyncio.to_thread(cls.from_local_sync, local_path, remote_destination, dir_cache_key, batch_size)

    # ---- listing ----------------------------------------------------------------------------

    def _store(self) -> ObjectStore:
        return store_at(self.path)

    def _keys(self, store: ObjectStore) -> list[str]:
        """Keys of every file below the folder (sorted; [] when it is not a folder)."""
        if store.is_local:
            return _local_files(store.url) if os.path.isdir(store.url) else []
        if not fs_call(store, "isdir", "", "isdir"):
            return []  # a file, or nothing: no walking (as in flyte-sdk)
        return [k for k in store.find("") if k]

    def _files(self, recursive: bool, max_depth: Optional[int], file_pattern: str) -> list[File[T]]:
        if max_depth is not None and (not isinstance(max_depth, int) or max_depth < 1):
            raise ValueError(f"max_depth: expected a positive int or None, got {max_depth!r}")
        if not isinstance(file_pattern, str):
            raise TypeError(f"file_pattern: expected a glob pattern (str), got {type(file_pattern).__name__}")
        depth = 1 if not recursive else max_depth
        store = self._store()
        out: list[File[T]] = []
        for key in self._keys(store):
            parts = key.split("/")
            if depth is not None and len(parts) > depth:
                continue
            if fnmatch.fnmatchcase(parts[-1], file_pattern):
                out.append(File(path=store.url_of(key), name=parts[-1]))
        return out

    def walk_sync(
        self, recursive: bool = True, file_pattern: str = "*", max_depth: Optional[int] = None
    ) -> Iterator[File[T]]:
        """The files below the folder, in key order. ``recursive=False``: the top level only;
        ``max_depth``: at most that many levels (1 = the top level); ``file_pattern``: a glob
        the file's name must match."""
        yield from self._files(recursive, max_depth, file_pattern)

    async def walk(
        self, recursive: bool = True, max_depth: Optional[int] = None, file_pattern: str = "*"
    ) -> AsyncIterator[File[T]]:
        """``async for f in d.walk()``: the files below the folder (see :meth:`walk_sync`)."""
        for f in await asyncio.to_thread(self._files, recursive, max_depth, file_pattern):
            yield f

    def list_files_sync(self) -> list[File[T]]:
        """The files at the folder's top level."""
        return self._files(False, None, "*")

    async def list_files(self) -> list[File[T]]:
        """The files at the folder's top level (async form)."""
        return await asyncio.to_thread(self.list_files_sync)

    def get_file_sync(self, file_name: str) -> Optional[File[T]]:
        """The file ``file_name`` (a relative name, ``/`` between levels) in the folder, or None
        when it does not exist."""
        if not isinstance(file_name, str) or safe_parts(file_name) is None:
            raise ValueError(
                f"file_name: expected a relative name inside the folder (e.g. 'a.txt' or 'sub/a.txt'; "
                f"no '..', '.', empty or absolute parts), got {file_name!r}"
            )
        f: File[T] = File(path=f"{self.path}/{file_name}")
        return f if f.exists_sync() else None

    async def get_file(self, file_name: str) -> Optional[File[T]]:
        """The file ``file_name`` in the folder, or None (async form of :meth:`get_file_sync`)."""
        return await asyncio.to_thread(self.get_file_sync, file_name)

    def exists_sync(self) -> bool:
        """Whether the folder exists (on an object store: whether any object is below it)."""
        store = self._store()
        if store.is_local:
            return os.path.isdir(store.url)
        return bool(fs_call(store, "isdir", "", "isdir"))

    async def exists(self) -> bool:
        """Whether the folder exists (async form of :meth:`exists_sync`)."""
        return await asyncio.to_thread(self.exists_sync)

    # ---- downloading ------------------------------------------------------------------------

    def download_sync(self, local_path: Optional[str | os.PathLike[str]] = None) -> str:
        """Download the folder's files; returns the local folder. The contents go into
        ``local_path`` (created if needed); default: a new temporary folder named after the Dir.
        See the module docstring for how an untrusted listing is handled."""
        store = self._store()
        keys = self._keys(store)
        if not keys and not self.exists_sync():
            raise FileNotFoundError(f"Dir {shown(self.path)} does not exist (or is not a folder)")
        plan = _plan(keys, self.path)
        if local_path is None:
            leaf = self.name if self.name and safe_parts(self.name) == [self.name] else "dir"
            root = local_dest(None, leaf)
        else:
            root = os.path.abspath(os.path.expanduser(os.fspath(local_path)))
        if os.path.lexists(root) and not os.path.isdir(root):
            raise ValueError(f"local_path: {root!r} exists and is not a folder")
        os.makedirs(root, exist_ok=True)
        targets = [target_in(root, parts) for parts in plan]
        tmps = [f"{t}.part-{uuid.uuid4().hex[:8]}" for t in targets]
        try:
            store.get_files(keys, tmps)
            for tmp, target in zip(tmps, targets):
                os.replace(tmp, target)  # a symlink at the target is replaced, never followed
        finally:
            for tmp in tmps:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return root

    async def download(self, local_path: Optional[str | os.PathLike[str]] = None) -> str:
        """Download the folder's files; returns the local folder (see :meth:`download_sync`)."""
        return await asyncio.to_thread(self.download_sync, local_path)


def _plan(keys: list[str], path: str) -> list[list[str]]:
    """Each key's components, after checking the whole listing (module docstring)."""
    plan: list[list[str]] = []
    files: set[tuple[str, ...]] = set()
    folders: set[tuple[str, ...]] = set()
    for key in keys:
        parts = safe_parts(key)
        if parts is None:
            raise ValueError(
                f"Dir {shown(path)}: its listing holds the unsafe name {key!r} (absolute, or with an empty, "
                "'.' or '..' part); nothing was downloaded"
            )
        files.add(tuple(parts))
        folders.update(tuple(parts[:i]) for i in range(1, len(parts)))
        plan.append(parts)
    both = files & folders
    if both:
        clash = "/".join(sorted(both)[0])
        raise ValueError(
            f"Dir {shown(path)}: {clash!r} is both a file and a folder in its listing; nothing was downloaded"
        )
    return plan


def _local_files(root: str) -> list[str]:
    """Keys (``/``-separated, relative) of the regular files below the local folder ``root``,
    sorted; symlinks are skipped with a warning (never followed)."""
    keys: list[str] = []
    skipped: list[str] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for d in dirs:
            if os.path.islink(os.path.join(folder, d)):
                skipped.append(prefix + d)
        for n in names:
            p = os.path.join(folder, n)
            if os.path.islink(p):
                skipped.append(prefix + n)
            elif os.path.isfile(p):
                keys.append(prefix + n)
    if skipped:
        logger.warning(
            "flyte_ray.io: %d symlink(s) under %s skipped (symlinks are not followed): %s",
            len(skipped),
            root,
            ", ".join(sorted(skipped)[:5]) + (" ..." if len(skipped) > 5 else ""),
        )
    return sorted(keys)
