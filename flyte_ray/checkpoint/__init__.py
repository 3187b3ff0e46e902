"""Durable, crash-safe task checkpoints on any fsspec storage (local, ``memory://``, S3, GCS, ...).

* :class:`Checkpoint` -- the checkpoint of **one task call across all of its attempts**. A retry
  (after preemption, a crash, an OOM) builds a new :class:`Checkpoint` on the same URL and sees
  the newest *complete* checkpoint written by any earlier attempt.
* :class:`Storage` -- :class:`flyte_ray.storage.Storage` (where flyte-ray keeps its durable data,
  and how user-supplied names become keys that can never leave the storage root) plus
  :meth:`Storage.checkpoint`, which builds a task call's :class:`Checkpoint`.

All object I/O goes through :class:`flyte_ray.storage.ObjectStore`; this package holds the
checkpoint semantics only, one concept per module:

* :mod:`.layout` -- version ids, keys, commit markers (pure).
* :mod:`.versions` -- what one object knows about the prefix: listings, markers, deleting versions.
* :mod:`.save` -- upload steps and the commit; :mod:`.prune` -- the save's helper thread (listing,
  retiring old versions).
* :mod:`.restore` -- finding the newest complete version and fetching it.
* :mod:`.api` -- the public class; :mod:`.syncaio` -- its sync + ``.aio`` methods.

Layout under a checkpoint prefix::

    <prefix>/<version>/data/<payload or directory tree>
    <prefix>/<version>/_COMPLETE        <- JSON commit marker, written LAST
    <prefix>/<version>.<file name>      <- S3 only: a single blob saved without metadata

where ``<version>`` is ``<time_ns, 20 digits>-<8 random hex digits>``, e.g.
``01795603878385555316-3fa2c01e``: string order is age order, so "newest" is the largest id.

Crash safety
------------
Object stores have no atomic rename, so a version is never "moved into place". Instead every
save goes to a fresh, versioned folder and the small ``_COMPLETE`` marker is written last, after
the whole payload, with :meth:`ObjectStore.put_atomic <flyte_ray.storage.ObjectStore.put_atomic>`:
one PUT on S3/GCS (an object is either fully there or absent; a killed multipart upload never
becomes visible), a temporary file renamed into place locally. (A truncated or foreign marker
would still fail to parse and count as absent.) Readers only ever consider versions with a
parseable marker, so a process killed at any point of a save leaves the previous complete
checkpoint as the newest readable one. The marker also records the payload size, which restores
verify without extra requests: a version whose payload disappeared or was truncated (e.g. by a
concurrent pruner) is skipped in favour of the next older complete one.

On S3 the same atomicity makes a marker unnecessary for a single blob (a file, ``bytes`` or a
stream) saved without ``metadata``: it is written as one object, ``<prefix>/<version>.<name>``,
which *is* the commit point -- present means complete. A killed upload (single PUT or multipart)
never becomes visible; a failed stream is discarded (its multipart upload aborted), never
closed. Such a version's marker is made from the listing (name and size from the key and the
listing, ``created`` from the version id, ``metadata`` None), so it costs no marker write on save
and no marker read on restore. Directory checkpoints and saves with metadata keep the folder
layout. (GCS and Azure blobs are just as atomic, but untested here, so they keep it too.)

Version ids are chosen without reading the store: the random suffix makes them unique, so a save
never writes into anyone's half-written folder, and the time part is forced above every id the
object has already seen. The one listing a save needs (to prune, and to make sure its id really
is the newest) runs while the payload uploads; if it shows a version that sorts after the new id
(a writer whose clock ran ahead), the payload is uploaded again under a newer id before the
commit (a stream, which cannot be replayed, fails with RuntimeError instead), so a committed save
is always the newest version. (A single object has committed by then; it is deleted again once
the re-upload has committed, and is in any case older than the version that superseded it.)
Once an object has listed the prefix it keeps track of the versions itself (one writer at a time
per URL is assumed), so its later saves issue no listing at all.

After the commit, each save retires complete versions beyond the newest ``keep`` and incomplete
versions older than the new one, best-effort (errors are logged, never raised), in a background
thread that :meth:`Checkpoint.save` does not wait for; the next call on the same object (or
:meth:`Checkpoint.flush`) does. Nothing is deleted before the commit, so no crash can leave zero
complete versions; pruning interrupted by the process exiting is finished by a later save.
Versions are deleted marker-first where the backend allows it; where a bulk delete removes marker
and payload together, size verification covers the gap.

Finding the newest checkpoint costs one ``ls`` of the prefix plus one small GET of its marker
(markers are immutable, so they are cached per object; single-object versions need none). Every
read lists afresh, so a retry's save is visible to an object made by an earlier attempt. On
remote backends, when the object already knows the newest single-blob version (it saved or read
it), :meth:`Checkpoint.restore` and :meth:`Checkpoint.read` fetch that version *while* listing,
and keep the result only if the listing confirms it is still the newest complete one (a restore
downloads to a temporary name and renames it into place only then).

S3 requests, per operation (s3fs adds none of its own HEADs or parent listings on these paths):

* save, single blob without metadata: one PUT (or one multipart upload), plus one LIST, in
  parallel, on an object's first save only; pruning afterwards: one DELETE per retired version.
* save with metadata, or a directory: the payload, then one PUT of the marker.
* restore / read by an object that knows the newest version: one LIST and one GET, concurrently
  (blobs up to s3fs's block size -- 50 MiB -- are fetched with a single GET read up to 4 MiB
  at a time, the LIST sent once the GET's response has begun; larger ones with s3fs's
  concurrent ranged GETs).
* restore / read by a fresh object (a retry): one LIST, then one GET (plus one marker GET for a
  folder version).

Two API styles on one object
----------------------------
*flytekit style* (``flytekit.Checkpoint``): :meth:`~Checkpoint.prev_exists`,
:meth:`~Checkpoint.read`, :meth:`~Checkpoint.write`, :meth:`~Checkpoint.save`,
:meth:`~Checkpoint.restore` -- all synchronous.

*flyte-sdk (v2) style* (``flyte._checkpoint.AsyncCheckpoint``): there, ``load`` and ``save`` are
wrapped with ``flyte.syncify``: calling ``cp.save(x)`` / ``cp.load()`` blocks, and
``await cp.save.aio(x)`` / ``await cp.load.aio()`` is the async form; ``save_sync``/``load_sync``
are explicit blocking forms and ``cp.path`` is a local workspace directory that ``load`` fills.
We mirror exactly that shape, which is also what makes the two styles coexist without a name
clash: ``save`` is synchronous (as flytekit expects) *and* has an ``.aio`` attribute (as
flyte-sdk expects). No awaitable-detection magic is involved: ``.aio`` is a plain coroutine
function that runs the blocking implementation in a worker thread (fsspec's sync API streams
and does not hold the event loop). For people who prefer plain names, ``save_async`` and
``load_async`` are the same coroutines.

Differences from flyte-sdk worth knowing: a directory is stored as a tree of objects (not a
gzip tarball) so it streams file by file and restores without an extraction step, and
``prev_exists()`` means "a complete checkpoint exists", not "the runtime passed a previous
checkpoint URI".
"""

from ..storage import DEFAULT_STORAGE_DIR, sanitize_component
from . import layout  # noqa: F401 -- ``flyte_ray.checkpoint.layout``: the format, for tests and tools
from .api import Checkpoint, Storage, checkpoint_for

__all__ = ["DEFAULT_STORAGE_DIR", "Checkpoint", "Storage", "checkpoint_for", "sanitize_component"]
