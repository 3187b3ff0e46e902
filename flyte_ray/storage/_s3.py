"""S3 fast paths: requests flyte-ray sends itself through s3fs's client, on s3fs's event loop.

Why: s3fs's convenience calls add requests or cost CPU that these paths do not need --

* ``cat_file`` and ``get_file`` send a HEAD before the GET (to size ranged reads); reading a
  whole object needs only the GET (:func:`cat`, :func:`get_file`).
* ``get_file`` reads the body 64 KiB at a time; :func:`get_file` reads up to 4 MiB at a time,
  which costs less CPU per byte (measured with ``benchmarks/checkpoint.py``) and still bounds
  the memory a download holds (a read returns what has arrived, up to that).
* ``ls`` of an empty prefix lists the parent as well; :func:`lsdir` is the single LIST, and
  bypasses s3fs's listings cache (``refresh``) so that other processes' writes are visible.

* s3fs's streaming file object sends its parts through s3fs's synchronous API, which no time
  limit can interrupt; :class:`S3Writer` sends each request itself, each under a limit, and
  aborts its multipart upload when anything fails.
* :func:`list_uploads` / :func:`abort_upload` let a later writer clean up the multipart uploads
  that a killed one left behind (they are invisible, but stored and billed until aborted).

Every function here is a coroutine for ``fs.loop``; errors come out translated by s3fs
(``NoSuchKey`` is ``FileNotFoundError``). The response checksum, where the server sends one, is
validated by the same botocore client as in s3fs. s3fs adds its ``s3_additional_kwargs`` (e.g.
server-side encryption) to every request sent through ``fs._call_s3``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .limits import limited
from .values import Writer

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest read of the single-GET download (s3fs's get_file reads 64 KiB at a time).
READ_CHUNK = 4 * 2**20


async def _body(fs: Any, path: str, started: Callable[[], None] | None) -> Any:
    """The body of one GET of ``path``; ``started()`` is called once the response has begun."""
    bucket, key, _ = fs.split_path(path)
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    if started is not None:
        started()
    return resp["Body"]


async def cat(fs: Any, path: str, started: Callable[[], None] | None = None, stall: float | None = None) -> bytes:
    """One GET of a whole object. ``stall``: a limit on each wait (the response, then each
    read of up to 4 MiB) rather than on the whole transfer."""
    if stall is None:
        body = await _body(fs, path, started)
        try:
            return await body.read()
        finally:
            body.close()
    body = await limited(lambda: _body(fs, path, started), stall)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = await limited(lambda: body.read(READ_CHUNK), stall)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        body.close()


async def get_file(fs: Any, path: str, lpath: str, started: Callable[[], None] | None = None) -> None:
    """One streamed GET of an object into the local file ``lpath``, up to 4 MiB per read."""
    body = await _body(fs, path, started)
    try:
        # A blocking open and writes on the loop thread: a local file, written in chunks of at
        # most 4 MiB -- measured cheaper than handing each chunk to a thread.
        with open(lpath, "wb") as f:  # noqa: ASYNC230
            while True:
                chunk = await body.read(READ_CHUNK)
                if not chunk:
                    break
                f.write(chunk)
    finally:
        body.close()


async def lsdir(fs: Any, path: str) -> list[dict[str, Any]]:
    """One LIST request of the children of ``path``; a missing prefix lists as empty."""
    try:
        return await fs._lsdir(path, refresh=True)
    except (FileNotFoundError, NotADirectoryError):
        return []


async def fetch_while_listing(
    fs: Any, path: str, lpath: str | None, list_path: str
) -> tuple[bytes | None | BaseException, list[dict[str, Any]] | BaseException]:
    """GET ``path`` (into ``lpath`` when given, else into memory) and LIST ``list_path``.

    The LIST is sent once the GET's response has begun, or when the GET ends if it never got
    that far (measured on a moto server: cheaper than sending both at once, which makes the two
    requests compete at their start). Returns each result, or the exception it raised.
    """
    listing: list[asyncio.Future[Any]] = []

    def started() -> None:
        if not listing:
            listing.append(asyncio.ensure_future(lsdir(fs, list_path)))

    got: bytes | None | BaseException
    try:
        if lpath is None:
            got = await cat(fs, path, started)
        else:
            await get_file(fs, path, lpath, started)
            got = None
    except Exception as e:  # noqa: BLE001 -- handed to the caller
        got = e
    except BaseException:  # cancelled (e.g. a time limit): do not leave the listing running alone
        for task in listing:
            task.cancel()
        raise
    started()
    entries: list[dict[str, Any]] | BaseException
    try:
        entries = await listing[0]
    except Exception as e:  # noqa: BLE001
        entries = e
    return got, entries


# ---- multipart uploads ------------------------------------------------------------------------


async def put_object(fs: Any, path: str, data: bytes) -> None:
    bucket, key, _ = fs.split_path(path)
    await fs._call_s3("put_object", Bucket=bucket, Key=key, Body=data)


async def create_upload(fs: Any, path: str) -> str:
    bucket, key, _ = fs.split_path(path)
    return (await fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key))["UploadId"]


async def upload_part(fs: Any, path: str, upload_id: str, number: int, data: bytes) -> str:
    bucket, key, _ = fs.split_path(path)
    out = await fs._call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
    return out["ETag"]


async def complete_upload(fs: Any, path: str, upload_id: str, etags: list[str]) -> None:
    bucket, key, _ = fs.split_path(path)
    parts = [{"PartNumber": i + 1, "ETag": etag} for i, etag in enumerate(etags)]
    await fs._call_s3(
        "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )


async def abort_upload(fs: Any, bucket: str, key: str, upload_id: str) -> None:
    await fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)


async def list_uploads(fs: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """The multipart uploads in progress under the key prefix ``prefix`` of ``bucket`` (``Key``,
    ``UploadId``, ``Initiated``, ``Bucket``), following pagination."""
    out: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = await fs._call_s3("list_multipart_uploads", **kwargs)
        out.extend({**u, "Bucket": bucket} for u in page.get("Uploads", []))
        if not page.get("IsTruncated"):
            return out
        kwargs["KeyMarker"] = page.get("NextKeyMarker")
        kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker")


#: ``run(op, timeout, make)``: the store runs ``make()`` on the filesystem's loop under ``timeout``.
Runner = Callable[[str, "float | None", Callable[[], Awaitable[Any]]], Any]


class S3Writer(Writer):
    """A streaming upload of one S3 object, each request under a time limit.

    Data is buffered up to ``part_size`` bytes (s3fs's block size, 50 MiB); a stream that ends
    before that is sent as one PUT, a longer one as a multipart upload, one part per
    ``part_size``. ``limit(nbytes)`` gives each request's limit; ``run`` sends it (raising
    :class:`~flyte_ray.storage.values.StorageTimeoutError` when it passes). When a request fails
    the multipart upload is aborted (best-effort) and the error raised; :meth:`discard` aborts it
    too. Nothing becomes visible before :meth:`commit`.
    """

    def __init__(self, fs: Any, path: str, run: Runner, limit: Callable[[int], float | None], part_size: int):
        super().__init__()
        self._fs = fs
        self._path = path
        self._run = run
        self._limit = limit
        self._part_size = max(int(part_size), 5 * 2**20)  # S3's smallest part but the last
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._etags: list[str] = []

    def write(self, data: bytes) -> int:
        if self._done:
            raise ValueError("write to a committed or discarded upload")
        self._buf += data
        while len(self._buf) >= self._part_size:
            part = bytes(self._buf[: self._part_size])
            del self._buf[: self._part_size]
            self._send(part)
        return len(data)

    def _send(self, part: bytes) -> None:
        fs, path = self._fs, self._path
        try:
            if self._upload_id is None:
                self._upload_id = self._run("open_writer", self._limit(0), lambda: create_upload(fs, path))
            upload_id, n = self._upload_id, len(self._etags) + 1
            etag = self._run("open_writer", self._limit(len(part)), lambda: upload_part(fs, path, upload_id, n, part))
        except BaseException:
            self._done = True
            self._abandon()
            raise
        self._etags.append(etag)

    def _finish(self) -> None:
        fs, path, data = self._fs, self._path, bytes(self._buf)
        self._buf = bytearray()
        if self._upload_id is None:
            self._run("open_writer", self._limit(len(data)), lambda: put_object(fs, path, data))
            return
        if data or not self._etags:
            self._send(data)
        upload_id, etags = self._upload_id, list(self._etags)
        self._run("open_writer", self._limit(0), lambda: complete_upload(fs, path, upload_id, etags))

    def _abandon(self) -> None:
        self._buf = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        bucket, key, _ = self._fs.split_path(self._path)
        try:
            self._run("abort_upload", self._limit(0), lambda: abort_upload(self._fs, bucket, key, upload_id))
        except Exception as e:  # noqa: BLE001 -- abandoning anyway; a later save sweeps stale uploads
            logger.warning("could not abort the multipart upload of %s: %s", self._path, e)
