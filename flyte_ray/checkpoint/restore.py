"""Finding the newest complete checkpoint and fetching it.

Rules:

* Candidates are the complete versions, newest first. A fetch that finds its version damaged or
  gone (size or file count not as the marker says, or the object vanished under a concurrent
  pruner) moves on to the next older one; if every candidate failed, the prefix is listed once
  more, because a concurrent save may have committed a newer version and pruned ours.
* Nothing partial is ever left under a final name: a single blob is fetched under a temporary
  name next to its final one and renamed into place only once its version is confirmed; a
  discarded or failed fetch removes it.
* Restores never write outside the destination folder, whatever the object keys say.
* On remote backends, when the object already knows a complete single-blob version (it saved or
  read it), that version is fetched *while* the prefix is listed
  (:meth:`~flyte_ray.storage.ObjectStore.fetch_while_listing`), and the result is kept only if
  the listing confirms it is still the newest complete version; otherwise it is discarded and the
  normal path runs on that listing. That takes the listing off the critical path of the common
  save-then-restore pattern (on S3: one LIST and one GET, concurrently).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import secrets
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..storage import Entry, ObjectStore
from .layout import DEFAULT_BLOB_NAME, data_key, is_safe_name
from .versions import Versions

logger = logging.getLogger(__name__)

T = TypeVar("T")


def resolve_and(
    versions: Versions,
    list_vids: Callable[[], list[str]],
    fetch: Callable[[dict[str, Any]], T | None],
    discard: Callable[[T], None] | None = None,
    warm: Callable[[dict[str, Any]], tuple[T | None | BaseException, list[Entry] | BaseException]] | None = None,
) -> T | None:
    """Apply ``fetch`` to complete versions, newest first, until one succeeds (module docstring).

    ``fetch(m)`` returns None (or raises FileNotFoundError) when version ``m`` turns out damaged
    or deleted. ``list_vids()`` lists the prefix afresh. ``warm(m)``: the same fetch overlapped
    with a listing, returning both results (exceptions as values); ``discard`` undoes a fetch
    whose version the listing did not confirm.
    """
    listed: list[str] | None = None
    guess = versions.guess()
    if warm is not None and versions.store.is_remote and guess is not None and guess["kind"] == "bytes":
        got, entries = warm(guess)
        out: T | None = None
        if isinstance(got, BaseException):
            if not isinstance(got, FileNotFoundError):
                # Not fatal: the path below fetches the newest version again.
                logger.warning("fetching checkpoint %s failed: %r", guess["url"], got)
        else:
            out = got
        if isinstance(entries, BaseException):
            if out is not None and discard is not None:
                discard(out)
            raise entries
        listed = versions.apply_listing(entries)
        newest = next(versions.complete_newest_first(listed), None)
        if newest is not None and newest["version"] == guess["version"] and out is not None:
            return out
        if out is not None and discard is not None:
            discard(out)
    for _ in range(2):
        failed = False
        for m in versions.complete_newest_first(listed if listed is not None else list_vids()):
            try:
                out = fetch(m)
            except FileNotFoundError:
                out = None
            if out is not None:
                return out
            failed = True
            logger.warning("checkpoint %s is damaged or vanished; trying an older one", m["url"])
            versions.markers.pop(m["version"], None)
        if not failed:
            break
        listed = None
    return None


def blob_target(m: dict[str, Any], dest: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Where a single-blob version lands: its final path, and the temporary name it is fetched
    under (renamed onto the final one only once the version is confirmed)."""
    name = m["name"] if is_safe_name(m.get("name")) else DEFAULT_BLOB_NAME
    return dest / name, dest / f".{name}.{secrets.token_hex(4)}.partial"


@contextlib.contextmanager
def removed_on_error(path: pathlib.Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def if_complete(final: pathlib.Path, partial: pathlib.Path, size: int) -> tuple[pathlib.Path, pathlib.Path] | None:
    """``(final, partial)`` when the fetched file has the version's size, else removed and None."""
    if partial.stat().st_size == size:
        return final, partial
    partial.unlink(missing_ok=True)
    return None


def download(
    store: ObjectStore, m: dict[str, Any], dest: pathlib.Path
) -> tuple[pathlib.Path, pathlib.Path | None] | None:
    """Fetch version ``m`` into ``dest``: ``(result path, partial file to rename onto it)``, or
    None when the version is damaged (see :func:`blob_target` for the partial file)."""
    data = data_key(m)
    if m["kind"] == "bytes":
        final, partial = blob_target(m, dest)
        with removed_on_error(partial):
            store.get_file(data, partial, size=m["size"])
        return if_complete(final, partial, m["size"])
    # Directory: one recursive listing, then an explicit list of transfers.
    found = store.find(data)
    keys: list[str] = []
    lpaths: list[str] = []
    dest_abs = dest.resolve()
    prefix = data + "/"
    for key in found:
        rel = key[len(prefix) :] if key.startswith(prefix) else key.rsplit("/", 1)[-1]
        lp = (dest_abs / rel).resolve()
        # Object keys may contain "..": never write outside dest.
        if dest_abs != lp and dest_abs not in lp.parents:
            logger.warning("skipping checkpoint entry outside the restore dir: %s", store.url_of(key))
            continue
        lp.parent.mkdir(parents=True, exist_ok=True)
        keys.append(key)
        lpaths.append(str(lp))
    if len(keys) != m.get("files", len(keys)):
        return None
    if keys:
        store.get_files(keys, lpaths, size=m["size"])
    if sum(os.path.getsize(p) for p in lpaths) != m["size"]:
        return None
    return dest, None


def warm_read(
    store: ObjectStore, m: dict[str, Any]
) -> tuple[bytes | None | BaseException, list[Entry] | BaseException]:
    """:func:`resolve_and`'s ``warm`` for reading a blob into memory."""
    got, entries = store.fetch_while_listing(data_key(m), "", size=m["size"])
    if isinstance(got, bytes) and len(got) != m["size"]:
        got = None
    return got, entries


def warm_download(
    store: ObjectStore, m: dict[str, Any], dest: pathlib.Path
) -> tuple[tuple[pathlib.Path, pathlib.Path] | None | BaseException, list[Entry] | BaseException]:
    """:func:`resolve_and`'s ``warm`` for restoring a blob into ``dest`` (as :func:`download`)."""
    dest.mkdir(parents=True, exist_ok=True)
    final, partial = blob_target(m, dest)
    with removed_on_error(partial):
        got, entries = store.fetch_while_listing(data_key(m), "", lpath=partial, size=m["size"])
    if isinstance(got, BaseException):
        partial.unlink(missing_ok=True)
        return got, entries
    return if_complete(final, partial, m["size"]), entries
