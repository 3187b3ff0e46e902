"""The values an :class:`~flyte_ray.storage.objects.ObjectStore` hands out: listing entries,
streaming uploads, and the error a time limit raises.

Rules: a :class:`Writer` publishes its object only on :meth:`Writer.commit`; a failed stream is
discarded (its multipart upload aborted where the backend can), never closed into visibility.
:class:`StorageTimeoutError` names the operation, the key and the URL without credentials, never
the storage options; it pickles (it may cross process boundaries as a task's error).
"""

from __future__ import annotations

import logging
import types
from typing import IO, TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["Entry", "StorageTimeoutError", "Writer"]


class StorageTimeoutError(TimeoutError):
    """A storage operation did not finish within its time limit (``timeout`` seconds), or its
    storage client gave up waiting (``client`` names the client's error; ``timeout`` is then the
    limit that was in force, possibly None).

    ``url`` is the object's URL with credentials removed; the message holds the operation, the key
    and that URL, never storage options.
    """

    def __init__(self, op: str, key: str, timeout: float | None, url: str | None = None, client: str | None = None):
        where = f"{key!r}" + (f" at {url}" if url else "")
        if client is None:
            why = f"did not finish within {timeout:g} s" if timeout is not None else "did not finish"
        else:
            why = f"failed: the storage client timed out ({client})"
        super().__init__(f"storage {op} of {where} {why}")
        self.op = op
        self.key = key
        self.timeout = timeout
        self.url = url
        self.client = client

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.op, self.key, self.timeout, self.url, self.client))


class Entry(NamedTuple):
    """One child in a listing: its key (relative to the store root), size, and whether it is a
    folder (a common prefix on object stores)."""

    key: str
    size: int | None
    is_dir: bool


class Writer:
    """A streaming upload of one object: :meth:`write` chunks, then :meth:`commit` publishes it
    or :meth:`discard` drops it. As a context manager: commit on success, discard on error.

    Never publish a failed stream by closing it: on an object store that would make the part
    written so far visible. :meth:`discard` aborts the multipart upload where the backend can;
    elsewhere it closes the file (the caller's commit protocol must cover that).

    This class streams through an fsspec file object (no time limits); on S3 the store hands out
    :class:`~flyte_ray.storage._s3.S3Writer`, which sends each part under a limit.
    """

    def __init__(self, f: IO[bytes] | None = None):
        self._f = f
        self._done = False

    def write(self, data: bytes) -> int:
        assert self._f is not None
        return self._f.write(data)

    def commit(self) -> None:
        """Publish the object (whole, where writes are atomic)."""
        if self._done:
            return
        self._done = True
        try:
            self._finish()
        except BaseException:
            self._abandon()
            raise

    def discard(self) -> None:
        """Abandon the upload without publishing it, where the backend can."""
        if self._done:
            return
        self._done = True
        self._abandon()

    def _finish(self) -> None:
        assert self._f is not None
        self._f.close()

    def _abandon(self) -> None:
        f: Any = self._f
        try:
            f.discard()
            f.closed = True  # or its __del__ would close(), i.e. publish, what is left
        except Exception:  # noqa: BLE001 -- e.g. local files opened with autocommit cannot discard
            try:
                f.close()
            except Exception as e:  # noqa: BLE001 -- abandoning anyway
                logger.debug("closing an abandoned upload failed: %s", e)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
