"""The helper thread of one save: the listing a save needs, and retiring old versions.

Rules:

* The listing (to check that the new id really is the newest, and to prune) runs while the
  payload uploads; the save waits for it before it commits and re-raises what it raised. An
  object that has listed the prefix before passes what it knows instead: no listing at all.
* Retirees are the complete versions beyond the newest ``keep`` (counting the one being saved)
  and the incomplete versions older than it.
* Nothing is deleted before the save has committed (deleting while the payload uploads would
  compete with it for the same connections, server and CPU), and nothing past the commit point
  if the save failed: no crash can leave zero complete versions. Versions the save itself wants
  gone (an upload superseded or not confirmed) are deleted in either case.
* The first save of a checkpoint object also aborts incomplete multipart uploads under the prefix
  older than ``sweep`` seconds (what killed writers left, see :mod:`.save`), after the commit.
* Best-effort: errors are logged, never raised. The save does not wait for the deletes; the next
  operation on the same checkpoint object does (``Checkpoint.flush``). Pruning interrupted by the
  process exiting is finished by a later save.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .versions import Versions

logger = logging.getLogger(__name__)


class PruneJob:
    """Lists the prefix for one save (unless ``known`` already says what is there) and retires
    old versions once the save has finished (see the module docstring)."""

    def __init__(
        self,
        versions: Versions,
        list_vids: Callable[[], list[str]],
        keep: int,
        vid: str,
        known: list[str] | None,
        sweep: float | None = None,
    ):
        self._versions = versions
        self._sweep = sweep
        self._list_vids = list_vids
        self._keep = keep
        self._vid = vid
        self._known = known
        self._listed = threading.Event()
        self._listing: list[str] = known or []
        if known is not None:
            self._listed.set()
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._committed = False
        self._extra: list[tuple[str, dict[str, Any] | None]] = []
        self.thread = threading.Thread(target=self._run, name="flyte-ray-checkpoint-prune", daemon=True)

    # called by the saving thread

    def listing(self) -> list[str]:
        """Version ids listed while the payload uploaded (raises what the listing raised)."""
        self._listed.wait()
        if self._error is not None:
            raise self._error
        return self._listing

    def also_delete(self, vid: str, m: dict[str, Any] | None = None) -> None:
        """A version of this save that must go too (after ``finish``): an incomplete one, or
        (``m`` given) a single object superseded before the save returned."""
        self._extra.append((vid, m))

    def finish(self, committed: bool, vid: str) -> None:
        self._committed = committed
        self._vid = vid
        self._done.set()

    # the helper thread

    def _run(self) -> None:
        versions = self._versions
        first_vid = self._vid
        if self._known is not None:
            listed = self._known
        else:
            try:
                listed = self._list_vids()
            except BaseException as e:  # noqa: BLE001 -- re-raised in the saving thread
                self._error = e
                self._listed.set()
                self._done.wait()
                self._delete(self._extra)
                return
            self._listing = listed
            self._listed.set()
        try:
            complete: list[tuple[str, dict[str, Any]]] = []
            incomplete: list[str] = []
            for v in sorted(listed, reverse=True):
                if v == first_vid:
                    continue
                m = versions.marker(v)
                if m is not None:
                    complete.append((v, m))
                elif v < first_vid:
                    incomplete.append(v)
        except Exception as e:  # noqa: BLE001 -- e.g. a network error reading a marker
            logger.warning("not pruning old checkpoints under %s: %s", versions.url, e)
            complete, incomplete = [], []
        keep_old = self._keep - 1  # complete versions to keep besides the new one
        self._done.wait()
        if self._committed:
            doomed: list[tuple[str, dict[str, Any] | None]] = [(v, None) for v in incomplete]
            self._delete(doomed + list(complete[keep_old:]))
        self._delete(self._extra)
        if self._sweep is not None:
            versions.store.abort_stale_uploads("", older_than=self._sweep)

    def _delete(self, doomed: list[tuple[str, dict[str, Any] | None]]) -> None:
        versions = self._versions
        for v, m in doomed:
            versions.forget(v)
            try:
                versions.delete(v, m)
            except Exception as e:  # noqa: BLE001 -- pruning must never fail a save
                logger.warning("could not delete old checkpoint %s: %s", versions.vurl(v), e)
