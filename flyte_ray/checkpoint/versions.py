"""What one :class:`~flyte_ray.checkpoint.Checkpoint` object knows about its prefix's versions.

Rules:

* A version is *complete* when it has a valid marker (:mod:`.layout`); only complete versions are
  ever read. Markers are immutable once written, so they are cached per object; a cached entry is
  dropped when this object deletes its version or finds its payload damaged or gone.
* Markers are untrusted: one that exists but fails :func:`~.layout.check_marker` is skipped (the
  version counts as incomplete, so readers fall back to the next older complete one) with one
  warning per version and object, naming the version and why; it is never followed.
* Every read lists afresh (one ``ls`` of the prefix): another attempt's saves must be visible.
  Where single-object versions exist (atomic-write backends), the listing's sizes come along and
  their markers are made from it: such a version costs no marker read.
* Once the object has listed the prefix, it keeps the set of version ids up to date itself
  through its own saves and deletes (one writer at a time per URL is assumed), which is what lets
  a warm save skip the listing. ``known_max`` is the highest id seen (listed or written): new ids
  sort above it.
* Deleting a version removes its marker first where the backend allows it, so that it stops
  being readable before its data goes. Where one bulk request removes marker and payload together
  (object stores), order does not matter: a marker whose payload is gone fails size verification.

Not thread-safe by itself: the owning checkpoint serialises saves with a lock, and its background
prune job touches these maps only for versions no reader is about to use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from ..storage import Entry, ObjectStore
from .layout import (
    OBJ_RE,
    VID_RE,
    check_marker,
    data_key,
    is_safe_name,
    marker_key,
    new_vid,
    object_marker,
    with_location,
)

logger = logging.getLogger(__name__)


class Versions:
    """The version ids and markers under one checkpoint prefix, as far as this object knows."""

    def __init__(self, store: ObjectStore, url: str):
        self.store = store
        self.url = url
        # version id -> marker dict (see the module docstring for when entries go).
        self.markers: dict[str, dict[str, Any]] = {}
        # Highest version id this object has seen (listed or written): new ids sort above it.
        self.known_max: str | None = None
        # Version ids known to exist (complete or not), each mapped to ``(file name, size)`` for
        # a single-object version and to None for a version folder: None until the prefix is
        # first listed, then kept up to date by every listing, save and delete of this object.
        self.vids: dict[str, tuple[str, int] | None] | None = None
        # Versions whose marker was found invalid (warned about once).
        self.rejected: set[str] = set()
        # Whether this object's first save has been made (it sweeps stale multipart uploads).
        self.saved = False

    def vurl(self, vid: str) -> str:
        return f"{self.url}/{vid}"

    def new_vid(self) -> str:
        """A fresh version id, newer than every id seen (and noted as seen)."""
        vid = new_vid(self.known_max)
        self.note(vid)
        return vid

    def note(self, vid: str) -> None:
        if self.known_max is None or vid > self.known_max:
            self.known_max = vid

    # ---- listings -----------------------------------------------------------------------

    def list_vids(self) -> list[str]:
        """All version ids under the prefix (complete or not), ascending. One listing (S3: one
        LIST). The sizes come along only where single-object versions can exist."""
        store = self.store
        entries: Sequence[Entry | str] = (
            store.list("", detail=True) if store.atomic_writes else store.list("", detail=False)
        )
        return self.apply_listing(entries)

    def apply_listing(self, entries: Sequence[Entry | str]) -> list[str]:
        """Record a listing of the prefix (keys, or :class:`Entry` with sizes); return its
        version ids, ascending."""
        objects = self.store.atomic_writes
        found: dict[str, tuple[str, int] | None] = {}
        for e in entries:
            key = e if isinstance(e, str) else e.key
            name = key.rstrip("/").rsplit("/", 1)[-1]
            if VID_RE.fullmatch(name):
                found.setdefault(name, None)
            elif objects and not isinstance(e, str) and not e.is_dir:
                mo = OBJ_RE.fullmatch(name)
                if mo is not None and is_safe_name(mo.group(2)):
                    found[mo.group(1)] = (mo.group(2), int(e.size or 0))
        out = sorted(found)
        if out:
            self.note(out[-1])
        for vid, obj in found.items():
            if obj is not None and vid not in self.markers:
                self.markers[vid] = object_marker(self.url, vid, *obj)
        self.vids = found
        return out

    # ---- markers ------------------------------------------------------------------------

    def marker(self, vid: str) -> dict[str, Any] | None:
        """The marker of ``vid``, or None if it is absent or not valid (one small GET at most)."""
        cached = self.markers.get(vid)
        if cached is not None:
            return cached
        obj = self.vids.get(vid) if self.vids is not None else None
        if obj is not None:
            # A single-object version: complete by construction, its marker is its listing.
            m = object_marker(self.url, vid, *obj)
        else:
            raw = self.store.get(marker_key(vid))
            if raw is None:
                return None  # not committed (yet): incomplete
            parsed = check_marker(raw, vid)
            if isinstance(parsed, str):
                if vid not in self.rejected:
                    self.rejected.add(vid)
                    logger.warning("skipping checkpoint %s: its marker is not valid (%s)", self.vurl(vid), parsed)
                return None
            m = with_location(self.url, parsed)
        self.markers[vid] = m
        return m

    def complete_newest_first(self, vids: list[str]) -> Iterator[dict[str, Any]]:
        """Markers of the complete versions among ``vids``, newest first (reading markers lazily)."""
        for vid in sorted(vids, reverse=True):
            m = self.marker(vid)
            if m is not None:
                yield m

    def guess(self) -> dict[str, Any] | None:
        """The newest version this object knows to be complete without listing (it saved or
        read it), or None."""
        return self.markers.get(max(self.markers)) if self.markers else None

    # ---- saving and deleting ------------------------------------------------------------

    def added(self, vid: str, marker: dict[str, Any], obj: tuple[str, int] | None) -> None:
        """Record a version this object has just committed."""
        self.markers[vid] = marker
        if self.vids is not None:
            self.vids[vid] = obj

    def forget(self, vid: str) -> None:
        self.markers.pop(vid, None)
        if self.vids is not None:
            self.vids.pop(vid, None)

    def delete(self, vid: str, m: dict[str, Any] | None) -> None:
        """Delete version ``vid`` (``m``: its marker when known). Missing parts are no error."""
        store = self.store
        if m is not None and m.get("layout") == "object":
            store.delete(data_key(m))  # one object: no marker to go first
            return
        if m is not None and m["kind"] == "bytes" and store.is_remote:
            # Object store, keys known from the marker: one bulk delete instead of
            # delete-marker + list + delete (see the module docstring on order).
            store.delete_many([marker_key(vid), data_key(m)])
            return
        if m is not None:
            # Marker first: the version stops being readable before its data goes.
            store.delete(marker_key(vid))
        store.delete_tree(vid)
