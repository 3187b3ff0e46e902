"""Background saves: snapshot now, upload while the task's loop goes on.

``Checkpoint.save(src, background=True)`` blocks only while it takes a *snapshot* of ``src`` (so
the caller may change or delete ``src`` as soon as it returns), then hands the snapshot to this
checkpoint object's :class:`Uploader` and returns a :class:`SaveHandle`.

Rules:

* A snapshot is what the upload will read, taken on the caller's thread: ``bytes`` as they are
  (immutable: no copy), a ``bytearray``/``memoryview`` copied to ``bytes``, a file or directory
  copied into a local staging folder (the kernel copies a file's bytes: ``copy_file_range`` /
  ``sendfile``), a binary reader read to its end into a staging file.
* At most one upload in flight per checkpoint object, on one daemon thread that exists only while
  there is work. A save made while one uploads is queued; a newer one replaces a queued one, whose
  handle ends ``superseded`` (its state was never going to be the newest).
* Uploads go through the same commit as a foreground save (:mod:`.save`), so a process killed
  mid-upload never publishes a partial version: the previous complete one stays the newest.
* Foreground saves and every read of the same object (``latest``, ``read``, ``restore``,
  ``load``, ...) first wait for the queue to drain, so the object reads its own writes in order.
* A failed upload is kept on its handle (``result()`` raises it) and logged once; it never fails
  a later save. At the end of each attempt flyte-ray waits for the queue (``flush``) so the
  attempt's record counts what was saved, and a preemption's retry finds the newest save.
* At process exit, pending uploads of live checkpoint objects get up to
  :data:`EXIT_FLUSH_S` seconds to finish.
"""

from __future__ import annotations

import atexit
import logging
import os
import pathlib
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from typing import IO, Any, Optional

logger = logging.getLogger("flyte_ray.checkpoint")

EXIT_FLUSH_S = 60.0
_COPY_CHUNK = 8 * 2**20


class SaveHandle:
    """One background save. ``state`` moves ``queued`` → ``uploading`` → ``committed`` (or
    ``failed``), or ``queued`` → ``superseded``. ``blocked_s``: seconds the caller spent on the
    snapshot; ``upload_s``: seconds the upload took."""

    __slots__ = ("state", "error", "version", "blocked_s", "upload_s", "nbytes", "_done")

    def __init__(self, nbytes: int, blocked_s: float) -> None:
        self.state = "queued"
        self.error: Optional[BaseException] = None
        self.version: Optional[str] = None
        self.blocked_s = blocked_s
        self.upload_s = 0.0
        self.nbytes = nbytes
        self._done = threading.Event()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the save committed, failed or was superseded; False after ``timeout``."""
        return self._done.wait(timeout)

    def result(self, timeout: Optional[float] = None) -> Optional[str]:
        """The committed version id (None if a newer save superseded this one); raises the
        upload's error, or ``TimeoutError`` after ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"checkpoint save still {self.state} after {timeout}s")
        if self.error is not None:
            raise self.error
        return self.version

    def _end(self, state: str, error: Optional[BaseException] = None, version: Optional[str] = None) -> None:
        self.state, self.error, self.version = state, error, version
        self._done.set()

    def __repr__(self) -> str:
        return f"SaveHandle(state={self.state!r}, bytes={self.nbytes}, blocked_s={self.blocked_s:.3f})"


class Snapshot:
    """What a background save uploads: ``src`` (bytes or a staged local path) and its staging
    folder (removed once uploaded or superseded)."""

    __slots__ = ("src", "metadata", "staging", "nbytes")

    def __init__(self, src: Any, metadata: Optional[dict], staging: Optional[str], nbytes: int) -> None:
        self.src, self.metadata, self.staging, self.nbytes = src, metadata, staging, nbytes

    def discard(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def snapshot(src: Any, metadata: Optional[dict]) -> Snapshot:
    """Take the snapshot of a save's source (module docstring); raises as a save would."""
    if isinstance(src, bytes):
        return Snapshot(src, metadata, None, len(src))
    if isinstance(src, (bytearray, memoryview)):
        data = bytes(src)
        return Snapshot(data, metadata, None, len(data))
    staging = tempfile.mkdtemp(prefix="flyte-ray-cp-stage-")
    try:
        if hasattr(src, "read") and not isinstance(src, (str, os.PathLike)):
            dest = pathlib.Path(staging, "stream")
            n = _copy_reader(src, dest)
            return Snapshot(dest, metadata, staging, n)
        local = pathlib.Path(os.fspath(src)).expanduser()
        if local.is_dir():
            dest = pathlib.Path(staging, "tree")
            shutil.copytree(local, dest, symlinks=False)
            n = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
            return Snapshot(dest, metadata, staging, n)
        if local.is_file():
            dest = pathlib.Path(staging, local.name)
            shutil.copyfile(local, dest)
            return Snapshot(dest, metadata, staging, dest.stat().st_size)
        raise FileNotFoundError(f"checkpoint source does not exist: {local}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _copy_reader(reader: IO[bytes], dest: pathlib.Path) -> int:
    n = 0
    with open(dest, "wb") as out:
        while True:
            chunk = reader.read(_COPY_CHUNK)
            if not chunk:
                return n
            if isinstance(chunk, str):
                raise TypeError("checkpoint readers must be binary (read() returned str)")
            out.write(chunk)
            n += len(chunk)


class Uploader:
    """One checkpoint object's background uploads (module docstring). ``save(snapshot)`` runs
    the foreground save of a snapshot and returns the committed version id."""

    def __init__(self, save: Callable[[Snapshot], Optional[str]], url: str) -> None:
        self._save = save
        self._url = url
        self._cond = threading.Condition()
        self._queued: Optional[tuple[Snapshot, SaveHandle]] = None
        self._busy = False  # an upload is in flight (or the thread is about to take the queue)
        self._thread: Optional[threading.Thread] = None
        _LIVE.add(self)

    def submit(self, snap: Snapshot, handle: SaveHandle) -> None:
        with self._cond:
            old = self._queued
            self._queued = (snap, handle)
            if not self._busy:
                self._busy = True
                self._thread = threading.Thread(target=self._run, name="flyte-ray-ckpt-upload", daemon=True)
                self._thread.start()
        _supersede(old)

    def drop_queued(self) -> None:
        """A foreground save is about to commit: what is still queued would be older."""
        with self._cond:
            old, self._queued = self._queued, None
        _supersede(old)

    def pending(self) -> bool:
        with self._cond:
            return self._busy

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until nothing is queued or uploading; False if ``timeout`` passed first."""
        if self._thread is threading.current_thread():
            return True
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._busy:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                item = self._queued
                self._queued = None
                if item is None:
                    self._busy = False
                    self._cond.notify_all()
                    return
            snap, handle = item
            handle.state = "uploading"
            t0 = time.perf_counter()
            try:
                version = self._save(snap)
            except BaseException as e:  # noqa: BLE001 - kept on the handle, never raised here
                handle.upload_s = time.perf_counter() - t0
                logger.warning("background checkpoint save under %s failed: %s: %s", self._url, type(e).__name__, e)
                handle._end("failed", error=e)
            else:
                handle.upload_s = time.perf_counter() - t0
                handle._end("committed", version=version)
            finally:
                snap.discard()


def _supersede(item: Optional[tuple[Snapshot, SaveHandle]]) -> None:
    """A queued save that a newer one replaced: its snapshot goes, its handle ends superseded."""
    if item is not None:
        item[0].discard()
        item[1]._end("superseded")


_LIVE: "weakref.WeakSet[Uploader]" = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    end = time.monotonic() + EXIT_FLUSH_S
    for up in list(_LIVE):
        if up.pending():
            logger.warning("waiting up to %.0fs for a background checkpoint upload to finish", EXIT_FLUSH_S)
            up.flush(max(0.0, end - time.monotonic()))
