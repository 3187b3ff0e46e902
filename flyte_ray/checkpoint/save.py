"""Saving one checkpoint version: the upload steps and the commit.

Rules:

* Every save goes to a fresh version (:mod:`.layout`), chosen without reading the store; nothing
  is ever moved into place (object stores have no atomic rename).
* The commit point is written last, after the whole payload: the ``_COMPLETE`` marker (one small
  ``put_atomic``), or -- a single blob without metadata on an atomic-write backend (S3) -- the
  one object itself (for a stream: its ``Writer.commit``, never a ``close`` of a failed stream).
* A save commits only as the newest version. The listing taken while the payload uploads
  (:class:`~.prune.PruneJob`) must show no version sorting after the new id; if one does (a writer
  whose clock ran ahead), the payload is uploaded again under a newer id (a stream, which cannot
  be replayed, fails with RuntimeError instead). A single object committed by then is deleted
  again by the helper once the save is over; it is older than what superseded it anyway.
* If the listing fails, the save fails, and what it uploaded is deleted again (best-effort).
* A stream that fails is discarded (its multipart upload aborted). A writer killed mid-upload
  leaves an (invisible) incomplete multipart upload behind on S3: the first save of each
  checkpoint object aborts those under the prefix older than :data:`STALE_UPLOAD_AGE`, in its
  helper thread once it has committed (:class:`~.prune.PruneJob`). Warm saves send nothing more.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Callable
from typing import IO, Any

from ..storage import ObjectStore, Writer
from .layout import (
    CHUNK_SIZE,
    DATA_DIR,
    DEFAULT_BLOB_NAME,
    blob_key,
    folder_marker,
    is_safe_name,
    marker_key,
    object_marker,
    with_location,
)
from .prune import PruneJob
from .versions import Versions

logger = logging.getLogger(__name__)

#: Seconds after which an incomplete multipart upload under a checkpoint prefix counts as left
#: behind by a killed writer (one writer at a time per URL is assumed; the margin covers a slow
#: one that is still running).
STALE_UPLOAD_AGE = 3600.0

#: What an upload step returns: kind, blob name, size, file count, and for a single-object
#: stream the function that commits (True) or discards (False) it; None where the upload is done.
Uploaded = tuple[str, "str | None", int, int, "Callable[[bool], None] | None"]
#: An upload step: ``(store, version id, single object?) -> Uploaded``.
Upload = Callable[[ObjectStore, str, bool], Uploaded]


def upload_bytes(data: bytes) -> Upload:
    def upload(store: ObjectStore, vid: str, single: bool) -> Uploaded:
        store.put_atomic(blob_key(vid, DEFAULT_BLOB_NAME, single), data)
        return "bytes", DEFAULT_BLOB_NAME, len(data), 1, None

    return upload


def upload_file(local: pathlib.Path) -> Upload:
    def upload(store: ObjectStore, vid: str, single: bool) -> Uploaded:
        name = local.name if is_safe_name(local.name) else DEFAULT_BLOB_NAME
        size = local.stat().st_size
        store.put_file(local, blob_key(vid, name, single))
        return "bytes", name, size, 1, None

    return upload


def upload_reader(reader: IO[bytes]) -> Upload:
    """Stream ``reader`` in 8 MiB chunks; a single object is committed only by the returned
    ``finish(True)`` (it becomes visible -- complete -- only then)."""

    def upload(store: ObjectStore, vid: str, single: bool) -> Uploaded:
        out: Writer = store.open_writer(blob_key(vid, DEFAULT_BLOB_NAME, single))
        size = 0
        try:
            while True:
                chunk = reader.read(CHUNK_SIZE)
                if not chunk:
                    break
                if isinstance(chunk, str):
                    raise TypeError("checkpoint readers must be binary (read() returned str)")
                out.write(chunk)
                size += len(chunk)
            if not single:
                out.commit()
        except BaseException:
            # Never publish a failed stream: on an object store that would make the part written
            # so far visible (harmless in a version folder, which has no marker, but still waste).
            out.discard()
            raise
        if not single:
            return "bytes", DEFAULT_BLOB_NAME, size, 1, None

        def finish(commit: bool) -> None:
            out.commit() if commit else out.discard()

        return "bytes", DEFAULT_BLOB_NAME, size, 1, finish

    return upload


def upload_dir(local: pathlib.Path) -> Upload:
    def upload(store: ObjectStore, vid: str, single: bool) -> Uploaded:
        base = f"{vid}/{DATA_DIR}"
        lpaths: list[str] = []
        keys: list[str] = []
        size = 0
        for dirpath, dirnames, filenames in os.walk(local):
            dirnames.sort()
            rel_dir = pathlib.Path(dirpath).relative_to(local).as_posix()
            rbase = base if rel_dir == "." else f"{base}/{rel_dir}"
            for fname in sorted(filenames):
                lp = os.path.join(dirpath, fname)
                if not os.path.isfile(lp):  # broken symlinks, sockets, fifos
                    continue
                size += os.path.getsize(lp)
                lpaths.append(lp)
                keys.append(f"{rbase}/{fname}")
        # One batch: async backends (s3fs, gcsfs) upload the files concurrently.
        store.put_files(lpaths, keys)
        return "dir", None, size, len(lpaths), None

    return upload


def commit(
    versions: Versions,
    list_vids: Callable[[], list[str]],
    keep: int,
    upload: Upload,
    metadata: dict[str, Any] | None,
    *,
    start: Callable[[PruneJob], None],
    replayable: bool = True,
    blob: bool = False,
) -> None:
    """Upload a new version with ``upload`` and commit it as the newest (module docstring).

    The caller holds the checkpoint's save lock and has waited for its previous save's helper;
    ``start(job)`` starts this save's :class:`~.prune.PruneJob` and keeps it to be waited for.
    """
    meta_json = json.loads(json.dumps(metadata)) if metadata is not None else None  # fail early
    store = versions.store
    # One object, no marker: a single blob without metadata on a backend whose object writes
    # are atomic. Everything else gets a version folder and a marker written last.
    single = blob and metadata is None and store.atomic_writes
    vid = versions.new_vid()
    # Once this object has listed the prefix, it knows every version (one writer at a time per
    # URL), so later saves need no listing at all.
    known = sorted(versions.vids) if versions.vids is not None else None
    sweep = STALE_UPLOAD_AGE if store.is_s3 and not versions.saved else None
    versions.saved = True
    job = PruneJob(versions, list_vids, keep, vid, known, sweep=sweep)
    start(job)
    committed = False
    try:
        while True:
            kind, name, size, nfiles, finish = upload(store, vid, single)
            # A single object (not a stream) is committed by now: if anything below fails or
            # supersedes it, the helper deletes it again (best-effort).
            uploaded = object_marker(versions.url, vid, name, size) if single and finish is None else None  # type: ignore[arg-type]
            try:
                listed = job.listing()
            except BaseException:
                if finish is not None:
                    finish(False)
                else:
                    job.also_delete(vid, uploaded)
                raise
            newer = [v for v in listed if v >= vid and v != vid]
            if not newer:
                break
            # Another version sorts after ours (a writer whose clock ran ahead of ours, and which
            # this object had not seen): committing here would not make ours the newest. Rare;
            # upload again under an id above everything listed.
            logger.warning(
                "checkpoint version %s under %s is not the newest (%s exists); re-uploading",
                vid,
                versions.url,
                max(newer),
            )
            if finish is not None:
                finish(False)  # an uncommitted single-object stream: never visible
            else:
                job.also_delete(vid, uploaded)
            versions.note(max(newer))
            if not replayable:
                raise RuntimeError(
                    f"cannot save a stream checkpoint under {versions.url}: version "
                    f"{max(newer)} sorts after the one being written; save again"
                )
            vid = versions.new_vid()
        if single:
            # The commit point is the object itself: the upload above (one atomic object), or
            # for a stream the commit here.
            if finish is not None:
                finish(True)
            marker = object_marker(versions.url, vid, name, size)  # type: ignore[arg-type]
        else:
            marker = folder_marker(vid, kind, name, size, nfiles, meta_json)
            # The commit point: one small object, written after the whole payload.
            store.put_atomic(marker_key(vid), json.dumps(marker).encode())
            marker = with_location(versions.url, marker)
        committed = True
    finally:
        # Deletes that must wait for the commit (keep == 1) run after this, in the helper
        # thread; nothing is deleted past the commit point if the save failed.
        job.finish(committed, vid)
    versions.added(vid, marker, (name, size) if single else None)  # type: ignore[arg-type]
