"""The public :class:`Checkpoint` (flytekit and flyte-sdk API shapes on one object), and the
:class:`Storage` that hands them out per task call.

Rules:

* One :class:`Checkpoint` object is the checkpoint of one task call across all of its attempts:
  a retry builds a new object on the same URL and sees the newest complete version written by
  any earlier attempt. The URL is trusted (not sanitised); :meth:`Storage.checkpoint_url` builds
  safe ones from user-supplied names.
* One writer at a time per URL is assumed; saves from several threads of one process are
  serialised by a lock. Every call first waits for the object's previous save's background
  pruning, so the object's own view of the prefix is settled.
* Picklable: the store, lock, version knowledge and local workspace are rebuilt on the other side.
* Every storage request runs under a time limit (the store's ``op_timeout``, plus time for the
  bytes moved, :mod:`flyte_ray.storage.limits`): a stalled store fails the call with
  :class:`~flyte_ray.storage.StorageTimeoutError` instead of hanging it.
* ``save`` / ``load`` block when called from sync code (flytekit) and return an awaitable when
  called from async code (flyte-sdk's ``await cp.save(x)``; :class:`.syncaio.sync_or_await`), and
  have ``.aio``; ``save_sync`` / ``load_sync`` / ``save_async`` / ``load_async`` /
  ``restore_async`` are the explicit forms. A background save (``background=True``) returns its
  handle at once either way. ``path`` is a local workspace directory that ``load`` fills.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import tempfile
import threading
import time
from typing import IO, Any

from fsspec.spec import AbstractFileSystem

from ..storage import ObjectStore
from ..storage import Storage as _BaseStorage
from ..storage.keys import load_env_options, normalize_url
from .background import SaveHandle, Snapshot, Uploader, snapshot
from .layout import NS_DIGITS, data_key
from .prune import PruneJob
from .restore import download, resolve_and, warm_download, warm_read
from .save import Upload, commit, upload_bytes, upload_dir, upload_file, upload_reader
from .syncaio import sync_or_await
from .versions import Versions


class Checkpoint:
    """Versioned, crash-safe checkpoint of one task call, shared by all of its attempts.

    Args:
        url: checkpoint prefix, normally from :meth:`Storage.checkpoint_url`, or any fsspec URL /
            local path for standalone use. ``url`` is not sanitised: it is trusted.
        options: fsspec storage options (default: ``$FLYTE_RAY_STORAGE_OPTIONS`` or ``{}``).
        keep: number of complete versions to retain (>= 1).
        op_timeout: the time limit of each storage request in seconds, on top of the time to move
            its bytes at 1 MiB/s (None: ``$FLYTE_RAY_STORAGE_TIMEOUT``, else 60; ``math.inf``:
            none). A stalled store fails the call with ``StorageTimeoutError``.

    Picklable (the filesystem, lock and local workspace are rebuilt on the other side). One
    writer at a time per URL is assumed; saves from several threads of one process are
    serialised by a lock.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        options: dict[str, Any] | None = None,
        keep: int = 2,
        op_timeout: float | None = None,
    ):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._url = normalize_url(url)
        self._options: dict[str, Any] = dict(options) if options is not None else load_env_options()
        self._keep = int(keep)
        self._op_timeout = op_timeout
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._store = ObjectStore(self._url, self._options, op_timeout=self._op_timeout)
        self._versions = Versions(self._store, self._url)
        self._lock = threading.RLock()
        # The helper thread of the last save (listing + best-effort pruning).
        self._bg: threading.Thread | None = None
        self._uploader: Uploader | None = None  # background saves (created by the first one)
        self._workspace: tempfile.TemporaryDirectory[str] | None = None
        self._loaded: tuple[str, pathlib.Path] | None = None
        # What this object moved, for the run's records (stats()).
        self._saved_bytes = 0
        self._restored_bytes = 0
        self._resumed_from: float | None = None  # save time of the first version this object read
        self._last_saved: float | None = None
        self._save_s = 0.0
        self._restore_s = 0.0

    def stats(self) -> tuple[int, int, float | None, float | None, float, float]:
        """``(bytes saved, bytes restored, resumed from, last saved at, seconds saving, seconds
        restoring)`` by this object: the save time (epoch seconds) of the first version it read
        or restored, and of its last save."""
        return (
            self._saved_bytes,
            self._restored_bytes,
            self._resumed_from,
            self._last_saved,
            self._save_s,
            self._restore_s,
        )

    def _restored(self, m: dict[str, Any], seconds: float = 0.0) -> None:
        self._restored_bytes += int(m.get("size") or 0)
        self._restore_s += seconds
        if self._resumed_from is None:
            try:
                self._resumed_from = int(str(m["version"])[:NS_DIGITS]) / 1e9
            except (KeyError, ValueError):
                pass

    def _saved(self, nbytes: int, seconds: float = 0.0) -> None:
        self._saved_bytes += max(0, int(nbytes))
        self._save_s += seconds
        self._last_saved = time.time()

    # ---- pickling -----------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._url, "options": self._options, "keep": self._keep, "op_timeout": self._op_timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._url = state["url"]
        self._options = state["options"]
        self._keep = state["keep"]
        self._op_timeout = state.get("op_timeout")
        self._init_runtime()

    def __repr__(self) -> str:
        return f"Checkpoint({self._url!r}, keep={self._keep})"

    # ---- basic properties ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The checkpoint prefix."""
        return self._url

    @property
    def keep(self) -> int:
        return self._keep

    @property
    def options(self) -> dict[str, Any]:
        return dict(self._options)

    @property
    def fs(self) -> AbstractFileSystem:
        """The fsspec filesystem (cached, rebuilt lazily after unpickling)."""
        return self._store.fs

    @property
    def remote_destination(self) -> str:
        """flyte-sdk name for the prefix that :meth:`save` writes under (same as :attr:`url`)."""
        return self._url

    @property
    def remote_source(self) -> str | None:
        """flyte-sdk name: URL of the newest complete version's folder, or None."""
        m = self.latest()
        return m["url"] if m else None

    @property
    def path(self) -> pathlib.Path:
        """Local workspace directory that :meth:`load` restores into (flyte-sdk style).

        A per-object temporary directory, removed when the object is garbage collected.
        """
        if self._workspace is None:
            self._workspace = tempfile.TemporaryDirectory(prefix="flyte-ray-cp-")
        p = pathlib.Path(self._workspace.name)
        p.mkdir(parents=True, exist_ok=True)
        return p

    # ---- background work ----------------------------------------------------------------

    def _wait_background(self) -> None:
        """Let this object's previous saves finish first -- its queued and in-flight background
        uploads, then the last save's (best-effort) pruning -- so that the object's own view of
        the prefix is settled. Normally already done. (On the uploader's thread the uploads are
        its own: only the pruning is waited for.)"""
        self._drain()
        self._join_prune()

    def _join_prune(self) -> None:
        """Wait for the last save's pruning only (what a commit needs, under the save lock: waiting
        for uploads there would deadlock with an upload that needs the lock)."""
        bg = self._bg
        if bg is not None and bg is not threading.current_thread():
            bg.join()
            if self._bg is bg:  # not a newer save's, published meanwhile
                self._bg = None

    def _start(self, job: PruneJob) -> None:
        # started before it is published: another thread may join self._bg at any moment (a
        # reader while a background upload commits)
        job.thread.start()
        self._bg = job.thread

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until this object's background saves are uploaded (``save(..., background=True)``)
        and the best-effort pruning started by its last save is done; False if ``timeout``
        seconds passed while uploads were still pending.

        :meth:`save` returns at its commit point and retires old versions in a background
        thread; every later call on the same object waits for that first, so this is only
        needed to make sure the deletes happen before the process exits, or to time a save
        without its pruning spilling into whatever runs next.
        """
        if not self._drain(timeout):
            return False
        self._join_prune()  # the uploads are done: only the last pruning is left
        return True

    # ---- versions -----------------------------------------------------------------------

    def _list_vids(self) -> list[str]:
        """All version ids under the prefix (complete or not), ascending. One listing."""
        return self._versions.list_vids()

    def _fresh_vids(self) -> list[str]:
        self._wait_background()
        return self._list_vids()

    def latest(self) -> dict[str, Any] | None:
        """Marker of the newest complete checkpoint (version, kind, size, files, name, created,
        metadata, url), or None when there is none."""
        return next(self._versions.complete_newest_first(self._fresh_vids()), None)

    def versions(self) -> list[dict[str, Any]]:
        """Markers of all complete checkpoints, oldest first."""
        return sorted(self._versions.complete_newest_first(self._fresh_vids()), key=lambda m: m["version"])

    def prev_exists(self) -> bool:
        """True when a complete checkpoint exists (from this or an earlier attempt)."""
        return self.latest() is not None

    # ---- saving -------------------------------------------------------------------------

    def _commit(
        self, upload: Upload, metadata: dict[str, Any] | None, *, replayable: bool = True, blob: bool = False
    ) -> None:
        with self._lock:
            self._join_prune()
            commit(
                self._versions,
                self._list_vids,
                self._keep,
                upload,
                metadata,
                start=self._start,
                replayable=replayable,
                blob=blob,
            )

    def write(self, data: bytes | bytearray | memoryview, *, metadata: dict[str, Any] | None = None) -> None:
        """Save ``data`` as a new single-blob checkpoint (flytekit ``write``)."""
        self._foreground()
        self._write(data, metadata)

    def _foreground(self) -> None:
        """Before a foreground save: what is still queued is older (dropped), what uploads
        goes first (waited for)."""
        if self._uploader is not None:
            self._uploader.drop_queued()
            self._drain()

    def _write(self, data: bytes | bytearray | memoryview, metadata: dict[str, Any] | None) -> None:
        t0 = time.perf_counter()
        data = bytes(data) if not isinstance(data, bytes) else data
        self._commit(upload_bytes(data), metadata, blob=True)
        self._saved(len(data), time.perf_counter() - t0)

    def _save(
        self,
        src: str | os.PathLike[str] | IO[bytes] | bytes,
        *,
        metadata: dict[str, Any] | None = None,
        background: bool = False,
    ) -> SaveHandle | None:
        """Save a new checkpoint and make it the newest.

        ``src`` may be a file path (single-file checkpoint, the file name is kept), a directory
        path (the tree is uploaded file by file), a binary file-like object (streamed in 8 MiB
        chunks), or ``bytes`` (as :meth:`write`). ``metadata`` (JSON-serialisable) is stored in
        the commit marker and returned by :meth:`latest`.

        ``background=True``: take a snapshot of ``src`` now (bytes as they are, a file, tree or
        stream copied to a local staging folder) and upload it while the caller goes on; returns
        a :class:`SaveHandle` (``wait()``, ``result()``, ``state``). At most one upload is in
        flight per checkpoint; a newer save replaces one still queued. A killed upload never
        publishes a partial version. Reads of this object and the end of the attempt wait for
        pending uploads (see :mod:`flyte_ray.checkpoint.background`).
        """
        if not isinstance(background, bool):
            raise TypeError(f"Checkpoint.save: background must be True or False, got {type(background).__name__}")
        if metadata is not None:
            json.dumps(metadata)  # not JSON-serialisable: fail here, not in the upload
        if background:
            t0 = time.perf_counter()
            snap = snapshot(src, metadata)
            handle = SaveHandle(snap.nbytes, time.perf_counter() - t0)
            if self._uploader is None:
                with self._lock:
                    if self._uploader is None:
                        self._uploader = Uploader(self._save_snapshot, self._url)
            self._uploader.submit(snap, handle)
            return handle
        self._foreground()
        self._save_now(src, metadata)
        return None

    def _save_snapshot(self, snap: Snapshot) -> str | None:
        """Upload one background snapshot (on the uploader's thread); the committed version id."""
        self._save_now(snap.src, snap.metadata)
        return self._versions.known_max

    def _drain(self, timeout: float | None = None) -> bool:
        """Wait for this object's queued and in-flight background uploads (False on timeout)."""
        up = self._uploader
        return True if up is None else up.flush(timeout)

    def pending_saves(self) -> bool:
        """True while a background save of this object is queued or uploading."""
        up = self._uploader
        return up is not None and up.pending()

    def _save_now(self, src: str | os.PathLike[str] | IO[bytes] | bytes, metadata: dict[str, Any] | None) -> None:
        if isinstance(src, (bytes, bytearray, memoryview)):
            self._write(src, metadata)
            return
        t0 = time.perf_counter()
        if hasattr(src, "read") and not isinstance(src, (str, os.PathLike)):
            self._commit(upload_reader(src), metadata, replayable=False, blob=True)
            newest = self._versions.markers.get(self._versions.known_max or "")
            self._saved(int(newest.get("size") or 0) if newest else 0, time.perf_counter() - t0)
            return
        local = pathlib.Path(os.fspath(src)).expanduser()
        if local.is_dir():
            self._commit(upload_dir(local), metadata)
            self._saved(sum(p.stat().st_size for p in local.rglob("*") if p.is_file()), time.perf_counter() - t0)
        elif local.is_file():
            self._commit(upload_file(local), metadata, blob=True)
            self._saved(local.stat().st_size, time.perf_counter() - t0)
        else:
            raise FileNotFoundError(f"checkpoint source does not exist: {local}")

    # ---- restoring ----------------------------------------------------------------------

    def read(self) -> bytes | None:
        """Bytes of the newest complete single-blob checkpoint, or None when there is none.

        Raises ValueError if the newest checkpoint is a directory.
        """
        store = self._store

        hit: list[dict[str, Any]] = []  # the version each fetch got (the last one is returned)

        def fetch(m: dict[str, Any]) -> bytes | None:
            if m["kind"] != "bytes":
                raise ValueError(f"newest checkpoint {m['url']} is a directory; use restore()")
            data = store.get(data_key(m))
            ok = data is not None and len(data) == m["size"]
            if ok:
                hit.append(m)
            return data if ok else None

        def warm(m: dict[str, Any]) -> Any:
            got = warm_read(store, m)
            if isinstance(got[0], bytes):
                hit.append(m)
            return got

        self._wait_background()
        t0 = time.perf_counter()
        out = resolve_and(self._versions, self._fresh_vids, fetch, warm=warm)
        if out is not None and hit:
            self._restored(hit[-1], time.perf_counter() - t0)
        return out

    def restore(self, dest_dir: str | os.PathLike[str] | None = None) -> pathlib.Path | None:
        """Download the newest complete checkpoint into ``dest_dir`` (a new temporary directory
        when None).

        Returns the restored file's path for a single-blob checkpoint, ``dest_dir`` itself
        for a directory checkpoint, or None when there is no checkpoint.
        """
        created = dest_dir is None
        dest = pathlib.Path(tempfile.mkdtemp(prefix="flyte-ray-restore-") if dest_dir is None else dest_dir)
        store = self._store

        hit: list[dict[str, Any]] = []

        def fetch(m: dict[str, Any]) -> tuple[pathlib.Path, pathlib.Path | None] | None:
            dest.mkdir(parents=True, exist_ok=True)
            got = download(store, m, dest)
            if got is not None:
                hit.append(m)
            return got

        def warm(m: dict[str, Any]) -> Any:
            got = warm_download(store, m, dest)
            if got[0] is not None and not isinstance(got[0], BaseException):
                hit.append(m)
            return got

        def discard(out: tuple[pathlib.Path, pathlib.Path | None]) -> None:
            if out[1] is not None:
                out[1].unlink(missing_ok=True)

        self._wait_background()
        t0 = time.perf_counter()
        try:
            got = resolve_and(self._versions, self._fresh_vids, fetch, discard, warm)
        except BaseException:
            if created:  # e.g. a storage time limit: leave no empty temporary folder behind
                shutil.rmtree(dest, ignore_errors=True)
            raise
        if got is None:
            if created:
                shutil.rmtree(dest, ignore_errors=True)
            return None
        final, partial = got
        if partial is not None:
            os.replace(partial, final)
        if hit:
            self._restored(hit[-1], time.perf_counter() - t0)
        return final

    # ---- flyte-sdk style ----------------------------------------------------------------

    def _load(self) -> pathlib.Path | None:
        """Restore the newest complete checkpoint into :attr:`path` and return it (the file
        for a single-blob checkpoint, the directory for a tree); None when there is none.

        Repeated calls reuse the local copy while no newer checkpoint exists.
        """
        m = self.latest()
        if m is None:
            return None
        if self._loaded is not None and self._loaded[0] == m["version"] and self._loaded[1].exists():
            return self._loaded[1]
        ws = self.path
        for child in ws.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        out = self.restore(ws)
        newest = self.latest()
        self._loaded = (newest["version"], out) if (out is not None and newest is not None) else None
        return out

    # flytekit calls ``save(...)`` synchronously, flyte-sdk awaits ``save``/``load`` (its
    # ``async def``): both work (module docstring).
    save = sync_or_await(_save, direct=("background",))
    load = sync_or_await(_load)

    def save_sync(
        self, src: str | os.PathLike[str] | IO[bytes] | bytes, *, metadata: dict[str, Any] | None = None
    ) -> None:
        """Blocking :meth:`save` (flyte-sdk name)."""
        self._save(src, metadata=metadata)

    def load_sync(self) -> pathlib.Path | None:
        """Blocking :meth:`load` (flyte-sdk name)."""
        return self._load()

    async def save_async(
        self, src: str | os.PathLike[str] | IO[bytes] | bytes, *, metadata: dict[str, Any] | None = None
    ) -> None:
        """Awaitable :meth:`save` (same as ``await cp.save.aio(...)``)."""
        await asyncio.to_thread(self._save, src, metadata=metadata)

    async def load_async(self) -> pathlib.Path | None:
        """Awaitable :meth:`load` (same as ``await cp.load.aio()``)."""
        return await asyncio.to_thread(self._load)

    async def restore_async(self, dest_dir: str | os.PathLike[str] | None = None) -> pathlib.Path | None:
        """Awaitable :meth:`restore`."""
        return await asyncio.to_thread(self.restore, dest_dir)


def checkpoint_for(storage: _BaseStorage, run_name: str, fqn: str, call_id: str, *, keep: int = 2) -> Checkpoint:
    """The :class:`Checkpoint` of one task call under ``storage`` (at its ``checkpoint_url``,
    with its options). Works with any :class:`flyte_ray.storage.Storage`."""
    return Checkpoint(
        storage.checkpoint_url(run_name, fqn, call_id),
        options=storage.options,
        keep=keep,
        op_timeout=getattr(storage, "op_timeout", None),
    )


class Storage(_BaseStorage):
    """:class:`flyte_ray.storage.Storage` plus :meth:`checkpoint`, the per-call convenience.

    The storage layer knows nothing of checkpoints (it sits below them); this subclass, which is
    what ``flyte_ray.Storage`` and ``flyte_ray.checkpoint.Storage`` name, adds the one method
    that builds a :class:`Checkpoint`. Equal to a plain storage with the same URL and options.
    """

    __slots__ = ()

    def checkpoint(self, run_name: str, fqn: str, call_id: str, *, keep: int = 2) -> Checkpoint:
        """Convenience: a :class:`Checkpoint` at :meth:`checkpoint_url` with these options."""
        return checkpoint_for(self, run_name, fqn, call_id, keep=keep)
