"""Durable, crash-safe task checkpoints on any fsspec storage (local, ``memory://``, S3, GCS, ...).

Two classes:

* :class:`Storage` -- where flyte-ray keeps its durable data (a URL plus fsspec options), and how
  user-supplied names (run name, task name, call id) are turned into keys that can never leave
  the storage root.
* :class:`Checkpoint` -- the checkpoint of **one task call across all of its attempts**. A retry
  (after preemption, a crash, an OOM) builds a new :class:`Checkpoint` on the same URL and sees
  the newest *complete* checkpoint written by any earlier attempt.

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
the whole payload. Writing one small object is atomic on S3/GCS (an object is either fully there
or absent; a killed multipart upload never becomes visible) and is treated as such locally (a
truncated marker fails to parse and counts as absent). Readers only ever consider versions with a
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
the re-upload has committed, and is in any case older than the version that superseded it.) Once an object has listed the prefix it keeps track of the versions
itself (one writer at a time per URL is assumed), so its later saves issue no listing at all.

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

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import tempfile
import threading
import time
from typing import IO, Any, Awaitable, Callable, Generic, Iterator, TypeVar

import fsspec
import fsspec.asyn
from fsspec.spec import AbstractFileSystem

logger = logging.getLogger(__name__)

__all__ = ["Storage", "Checkpoint", "sanitize_component", "DEFAULT_STORAGE_DIR"]

#: Local fallback root when neither a URL nor ``FLYTE_RAY_STORAGE`` is given.
DEFAULT_STORAGE_DIR = "~/.flyte-ray/storage"
ENV_STORAGE = "FLYTE_RAY_STORAGE"
ENV_STORAGE_OPTIONS = "FLYTE_RAY_STORAGE_OPTIONS"

MARKER_NAME = "_COMPLETE"
DATA_DIR = "data"
DEFAULT_BLOB_NAME = "payload"
MARKER_FORMAT = 2
# 8 MiB: large enough to keep object-store request counts low, small enough to bound memory.
CHUNK_SIZE = 8 * 2**20
# Version ids: ``<time_ns, 20 digits>-<8 random hex digits>``; string order is age order.
_NS_DIGITS = 20
_VID_RE = re.compile(r"\d{20}-[0-9a-f]{8}")
# A single-object version: ``<version>.<file name>`` directly under the prefix.
_OBJ_RE = re.compile(r"(\d{20}-[0-9a-f]{8})\.(.+)")
# Backends where writing one object is atomic -- it is either entirely there or absent, and a
# killed (multipart) upload never becomes visible -- so a single-blob save can be one object that
# is its own commit point. S3 (s3fs) only for now: GCS and Azure blobs have the same property but
# are not exercised by the tests here, so they keep the marker layout.
_ATOMIC_OBJECT_PROTOCOLS = frozenset({"s3", "s3a"})
# Largest read of flyte-ray's own single-GET S3 download (s3fs's get_file reads 64 KiB at a time);
# a read returns what has arrived, up to this, so it also bounds the memory a download holds.
_S3_READ_CHUNK = 4 * 2**20
_SAFE_RE = re.compile(r"[A-Za-z0-9._-]+")
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# Object keys may be 1024 bytes on S3 and file names 255 bytes on most local file systems.
_MAX_COMPONENT = 120

T = TypeVar("T")
# What an upload step returns: kind, blob name, size, file count, and for a single-object stream
# the function that commits (True) or discards (False) it; None where the upload is done.
_Uploaded = tuple[str, "str | None", int, int, "Callable[[bool], None] | None"]


# --------------------------------------------------------------------------------------------
# Key sanitisation
# --------------------------------------------------------------------------------------------


def sanitize_component(part: str) -> str:
    """Map one user-supplied name to a single, safe path component.

    Characters outside ``[A-Za-z0-9._-]`` are percent-encoded byte by byte (UTF-8, upper-case
    hex), ``.`` and ``..`` are encoded as ``%2E`` / ``%2E%2E``, and the empty string becomes
    ``%``. Because ``%`` itself is always encoded, the mapping is injective: distinct inputs give
    distinct components, and no output can contain ``/``, ``\\``, NUL, ``:`` or be ``..``.
    Components longer than 120 characters after encoding are cut and suffixed with ``%%`` and
    a 16-hex-digit SHA-256 of the input (``%%`` never occurs in an ordinary encoding).
    """
    if not isinstance(part, str):
        raise TypeError(f"storage key parts must be str, got {type(part).__name__}")
    if part == "":
        return "%"
    if part in (".", ".."):
        out = "%2E" * len(part)
    elif _SAFE_RE.fullmatch(part):
        out = part
    else:
        out = "".join(
            ch if ch in _SAFE_CHARS else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
            for ch in part
        )
    if len(out) > _MAX_COMPONENT:
        digest = hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        cut = out[: _MAX_COMPONENT - 18]
        # Do not leave half of a %XX escape at the end.
        tail = cut.rfind("%", len(cut) - 2)
        if tail != -1:
            cut = cut[:tail]
        out = cut + "%%" + digest
    return out


def _sanitize_path(part: str) -> list[str]:
    """Split a ``/``-separated hierarchical name and sanitise every component."""
    if not isinstance(part, str):
        raise TypeError(f"storage key parts must be str, got {type(part).__name__}")
    return [sanitize_component(p) for p in part.split("/")]


def _join(root: str, *components: str) -> str:
    """Join already-safe components under ``root`` (a URL or path) with ``/``."""
    base = root.rstrip("/")
    return "/".join([base, *components]) if components else base


def _load_env_options() -> dict[str, Any]:
    raw = os.environ.get(ENV_STORAGE_OPTIONS)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{ENV_STORAGE_OPTIONS} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{ENV_STORAGE_OPTIONS} must be a JSON object, got {type(value).__name__}")
    return value


def _normalize_url(url: str) -> str:
    """Make local paths absolute (workers may run in another cwd); leave remote URLs alone."""
    url = os.fspath(url)
    protocol = fsspec.utils.get_protocol(url)
    if protocol in ("file", "local"):
        path = url.split("://", 1)[1] if "://" in url else url
        return os.path.abspath(os.path.expanduser(path))
    return url


def _is_local_url(url: str) -> bool:
    return fsspec.utils.get_protocol(url) in ("file", "local")


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


class Storage:
    """Root location for flyte-ray's durable data (checkpoints now, caches later).

    Args:
        url: Any fsspec URL or local path (``s3://bucket/prefix``, ``gs://...``,
            ``memory://...``, ``/tmp/x``, ``file:///tmp/x``). Defaults to ``$FLYTE_RAY_STORAGE``,
            else ``~/.flyte-ray/storage``. Local paths are made absolute.
        options: fsspec storage options (e.g. ``{"endpoint_url": ..., "key": ..., "secret": ...}``
            for S3). Defaults to the JSON object in ``$FLYTE_RAY_STORAGE_OPTIONS``, else ``{}``.

    Picklable: the filesystem object is not pickled but rebuilt lazily on first use, because
    storage objects travel to Ray workers.
    """

    __slots__ = ("_url", "_options", "_fs")

    def __init__(self, url: str | os.PathLike[str] | None = None, options: dict[str, Any] | None = None):
        if url is None:
            url = os.environ.get(ENV_STORAGE) or DEFAULT_STORAGE_DIR
        self._url = _normalize_url(os.fspath(url)).rstrip("/") or "/"
        self._options: dict[str, Any] = dict(options) if options is not None else _load_env_options()
        self._fs: AbstractFileSystem | None = None

    @property
    def url(self) -> str:
        """Root URL (local paths are absolute paths without ``file://``)."""
        return self._url

    @property
    def options(self) -> dict[str, Any]:
        """fsspec storage options (a copy)."""
        return dict(self._options)

    @property
    def is_local(self) -> bool:
        """True for plain paths and ``file://`` URLs (not visible to other machines)."""
        return _is_local_url(self._url)

    @property
    def fs(self) -> AbstractFileSystem:
        """The fsspec filesystem for :attr:`url` (cached, rebuilt after unpickling)."""
        if self._fs is None:
            self._fs, _ = fsspec.core.url_to_fs(self._url, **self._options)
        return self._fs

    def prefix_url(self, *parts: str) -> str:
        """``<root>/<part>/<part>...``; each part may use ``/`` for hierarchy and is sanitised."""
        comps: list[str] = []
        for p in parts:
            comps.extend(_sanitize_path(p))
        return _join(self._url, *comps)

    def checkpoint_url(self, run_name: str, fqn: str, call_id: str) -> str:
        """Prefix for one task call's checkpoints: ``<root>/checkpoints/<run>/<fqn>/<call_id>``.

        ``run_name`` and ``fqn`` are single components (a ``/`` in them is encoded);
        ``call_id`` may contain ``/`` to express parent/child hierarchy.
        """
        return _join(
            self._url,
            "checkpoints",
            sanitize_component(run_name),
            sanitize_component(fqn),
            *_sanitize_path(call_id),
        )

    def checkpoint(self, run_name: str, fqn: str, call_id: str, *, keep: int = 2) -> Checkpoint:
        """Convenience: a :class:`Checkpoint` at :meth:`checkpoint_url` with these options."""
        return Checkpoint(self.checkpoint_url(run_name, fqn, call_id), options=self._options, keep=keep)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._url, "options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._url = state["url"]
        self._options = state["options"]
        self._fs = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Storage):
            return NotImplemented
        return self._url == other._url and self._options == other._options

    def __hash__(self) -> int:
        return hash(self._url)

    def __repr__(self) -> str:
        # Options may hold secrets: show only their keys.
        return f"Storage({self._url!r}, options_keys={sorted(self._options)})"


# --------------------------------------------------------------------------------------------
# sync + .aio methods (the shape of flyte-sdk's @syncify)
# --------------------------------------------------------------------------------------------


class _BoundSyncAio(Generic[T]):
    """A bound method callable synchronously, with ``.aio(...)`` as its awaitable form."""

    __slots__ = ("_fn", "_obj")

    def __init__(self, fn: Callable[..., T], obj: Any):
        self._fn = fn
        self._obj = obj

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self._fn.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return self._fn(self._obj, *args, **kwargs)

    def aio(self, *args: Any, **kwargs: Any) -> Awaitable[T]:
        """Run the blocking implementation in a worker thread and await it."""
        return asyncio.to_thread(self._fn, self._obj, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<sync+aio method {self._fn.__qualname__} of {self._obj!r}>"


class _sync_aio(Generic[T]):
    """Descriptor: ``obj.m(...)`` blocks, ``await obj.m.aio(...)`` is async (like ``flyte.syncify``)."""

    def __init__(self, fn: Callable[..., T]):
        self._fn = fn
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return _BoundSyncAio(self._fn, obj)


# --------------------------------------------------------------------------------------------
# Checkpoint
# --------------------------------------------------------------------------------------------



def _blob_target(m: dict[str, Any], dest: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Where a single-blob version lands: its final path, and the temporary name it is fetched
    under (renamed onto the final one only once the version is confirmed)."""
    name = m["name"] if _is_safe_name(m.get("name")) else DEFAULT_BLOB_NAME
    return dest / name, dest / f".{name}.{secrets.token_hex(4)}.partial"


@contextlib.contextmanager
def _removed_on_error(path: pathlib.Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _if_complete(final: pathlib.Path, partial: pathlib.Path, size: int) -> tuple[pathlib.Path, pathlib.Path] | None:
    """``(final, partial)`` when the fetched file has the version's size, else removed and None."""
    if partial.stat().st_size == size:
        return final, partial
    partial.unlink(missing_ok=True)
    return None

class Checkpoint:
    """Versioned, crash-safe checkpoint of one task call, shared by all of its attempts.

    Args:
        url: checkpoint prefix, normally from :meth:`Storage.checkpoint_url`, or any fsspec URL /
            local path for standalone use. ``url`` is not sanitised: it is trusted.
        options: fsspec storage options (default: ``$FLYTE_RAY_STORAGE_OPTIONS`` or ``{}``).
        keep: number of complete versions to retain (>= 1).

    Picklable (the filesystem, lock and local workspace are rebuilt on the other side). One
    writer at a time per URL is assumed; saves from several threads of one process are
    serialised by a lock.
    """

    def __init__(self, url: str | os.PathLike[str], *, options: dict[str, Any] | None = None, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._url = _normalize_url(os.fspath(url)).rstrip("/") or "/"
        self._options: dict[str, Any] = dict(options) if options is not None else _load_env_options()
        self._keep = int(keep)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._fs_obj: AbstractFileSystem | None = None
        self._root: str = ""
        self._lock = threading.RLock()
        # version id -> marker dict. Markers are immutable once written, so caching them is
        # safe; entries are dropped when this object deletes a version or finds it vanished.
        self._markers: dict[str, dict[str, Any]] = {}
        # Highest version id this object has seen (listed or written): new ids sort above it.
        self._known_max: str | None = None
        # Version ids known to exist (complete or not), each mapped to ``(file name, size)`` for
        # a single-object version and to None for a version folder: None until this object first
        # lists the prefix, then kept up to date by every listing, save and delete of this object.
        self._vids: dict[str, tuple[str, int] | None] | None = None
        # The helper thread of the last save (listing + best-effort pruning).
        self._bg: threading.Thread | None = None
        self._workspace: tempfile.TemporaryDirectory[str] | None = None
        self._loaded: tuple[str, pathlib.Path] | None = None

    # ---- pickling -----------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._url, "options": self._options, "keep": self._keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._url = state["url"]
        self._options = state["options"]
        self._keep = state["keep"]
        self._init_runtime()

    def __repr__(self) -> str:
        return f"Checkpoint({self._url!r}, keep={self._keep})"

    # ---- basic properties ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The checkpoint prefix."""
        return self._url

    @property
    def keep(self) -> int:
        return self._keep

    @property
    def options(self) -> dict[str, Any]:
        return dict(self._options)

    @property
    def fs(self) -> AbstractFileSystem:
        """The fsspec filesystem (cached, rebuilt lazily after unpickling)."""
        if self._fs_obj is None:
            self._fs_obj, self._root = fsspec.core.url_to_fs(self._url, **self._options)
            self._root = self._root.rstrip("/")
        return self._fs_obj

    @property
    def remote_destination(self) -> str:
        """flyte-sdk name for the prefix that :meth:`save` writes under (same as :attr:`url`)."""
        return self._url

    @property
    def remote_source(self) -> str | None:
        """flyte-sdk name: URL of the newest complete version's folder, or None."""
        m = self.latest()
        return m["url"] if m else None

    @property
    def path(self) -> pathlib.Path:
        """Local workspace directory that :meth:`load` restores into (flyte-sdk style).

        A per-object temporary directory, removed when the object is garbage collected.
        """
        if self._workspace is None:
            self._workspace = tempfile.TemporaryDirectory(prefix="flyte-ray-cp-")
        p = pathlib.Path(self._workspace.name)
        p.mkdir(parents=True, exist_ok=True)
        return p

    # ---- internal paths -----------------------------------------------------------------

    def _vpath(self, vid: str) -> str:
        self.fs  # noqa: B018 -- ensures _root is set
        return f"{self._root}/{vid}"

    def _vurl(self, vid: str) -> str:
        return f"{self._url}/{vid}"

    def _blob_path(self, vid: str, name: str, single: bool) -> str:
        """Where a single blob of version ``vid`` goes: ``<prefix>/<vid>.<name>`` for a
        single-object version, ``<prefix>/<vid>/data/<name>`` in a version folder."""
        return f"{self._root}/{vid}.{name}" if single else f"{self._vpath(vid)}/{DATA_DIR}/{name}"

    def _data_path(self, m: dict[str, Any]) -> str:
        """The payload of version ``m``: the blob, or the folder of a directory checkpoint."""
        if m.get("layout") == "object":
            return self._blob_path(m["version"], m["name"], True)
        data = f"{self._vpath(m['version'])}/{DATA_DIR}"
        return f"{data}/{m['name']}" if m["kind"] == "bytes" else data

    def _object_marker(self, vid: str, name: str, size: int) -> dict[str, Any]:
        """The marker of a single-object version, made from its listing entry."""
        return {
            "format": MARKER_FORMAT,
            "version": vid,
            "kind": "bytes",
            "name": name,
            "size": size,
            "files": 1,
            "created": int(vid[:_NS_DIGITS]) / 1e9,
            "metadata": None,
            "layout": "object",
            "url": f"{self._url}/{vid}.{name}",
        }

    @property
    def _remote(self) -> bool:
        """True for backends where a request costs a network round trip (not local, not memory)."""
        return fsspec.utils.get_protocol(self._url) not in ("file", "local", "memory")

    @property
    def _atomic(self) -> bool:
        """True where one object write is atomic, so a single blob can be its own commit."""
        return fsspec.utils.get_protocol(self._url) in _ATOMIC_OBJECT_PROTOCOLS

    @property
    def _s3(self) -> bool:
        """True when :attr:`fs` is s3fs (flyte-ray then issues some GETs itself, see :func:`_s3_get_file`)."""
        return self._atomic and hasattr(self.fs, "_call_s3")

    # ---- transfers ----------------------------------------------------------------------

    def _cat(self, path: str) -> bytes:
        """Whole content of one object."""
        if self._s3:
            # s3fs's cat_file asks for the size first (a HEAD) to decide on ranged reads; one GET
            # is all a marker or a checkpoint read by ``read()`` needs.
            return fsspec.asyn.sync(self.fs.loop, _s3_cat, self.fs, path)
        return self.fs.cat_file(path)

    def _get_blob(self, path: str, lpath: str, size: int) -> None:
        """Download one object of (expected) ``size`` bytes to the local file ``lpath``."""
        fs = self.fs
        if self._s3 and size <= getattr(fs, "default_block_size", 0):
            # Objects s3fs itself would fetch with one streamed GET: do that GET here, reading
            # up to 4 MiB at a time (s3fs reads 64 KiB), which costs less CPU per byte. The
            # response checksum is validated as in s3fs (same botocore client).
            try:
                fsspec.asyn.sync(fs.loop, _s3_get_file, fs, path, lpath)
                return
            except FileNotFoundError:
                raise
            except Exception as e:  # noqa: BLE001 -- s3fs's get_file resumes broken reads
                logger.warning("single-GET download of %s failed (%s); retrying with get_file", path, e)
        fs.get_file(path, lpath)

    # ---- background work ----------------------------------------------------------------

    def _wait_background(self) -> None:
        """Let this object's previous save finish its (best-effort) pruning first, so that the
        object's own view of the prefix is settled. Normally already done."""
        bg = self._bg
        if bg is not None and bg is not threading.current_thread():
            bg.join()
            self._bg = None

    def flush(self) -> None:
        """Wait until the best-effort pruning started by this object's last save is done.

        :meth:`save` returns at its commit point and retires old versions in a background
        thread; every later call on the same object waits for that first, so this is only
        needed to make sure the deletes happen before the process exits, or to time a save
        without its pruning spilling into whatever runs next.
        """
        self._wait_background()

    # ---- listing / resolution -------------------------------------------------------------

    def _new_vid(self) -> str:
        """A fresh version id: newer than every id this object has seen, unique without a read."""
        ns = time.time_ns()
        if self._known_max is not None:
            ns = max(ns, int(self._known_max[:_NS_DIGITS]) + 1)
        vid = f"{ns:0{_NS_DIGITS}d}-{secrets.token_hex(4)}"
        self._note(vid)
        return vid

    def _note(self, vid: str) -> None:
        if self._known_max is None or vid > self._known_max:
            self._known_max = vid

    def _list_vids(self) -> list[str]:
        """All version ids under the prefix (complete or not), ascending. One ``ls``.

        Where single-object versions exist (:data:`_ATOMIC_OBJECT_PROTOCOLS`), the listing's
        sizes come along and their markers are made from it: such a version costs no marker read.
        """
        fs = self.fs
        if self._s3:
            return self._apply_listing(fsspec.asyn.sync(fs.loop, self._s3_list))
        detail = self._atomic
        # Object-store filesystems cache listings; a new attempt's writes must be visible.
        fs.invalidate_cache(self._root)
        try:
            entries = fs.ls(self._root, detail=detail)
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        return self._apply_listing(entries, detail)

    async def _s3_list(self) -> list[dict[str, Any]]:
        """One LIST request (s3fs's ``ls`` lists the parent as well when the prefix is empty),
        bypassing s3fs's listings cache (``refresh``): a new attempt's writes must be visible."""
        try:
            return await self.fs._lsdir(self._root, refresh=True)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _apply_listing(self, entries: list[Any], detail: bool = True) -> list[str]:
        """Record a listing of the prefix (``ls`` entries); return its version ids, ascending."""
        found: dict[str, tuple[str, int] | None] = {}
        for e in entries:
            path = e["name"] if detail else e
            name = str(path).rstrip("/").rsplit("/", 1)[-1]
            if _VID_RE.fullmatch(name):
                found.setdefault(name, None)
            elif detail and e.get("type") != "directory":
                mo = _OBJ_RE.fullmatch(name)
                if mo is not None and _is_safe_name(mo.group(2)):
                    found[mo.group(1)] = (mo.group(2), int(e.get("size") or 0))
        out = sorted(found)
        if out:
            self._note(out[-1])
        for vid, obj in found.items():
            if obj is not None and vid not in self._markers:
                self._markers[vid] = self._object_marker(vid, *obj)
        self._vids = found
        return out

    def _marker(self, vid: str) -> dict[str, Any] | None:
        """The parsed commit marker of ``vid``, or None if it is absent or not valid."""
        cached = self._markers.get(vid)
        if cached is not None:
            return cached
        obj = self._vids.get(vid) if self._vids is not None else None
        if obj is not None:
            # A single-object version: complete by construction, its marker is its listing.
            m = self._object_marker(vid, *obj)
            self._markers[vid] = m
            return m
        try:
            raw = self._cat(f"{self._vpath(vid)}/{MARKER_NAME}")
            m = json.loads(raw)
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None
        if not (isinstance(m, dict) and m.get("version") == vid and m.get("kind") in ("bytes", "dir")):
            return None
        m["layout"] = "folder"
        m["url"] = self._vurl(vid)
        self._markers[vid] = m
        return m

    def _complete_newest_first(self, vids: list[str] | None = None) -> Iterator[dict[str, Any]]:
        if vids is None:
            self._wait_background()
            vids = self._list_vids()
        for vid in sorted(vids, reverse=True):
            m = self._marker(vid)
            if m is not None:
                yield m

    def latest(self) -> dict[str, Any] | None:
        """Marker of the newest complete checkpoint (version, kind, size, files, name, created,
        metadata, url), or None when there is none."""
        return next(self._complete_newest_first(), None)

    def versions(self) -> list[dict[str, Any]]:
        """Markers of all complete checkpoints, oldest first."""
        return sorted(self._complete_newest_first(), key=lambda m: m["version"])

    def prev_exists(self) -> bool:
        """True when a complete checkpoint exists (from this or an earlier attempt)."""
        return self.latest() is not None

    # ---- saving -----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview, *, metadata: dict[str, Any] | None = None) -> None:
        """Save ``data`` as a new single-blob checkpoint (flytekit ``write``)."""
        data = bytes(data) if not isinstance(data, bytes) else data

        def upload(fs: AbstractFileSystem, vid: str, single: bool) -> _Uploaded:
            fs.pipe_file(self._blob_path(vid, DEFAULT_BLOB_NAME, single), data)
            return "bytes", DEFAULT_BLOB_NAME, len(data), 1, None

        self._commit(upload, metadata, blob=True)

    def _save(
        self,
        src: str | os.PathLike[str] | IO[bytes] | bytes,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Save a new checkpoint and make it the newest.

        ``src`` may be a file path (single-file checkpoint, the file name is kept), a directory
        path (the tree is uploaded file by file), a binary file-like object (streamed in 8 MiB
        chunks), or ``bytes`` (as :meth:`write`). ``metadata`` (JSON-serialisable) is stored in
        the commit marker and returned by :meth:`latest`.
        """
        if isinstance(src, (bytes, bytearray, memoryview)):
            self.write(src, metadata=metadata)
            return
        if hasattr(src, "read") and not isinstance(src, (str, os.PathLike)):
            self._commit(functools.partial(self._upload_reader, src), metadata, replayable=False, blob=True)  # type: ignore[arg-type]
            return
        local = pathlib.Path(os.fspath(src)).expanduser()
        if local.is_dir():
            self._commit(functools.partial(self._upload_dir, local), metadata)
        elif local.is_file():
            self._commit(functools.partial(self._upload_file, local), metadata, blob=True)
        else:
            raise FileNotFoundError(f"checkpoint source does not exist: {local}")

    def _makedirs_if_local(self, fs: AbstractFileSystem, *dirs: str) -> None:
        # LocalFileSystem does not create parents on put/open (auto_mkdir=False); object stores
        # have no directories, so only do it where it matters.
        if _is_local_url(self._url):
            for d in dirs:
                fs.makedirs(d, exist_ok=True)

    def _upload_file(self, local: pathlib.Path, fs: AbstractFileSystem, vid: str, single: bool) -> _Uploaded:
        name = local.name if _is_safe_name(local.name) else DEFAULT_BLOB_NAME
        size = local.stat().st_size
        fs.put_file(str(local), self._blob_path(vid, name, single))
        return "bytes", name, size, 1, None

    def _upload_reader(self, reader: IO[bytes], fs: AbstractFileSystem, vid: str, single: bool) -> _Uploaded:
        out = fs.open(self._blob_path(vid, DEFAULT_BLOB_NAME, single), "wb")
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
                out.close()
        except BaseException:
            # Never close() a failed stream: on an object store that would publish the part
            # written so far (harmless in a version folder, which has no marker, but still waste).
            _discard(out)
            raise
        if not single:
            return "bytes", DEFAULT_BLOB_NAME, size, 1, None

        def finish(commit: bool) -> None:
            # A single-object stream becomes visible -- complete -- only on close().
            if commit:
                try:
                    out.close()
                except BaseException:
                    _discard(out)
                    raise
            else:
                _discard(out)

        return "bytes", DEFAULT_BLOB_NAME, size, 1, finish

    def _upload_dir(self, local: pathlib.Path, fs: AbstractFileSystem, vid: str, single: bool) -> _Uploaded:
        vpath = self._vpath(vid)
        lpaths: list[str] = []
        rpaths: list[str] = []
        rdirs: set[str] = set()
        size = 0
        for dirpath, dirnames, filenames in os.walk(local):
            dirnames.sort()
            rel_dir = pathlib.Path(dirpath).relative_to(local).as_posix()
            rbase = f"{vpath}/{DATA_DIR}" if rel_dir == "." else f"{vpath}/{DATA_DIR}/{rel_dir}"
            for fname in sorted(filenames):
                lp = os.path.join(dirpath, fname)
                if not os.path.isfile(lp):  # broken symlinks, sockets, fifos
                    continue
                size += os.path.getsize(lp)
                lpaths.append(lp)
                rpaths.append(f"{rbase}/{fname}")
                rdirs.add(rbase)
        self._makedirs_if_local(fs, *sorted(rdirs))
        if lpaths:
            # Explicit lists: no glob expansion or trailing-slash rules, and async backends
            # (s3fs, gcsfs) upload the files concurrently.
            fs.put(lpaths, rpaths)
        return "dir", None, size, len(lpaths), None

    def _commit(
        self,
        upload: Callable[[AbstractFileSystem, str, bool], _Uploaded],
        metadata: dict[str, Any] | None,
        *,
        replayable: bool = True,
        blob: bool = False,
    ) -> None:
        meta_json = json.loads(json.dumps(metadata)) if metadata is not None else None  # fail early
        # One object, no marker: a single blob without metadata on a backend whose object
        # writes are atomic. Everything else gets a version folder and a marker written last.
        single = blob and metadata is None and self._atomic
        with self._lock:
            self._wait_background()
            fs = self.fs
            # A fresh id, chosen without reading: unique (random suffix), so this save never
            # writes into anyone's half-written folder, and newer than anything this object saw.
            vid = self._new_vid()
            # The listing (needed to check that ``vid`` really is the newest, and for pruning)
            # and the pruning deletes run in a helper thread while the payload uploads.
            # Once this object has listed the prefix, it knows every version (one writer at a
            # time per URL), so later saves need no listing at all.
            known = sorted(self._vids) if self._vids is not None else None
            job = _PruneJob(self, vid, known)
            self._bg = job.thread
            job.thread.start()
            committed = False
            try:
                while True:
                    if not single:
                        self._makedirs_if_local(fs, f"{self._vpath(vid)}/{DATA_DIR}")
                    kind, name, size, nfiles, finish = upload(fs, vid, single)
                    # A single object (not a stream) is committed by now: if anything below
                    # fails or supersedes it, the helper deletes it again (best-effort).
                    uploaded = self._object_marker(vid, name, size) if single and finish is None else None
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
                    # Another version sorts after ours (a writer whose clock ran ahead of ours,
                    # and which this object had not seen): committing here would not make ours
                    # the newest. Rare; upload again under an id above everything listed.
                    logger.warning(
                        "checkpoint version %s under %s is not the newest (%s exists); re-uploading",
                        vid, self._url, max(newer),
                    )
                    if finish is not None:
                        finish(False)  # an uncommitted single-object stream: never visible
                    else:
                        job.also_delete(vid, uploaded)
                    self._note(max(newer))
                    if not replayable:
                        raise RuntimeError(
                            f"cannot save a stream checkpoint under {self._url}: version "
                            f"{max(newer)} sorts after the one being written; save again"
                        )
                    vid = self._new_vid()
                if single:
                    # The commit point is the object itself: the upload above (one atomic
                    # object), or for a stream the close() here.
                    if finish is not None:
                        finish(True)
                    marker = self._object_marker(vid, name, size)  # type: ignore[arg-type]
                else:
                    marker = {
                        "format": MARKER_FORMAT,
                        "version": vid,
                        "kind": kind,
                        "name": name,
                        "size": size,
                        "files": nfiles,
                        "created": time.time(),
                        "metadata": meta_json,
                    }
                    # The commit point: one small object, written after the whole payload.
                    fs.pipe_file(f"{self._vpath(vid)}/{MARKER_NAME}", json.dumps(marker).encode())
                    marker["layout"] = "folder"
                    marker["url"] = self._vurl(vid)
                committed = True
            finally:
                # Deletes that must wait for the commit (keep == 1) run after this, in the
                # helper thread; nothing is deleted past the commit point if the save failed.
                job.finish(committed, vid)
            self._markers[vid] = marker
            if self._vids is not None:
                self._vids[vid] = (name, size) if single else None  # type: ignore[assignment]

    def _delete_version(self, vid: str, m: dict[str, Any] | None) -> None:
        fs = self.fs
        if m is not None and m.get("layout") == "object":
            fs.rm_file(self._data_path(m))  # one object: no marker to go first
            return
        vpath = self._vpath(vid)
        if m is not None and m["kind"] == "bytes" and self._remote:
            # Object store, keys known from the marker: one bulk DeleteObjects request instead
            # of delete-marker + list + delete. Order inside it does not matter for safety:
            # a marker whose payload is gone fails size verification and is skipped by readers.
            fs.rm([f"{vpath}/{MARKER_NAME}", f"{vpath}/{DATA_DIR}/{m['name']}"])
            return
        if m is not None:
            # Marker first: the version stops being readable before its data goes.
            fs.rm_file(f"{vpath}/{MARKER_NAME}")
        fs.rm(vpath, recursive=True)

    # ---- restoring ----------------------------------------------------------------------

    def _resolve_and(
        self,
        fetch: Callable[[dict[str, Any]], T | None],
        discard: Callable[[T], None] | None = None,
        afetch: Callable[[dict[str, Any], Callable[[], None]], Awaitable[T | None]] | None = None,
    ) -> T | None:
        """Apply ``fetch`` to complete versions, newest first, until one succeeds.

        ``fetch`` returns None (or raises FileNotFoundError) when the version turns out to be
        damaged or was deleted under us; then the next older one is tried. If every candidate
        failed, the prefix is listed once more, because a concurrent save may have committed a
        newer version and pruned the one we picked.

        On remote backends, when this object already knows a complete single-blob version (it
        saved or restored it), that version is fetched *while* the prefix is listed, and the
        result is kept only if the listing confirms it is still the newest complete version
        (otherwise ``discard`` undoes it and the normal path runs on that listing). That takes
        the listing off the critical path of the common save-then-restore pattern. On S3, with
        ``afetch`` (the same fetch as a coroutine, for blobs up to s3fs's block size), both run
        on fsspec's event loop: ``afetch(m, started)`` calls ``started()`` once the GET's response
        has begun, which sends the LIST (measured on a moto server: cheaper than sending both at
        once, which makes the two requests compete at their start).
        """
        self._wait_background()
        listed: list[str] | None = None
        known = list(self._markers)
        guess = self._markers.get(max(known)) if known else None
        if (
            afetch is not None
            and self._s3
            and guess is not None
            and guess["kind"] == "bytes"
            and guess["size"] <= getattr(self.fs, "default_block_size", 0)
        ):
            got, entries = fsspec.asyn.sync(self.fs.loop, self._fetch_while_listing, afetch, guess)
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
            listed = self._apply_listing(entries)
            newest = next(self._complete_newest_first(listed), None)
            if newest is not None and newest["version"] == guess["version"] and out is not None:
                return out
            if out is not None and discard is not None:
                discard(out)
        elif self._remote and guess is not None and guess["kind"] == "bytes":
            lister = _Future(self._list_vids)
            try:
                out = fetch(guess)
            except FileNotFoundError:
                out = None
            except BaseException:
                lister.wait_quietly()
                raise
            try:
                listed = lister.result()
            except BaseException:
                if out is not None and discard is not None:
                    discard(out)
                raise
            newest = next(self._complete_newest_first(listed), None)
            if newest is not None and newest["version"] == guess["version"] and out is not None:
                return out
            if out is not None and discard is not None:
                discard(out)
        for _ in range(2):
            failed = False
            for m in self._complete_newest_first(listed):
                try:
                    out = fetch(m)
                except FileNotFoundError:
                    out = None
                if out is not None:
                    return out
                failed = True
                logger.warning("checkpoint %s is damaged or vanished; trying an older one", m["url"])
                self._markers.pop(m["version"], None)
            if not failed:
                break
            listed = None
        return None

    async def _fetch_while_listing(
        self, afetch: Callable[[dict[str, Any], Callable[[], None]], Awaitable[T | None]], m: dict[str, Any]
    ) -> tuple[T | None | BaseException, list[dict[str, Any]] | BaseException]:
        """``afetch(m)``, with the listing started as soon as the fetch's response has begun (or
        when the fetch ends, if it never got that far). Each result or its exception."""
        listing: list[asyncio.Future[Any]] = []

        def started() -> None:
            if not listing:
                listing.append(asyncio.ensure_future(self._s3_list()))

        got: Any
        try:
            got = await afetch(m, started)
        except Exception as e:  # noqa: BLE001 -- sorted out by the caller
            got = e
        except BaseException:  # cancelled: do not leave the listing running on its own
            for task in listing:
                task.cancel()
            raise
        started()
        entries: Any
        try:
            entries = await listing[0]
        except Exception as e:  # noqa: BLE001
            entries = e
        return got, entries

    def read(self) -> bytes | None:
        """Bytes of the newest complete single-blob checkpoint, or None when there is none.

        Raises ValueError if the newest checkpoint is a directory.
        """

        def fetch(m: dict[str, Any]) -> bytes | None:
            if m["kind"] != "bytes":
                raise ValueError(f"newest checkpoint {m['url']} is a directory; use restore()")
            data = self._cat(self._data_path(m))
            return data if len(data) == m["size"] else None

        async def afetch(m: dict[str, Any], started: Callable[[], None]) -> bytes | None:
            data = await _s3_cat(self.fs, self._data_path(m), started)
            return data if len(data) == m["size"] else None

        return self._resolve_and(fetch, afetch=afetch)

    def restore(self, dest_dir: str | os.PathLike[str] | None = None) -> pathlib.Path | None:
        """Download the newest complete checkpoint into ``dest_dir`` (a new temporary directory
        when None).

        Returns the restored file's path for a single-blob checkpoint, ``dest_dir`` itself
        for a directory checkpoint, or None when there is no checkpoint.
        """
        created = dest_dir is None
        dest = pathlib.Path(tempfile.mkdtemp(prefix="flyte-ray-restore-")) if created else pathlib.Path(dest_dir)

        def fetch(m: dict[str, Any]) -> tuple[pathlib.Path, pathlib.Path | None] | None:
            dest.mkdir(parents=True, exist_ok=True)
            return self._download(m, dest)

        def discard(out: tuple[pathlib.Path, pathlib.Path | None]) -> None:
            if out[1] is not None:
                out[1].unlink(missing_ok=True)

        async def afetch(
            m: dict[str, Any], started: Callable[[], None]
        ) -> tuple[pathlib.Path, pathlib.Path | None] | None:
            # A single blob of at most s3fs's block size (see _resolve_and), fetched as _download does.
            dest.mkdir(parents=True, exist_ok=True)
            final, partial = _blob_target(m, dest)
            with _removed_on_error(partial):
                await _s3_get_file(self.fs, self._data_path(m), str(partial), started)
            return _if_complete(final, partial, m["size"])

        got = self._resolve_and(fetch, discard, afetch)
        if got is None:
            if created:
                shutil.rmtree(dest, ignore_errors=True)
            return None
        final, partial = got
        if partial is not None:
            os.replace(partial, final)
        return final

    def _download(
        self, m: dict[str, Any], dest: pathlib.Path
    ) -> tuple[pathlib.Path, pathlib.Path | None] | None:
        """Fetch version ``m`` into ``dest``: ``(result path, partial file to rename onto it)``.

        A single blob lands under a temporary name next to its final one and is renamed into
        place by the caller once the version is confirmed (so a discarded or failed fetch never
        leaves a wrong or truncated file under the final name).
        """
        fs = self.fs
        data = self._data_path(m)
        if m["kind"] == "bytes":
            final, partial = _blob_target(m, dest)
            with _removed_on_error(partial):
                self._get_blob(data, str(partial), m["size"])
            return _if_complete(final, partial, m["size"])
        # Directory: one recursive listing, then an explicit list of transfers.
        found = fs.find(data, withdirs=False, detail=False)
        rpaths: list[str] = []
        lpaths: list[str] = []
        dest_abs = dest.resolve()
        prefix = data.rstrip("/") + "/"
        for rp in sorted(found):
            rp_str = str(rp)
            rel = rp_str[len(prefix):] if rp_str.startswith(prefix) else rp_str.rsplit("/", 1)[-1]
            lp = (dest_abs / rel).resolve()
            # Object keys may contain "..": never write outside dest.
            if dest_abs != lp and dest_abs not in lp.parents:
                logger.warning("skipping checkpoint entry outside the restore dir: %s", rp_str)
                continue
            lp.parent.mkdir(parents=True, exist_ok=True)
            rpaths.append(rp_str)
            lpaths.append(str(lp))
        if len(rpaths) != m.get("files", len(rpaths)):
            return None
        if rpaths:
            fs.get(rpaths, lpaths)
        if sum(os.path.getsize(p) for p in lpaths) != m["size"]:
            return None
        return dest, None

    # ---- flyte-sdk style --------------------------------------------------------------------

    def _load(self) -> pathlib.Path | None:
        """Restore the newest complete checkpoint into :attr:`path` and return it (the file
        for a single-blob checkpoint, the directory for a tree); None when there is none.

        Repeated calls reuse the local copy while no newer checkpoint exists.
        """
        m = self.latest()
        if m is None:
            return None
        if self._loaded is not None and self._loaded[0] == m["version"] and self._loaded[1].exists():
            return self._loaded[1]
        ws = self.path
        for child in ws.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        out = self.restore(ws)
        newest = self.latest()
        self._loaded = (newest["version"], out) if (out is not None and newest is not None) else None
        return out

    # ``save``/``load`` block when called and have ``.aio`` for awaiting (flyte-sdk @syncify
    # shape); flytekit code calls ``save(...)`` synchronously and is unaffected.
    save = _sync_aio(_save)
    load = _sync_aio(_load)

    def save_sync(self, src: str | os.PathLike[str] | IO[bytes] | bytes, *, metadata: dict[str, Any] | None = None) -> None:
        """Blocking :meth:`save` (flyte-sdk name)."""
        self._save(src, metadata=metadata)

    def load_sync(self) -> pathlib.Path | None:
        """Blocking :meth:`load` (flyte-sdk name)."""
        return self._load()

    async def save_async(
        self, src: str | os.PathLike[str] | IO[bytes] | bytes, *, metadata: dict[str, Any] | None = None
    ) -> None:
        """Awaitable :meth:`save` (same as ``await cp.save.aio(...)``)."""
        await asyncio.to_thread(self._save, src, metadata=metadata)

    async def load_async(self) -> pathlib.Path | None:
        """Awaitable :meth:`load` (same as ``await cp.load.aio()``)."""
        return await asyncio.to_thread(self._load)

    async def restore_async(self, dest_dir: str | os.PathLike[str] | None = None) -> pathlib.Path | None:
        """Awaitable :meth:`restore`."""
        return await asyncio.to_thread(self.restore, dest_dir)


def _discard(f: Any) -> None:
    """Abandon a file opened for writing without publishing it, where the backend can
    (s3fs aborts the multipart upload); otherwise just close it."""
    try:
        f.discard()
        f.closed = True  # or its __del__ would close(), i.e. publish, what is left
    except Exception:  # noqa: BLE001 -- e.g. local files opened with autocommit cannot discard
        try:
            f.close()
        except Exception:  # noqa: BLE001
            pass


async def _s3_body(fs: Any, path: str, started: Callable[[], None] | None) -> Any:
    """The body of one GET of ``path`` (s3fs's ``cat_file`` / ``get_file`` send a HEAD first).
    ``started()`` is called once the response has begun."""
    bucket, key, _ = fs.split_path(path)
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    if started is not None:
        started()
    return resp["Body"]


async def _s3_cat(fs: Any, path: str, started: Callable[[], None] | None = None) -> bytes:
    """One GET of a whole object."""
    body = await _s3_body(fs, path, started)
    try:
        return await body.read()
    finally:
        body.close()


async def _s3_get_file(fs: Any, path: str, lpath: str, started: Callable[[], None] | None = None) -> None:
    """One streamed GET of an object into ``lpath``, up to 4 MiB per read (bounded memory)."""
    body = await _s3_body(fs, path, started)
    try:
        with open(lpath, "wb") as f:
            while True:
                chunk = await body.read(_S3_READ_CHUNK)
                if not chunk:
                    break
                f.write(chunk)
    finally:
        body.close()


def _is_safe_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MARKER_NAME)
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
    )


class _Future(Generic[T]):
    """``fn()`` running in a daemon thread; :meth:`result` joins it and returns or raises."""

    def __init__(self, fn: Callable[[], T], name: str = "flyte-ray-checkpoint-list"):
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as e:  # noqa: BLE001 -- handed to the caller
            self._error = e

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def wait_quietly(self) -> None:
        self._thread.join()


class _PruneJob:
    """The helper thread of one save: lists the prefix (the save waits for that before it
    commits) and retires old versions, best-effort.

    Retirees are the complete versions beyond the newest ``keep`` (counting the one being
    saved) and the incomplete versions older than it. Those that are not the newest complete
    version are deleted right away, while the payload uploads; the newest complete one (a
    retiree only when ``keep == 1``) is deleted only after the new version has committed, so
    a crash at any point never leaves zero complete versions. The save does not wait for the
    deletes; the next operation on the same :class:`Checkpoint` object does.
    """

    def __init__(self, cp: Checkpoint, vid: str, known: list[str] | None):
        self._cp = cp
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
        cp = self._cp
        first_vid = self._vid
        if self._known is not None:
            listed = self._known
        else:
            try:
                listed = cp._list_vids()
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
                m = cp._marker(v)
                if m is not None:
                    complete.append((v, m))
                elif v < first_vid:
                    incomplete.append(v)
        except Exception as e:  # noqa: BLE001 -- e.g. a network error reading a marker
            logger.warning("not pruning old checkpoints under %s: %s", cp._url, e)
            complete, incomplete = [], []
        keep_old = cp._keep - 1  # complete versions to keep besides the new one
        # Everything waits for the commit: deleting while the payload uploads would compete
        # with it for the same connection pool, server and CPU, and a failed save must not
        # cost any complete version.
        self._done.wait()
        if self._committed:
            self._delete([(v, None) for v in incomplete] + complete[keep_old:])
        self._delete(self._extra)

    def _delete(self, doomed: list[tuple[str, dict[str, Any] | None]]) -> None:
        cp = self._cp
        for v, m in doomed:
            cp._markers.pop(v, None)
            if cp._vids is not None:
                cp._vids.pop(v, None)
            try:
                cp._delete_version(v, m)
            except FileNotFoundError:
                pass
            except Exception as e:  # noqa: BLE001 -- pruning must never fail a save
                logger.warning("could not delete old checkpoint %s: %s", cp._vurl(v), e)
