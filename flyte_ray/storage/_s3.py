"""S3 fast paths: requests flyte-ray sends itself through s3fs's client, on s3fs's event loop.

Why: s3fs's convenience calls add requests or cost CPU that these paths do not need --

* ``cat_file`` and ``get_file`` send a HEAD before the GET (to size ranged reads); reading a
  whole object needs only the GET (:func:`cat`, :func:`get_file`).
* ``get_file`` reads the body 64 KiB at a time; :func:`get_file` reads up to 4 MiB at a time,
  which costs less CPU per byte (measured with ``benchmarks/checkpoint.py``) and still bounds
  the memory a download holds (a read returns what has arrived, up to that).
* ``ls`` of an empty prefix lists the parent as well; :func:`lsdir` is the single LIST, and
  bypasses s3fs's listings cache (``refresh``) so that other processes' writes are visible.

Every function here is a coroutine for ``fs.loop``; errors come out translated by s3fs
(``NoSuchKey`` is ``FileNotFoundError``). The response checksum, where the server sends one, is
validated by the same botocore client as in s3fs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

#: Largest read of the single-GET download (s3fs's get_file reads 64 KiB at a time).
READ_CHUNK = 4 * 2**20


async def _body(fs: Any, path: str, started: Callable[[], None] | None) -> Any:
    """The body of one GET of ``path``; ``started()`` is called once the response has begun."""
    bucket, key, _ = fs.split_path(path)
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    if started is not None:
        started()
    return resp["Body"]


async def cat(fs: Any, path: str, started: Callable[[], None] | None = None) -> bytes:
    """One GET of a whole object."""
    body = await _body(fs, path, started)
    try:
        return await body.read()
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
