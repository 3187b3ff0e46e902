"""Multipart uploads left behind on S3: incomplete uploads are invisible, but S3 keeps (and bills)
their parts until they are completed or aborted.

Rules:

* A failed upload aborts its own multipart upload: s3fs does so on errors, :class:`~._s3.S3Writer`
  on any failure or discard. A *cancelled* s3fs upload (our time limit) does not, so the store
  aborts the uploads of the keys it was writing (:func:`aborted_on_timeout`) -- only for sizes
  that s3fs sends as multipart uploads, so small writes cost nothing extra.
* A process killed mid-upload cannot abort anything: a later writer of the same prefix calls
  :func:`abort` with an age threshold (one ListMultipartUploads, plus one abort per stale
  upload). The threshold keeps it off uploads in progress elsewhere; an S3 lifecycle rule
  (``AbortIncompleteMultipartUpload``) is the backstop for prefixes nobody writes again.
* Everything here is best-effort under a short limit: failures are logged, never raised (the
  operation it follows has failed already, or does not depend on it).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ._s3 import abort_upload, list_uploads
from .limits import redact_url
from .values import StorageTimeoutError

if TYPE_CHECKING:
    from .objects import ObjectStore

logger = logging.getLogger(__name__)

#: Longest wait of one cleanup request (it runs after a failure already), whatever the store's
#: own op_timeout.
CLEANUP_S = 10.0


def multipart_from(store: ObjectStore) -> int:
    """Size from which s3fs uploads a file or blob as a multipart upload (two blocks)."""
    return 2 * store.single_get_max if store.is_s3 else 2**62


@contextlib.contextmanager
def aborted_on_timeout(store: ObjectStore, keys: Sequence[str], largest: int) -> Iterator[None]:
    """Around an upload of ``keys`` (``largest``: the largest one's size): if it runs out of time
    and may have left multipart uploads behind, abort theirs."""
    try:
        yield
    except StorageTimeoutError:
        if keys and largest >= multipart_from(store):
            for k in keys:
                abort(store, k, exact=True)
        raise


def abort(store: ObjectStore, prefix: str, *, exact: bool = False, older_than: float = 0.0) -> int:
    """Abort the multipart uploads under ``prefix`` (``exact``: of that key only) begun at least
    ``older_than`` seconds ago; how many were aborted."""
    fs: Any = store.fs
    bucket, key, _ = fs.split_path(store.path(prefix))
    # A folder's prefix ends with "/": "a/cp" must not match the uploads of "a/cp2/...".
    listed = key if exact or not key else key.rstrip("/") + "/"
    # Its own limit, not the store's op_timeout: the cleanup often runs *because* an operation ran
    # out of a tight limit, and on a loaded machine the same limit can cut the cleanup short too,
    # leaving the parts billed (seen in CI with op_timeout=0.3). Each request is small.
    limit = CLEANUP_S
    try:
        uploads = store._run("list_uploads", prefix, limit, lambda: list_uploads(fs, bucket, listed))
    except Exception as e:  # noqa: BLE001 -- best-effort
        logger.warning("could not list multipart uploads under %s: %s", redact_url(store.url_of(prefix)), e)
        return 0
    now = time.time()
    done = 0
    for u in uploads:
        if exact and u["Key"] != key:
            continue
        initiated: Any = u.get("Initiated")
        age = now - initiated.timestamp() if hasattr(initiated, "timestamp") else math.inf
        if age < older_than:
            continue
        try:
            one = functools.partial(abort_upload, fs, u["Bucket"], u["Key"], u["UploadId"])
            store._run("abort_upload", prefix, limit, one)
            done += 1
        except Exception as e:  # noqa: BLE001 -- best-effort
            logger.warning("could not abort a multipart upload of %s: %s", u["Key"], e)
    if done:
        logger.info("aborted %d incomplete multipart upload(s) under %s", done, redact_url(store.url_of(prefix)))
    return done
