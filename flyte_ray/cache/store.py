"""Stored outputs and serialisation leases, on the storage layer (:mod:`flyte_ray.storage`).

Stored objects: one object per key: a magic line (format 2), one line of JSON metadata (fqn,
version, key, writer id, time, payload size), the output pickled with Ray's cloudpickle, and a
32-byte HMAC-SHA256 tag over everything before it, made with the cache key
(:mod:`.auth`), written with :meth:`~flyte_ray.storage.ObjectStore.put_atomic` (one PUT on object
stores; a temporary file and a rename locally). A lookup is one GET. Readers check, in this
order, the magic, the tag (before parsing anything else: bytes without a valid tag are never
parsed, let alone unpickled), then the recorded size and that the entry was stored for this
fqn/version/key (where recorded), so an entry copied to another key does not hit. Anything that
fails -- a truncated object, format 1, a bad or missing tag, an output that no longer unpickles --
is a miss with a warning, and the call runs again (and stores a good entry). Without a cache key
(:func:`~.auth.secret_for`) nothing is read or written.

Leases (``Cache(serialize=True)`` across processes): a lease object ``<key>.lease`` (owner id,
expiry) elects one runner. It is created with
:meth:`~flyte_ray.storage.ObjectStore.create_if_absent` (a hard link locally, ``If-None-Match: *``
on S3, elsewhere write-then-read-back), and read back to confirm the owner. The runner renews it
every ``LEASE_TTL / 3`` seconds while it runs (:class:`Renewer`), writes the output, then deletes
the lease; if the run fails it leaves the lease as a record instead (``failed``: runs in a row
that failed, ``error``: the last one's summary; it expires after ``LEASE_TTL``). A lease whose
expiry has passed (by its writer's clock), that did not change for ``LEASE_TTL`` seconds (by the
waiter's clock), or that records a failed run is taken over with :func:`take_over`, a conditional
operation that at most one of the callers who read the same lease wins. Lease content is
untrusted data: only ``owner`` (compared, logged shortened), ``expires`` and ``failed`` (checked
numbers) and ``error`` (a shortened string) are read; object names never come from it. Every
lease request runs under :func:`lease_limit`.

Every function here blocks on storage: async callers run them through their port's ``offload``
unless the storage is a local folder (:func:`flyte_ray.cache.flow.io`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Optional, Tuple, Union

from ..storage import ObjectStore
from .auth import TAG_SIZE, secret_for, sign, verify
from .keys import cache_key, cache_url

__all__ = [
    "Entry",
    "MAGIC",
    "LEASE_TTL",
    "pack",
    "check",
    "unpack",
    "lookup",
    "loads",
    "store_output",
    "new_owner",
    "lease_doc",
    "lease_ttl",
    "lease_limit",
    "max_failures",
    "parse_lease",
    "lease_failures",
    "read_lease",
    "create_lease",
    "take_over",
    "release",
    "fail_lease",
    "summary",
    "Renewer",
    "CacheRunFailed",
    "MAX_FAILURES",
]

logger = logging.getLogger("flyte_ray")

MAGIC = b"FLYTE-RAY-CACHE 2\n"
_MAGIC_PREFIX = b"FLYTE-RAY-CACHE "
#: seconds a lease stays valid without renewal; the runner renews it every LEASE_TTL / 3
LEASE_TTL = float(os.environ.get("FLYTE_RAY_CACHE_LEASE_TTL", "60"))
#: with ``serialize=True``: after this many failed runs of one key in a row within LEASE_TTL,
#: callers that were waiting for a runner fail with the last error instead of running it again
MAX_FAILURES = int(os.environ.get("FLYTE_RAY_CACHE_MAX_FAILURES", "2"))
# Longest error summary a lease records; rounds of takeover tokens tried before giving up a poll.
_ERROR_CHARS = 300
_TAKEOVER_ROUNDS = 8


def lease_ttl() -> float:
    """:data:`LEASE_TTL`, read when asked (tests shorten it)."""
    return LEASE_TTL


class Entry:
    """One cached call's key, where it is stored, and its mode."""

    __slots__ = ("fqn", "version", "key", "store", "url", "obj", "lease", "overwrite", "serialize", "secret")

    def __init__(self, call: Any) -> None:
        policy = call.spec.cache
        self.fqn = call.spec.fqn
        self.version, self.key = cache_key(call.task, call.args, call.kwargs, policy)
        storage = call.settings.storage
        self.store: ObjectStore = storage.store
        self.url = cache_url(storage, self.fqn, self.version, self.key)
        self.obj = storage.key("cache", self.fqn, self.version[:16], self.key)  # the output's key in the store
        self.lease = self.obj + ".lease"
        ro = call.run_overrides
        self.overwrite = policy.behavior == "override" or bool(ro and ro.get("_overwrite_cache"))
        self.serialize = policy.serialize
        #: the cache key for this storage, or None: then the cache neither reads nor writes
        self.secret: Optional[bytes] = secret_for(self.store)


def _secret(e: Any) -> bytes:
    secret = getattr(e, "secret", None) or secret_for(getattr(e, "store", None))
    if secret is None:
        raise ValueError(f"cache {getattr(e, 'fqn', '?')}: no cache key (see flyte_ray.cache.auth)")
    return secret


def pack(e: Any, payload: bytes, owner: str) -> bytes:
    """The stored object for ``payload`` (``e``: anything with ``fqn``, ``version``, ``key``, and
    ``secret`` or ``store`` for the cache key; without either, a local folder's key)."""
    meta = {
        "fqn": e.fqn,
        "version": e.version,
        "key": e.key,
        "owner": owner,
        "created": time.time(),
        "size": len(payload),
    }
    body = MAGIC + json.dumps(meta, separators=(",", ":")).encode() + b"\n" + payload
    return body + sign(_secret(e), body)


def check(blob: bytes, secret: bytes, e: Any = None) -> Union[Tuple[dict, bytes], str]:
    """``(meta, payload)`` of an authentic stored object (stored for ``e``'s fqn/version/key where
    recorded, when ``e`` is given), else why not. The tag is checked before anything is parsed."""
    if not blob.startswith(MAGIC):
        return "written by another flyte-ray version" if blob.startswith(_MAGIC_PREFIX) else "not a cache entry"
    end = len(blob) - TAG_SIZE
    if end < len(MAGIC):
        return "truncated"
    if not verify(secret, blob[end:], memoryview(blob)[:end]):
        return "its authentication tag does not match (not written with this cache key, or altered)"
    nl = blob.find(b"\n", len(MAGIC), end)
    if nl < 0:
        return "no header"
    try:
        meta = json.loads(blob[len(MAGIC) : nl])
    except ValueError:
        return "unreadable header"
    payload = blob[nl + 1 : end]
    if not isinstance(meta, dict) or meta.get("size") != len(payload):
        return "size does not match"
    if e is not None:
        for field in ("fqn", "version", "key"):
            recorded = meta.get(field)
            if recorded and recorded != getattr(e, field):
                return f"stored for another {field}"
    return meta, payload


def unpack(blob: bytes, secret: bytes) -> Optional[Tuple[dict, bytes]]:
    """``(meta, payload)`` of an authentic stored object, else None (:func:`check`)."""
    got = check(blob, secret)
    return None if isinstance(got, str) else got


def lookup(e: Entry) -> Optional[Tuple[dict, bytes]]:
    """One GET: ``(meta, payload)`` of an authentic stored output, or None (a miss)."""
    if e.secret is None:
        return None
    try:
        blob = e.store.get(e.obj)
    except Exception as exc:  # noqa: BLE001 - a storage hiccup is a miss, not a failure
        logger.warning("cache %s: lookup failed (%s); running the task", e.fqn, exc)
        return None
    if blob is None:
        return None
    got = check(blob, e.secret, e)
    if isinstance(got, str):
        logger.warning("cache %s: ignoring the object at %s: %s; running the task", e.fqn, e.url, got)
        return None
    return got


def loads(e: Entry, payload: bytes) -> Tuple[bool, Any]:
    """``(True, output)``, or ``(False, None)`` when the stored output no longer loads. Only for
    payloads :func:`lookup` authenticated (or this process pickled)."""
    from ray import cloudpickle

    try:
        return True, cloudpickle.loads(payload)
    except Exception as exc:  # noqa: BLE001
        logger.warning(
            "cache %s: stored output no longer loads (%s: %s); running the task", e.fqn, type(exc).__name__, exc
        )
        return False, None


def store_output(e: Entry, value: Any, owner: str) -> Optional[bytes]:
    """Pickle and store ``value`` (not without a cache key); returns the payload (None if it
    cannot be pickled)."""
    from ray import cloudpickle

    try:
        payload = cloudpickle.dumps(value)
    except Exception as exc:  # noqa: BLE001
        logger.warning("cache %s: output not stored, it cannot be pickled (%s)", e.fqn, exc)
        return None
    if e.secret is None:
        return payload
    try:
        e.store.put_atomic(e.obj, pack(e, payload, owner))
    except Exception as exc:  # noqa: BLE001
        logger.warning("cache %s: output not stored (%s: %s)", e.fqn, type(exc).__name__, exc)
    return payload


# ---------------------------------------------------------------------------------- leases


class CacheRunFailed(RuntimeError):
    """A serialized call failed ``failures`` times in a row in other callers within the lease TTL;
    this waiter does not run it again (``error``: the last failure's summary)."""

    def __init__(self, fqn: str, failures: int, ttl: float, error: str):
        super().__init__(
            f"cache {fqn}: the call failed {failures} times in a row within {ttl:g} s in the callers this one "
            f"waited for (last: {error}); not running it again here"
        )
        self.fqn, self.failures, self.ttl, self.error = fqn, failures, ttl, error

    def __reduce__(self) -> tuple:
        return (type(self), (self.fqn, self.failures, self.ttl, self.error))


def max_failures() -> int:
    """:data:`MAX_FAILURES`, read when asked (tests change it)."""
    return MAX_FAILURES


def lease_limit() -> float:
    """Time limit of one lease request: a renewal must land well before the lease expires."""
    return max(LEASE_TTL / 3, 1.0)


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def lease_doc(owner: str, beat: int, failed: int = 0, error: str = "") -> bytes:
    """A lease: its owner, expiry by the writer's clock, heartbeat; and after a failed run, how
    many runs of the key failed in a row (``failed``) and the last one's error summary."""
    doc: dict[str, Any] = {"owner": owner, "expires": time.time() + LEASE_TTL, "ttl": LEASE_TTL, "beat": beat}
    if failed:
        doc["failed"], doc["error"] = failed, error[:_ERROR_CHARS]
    return json.dumps(doc).encode()


def parse_lease(raw: Optional[bytes]) -> Optional[dict]:
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        return d if isinstance(d, dict) else {}
    except (ValueError, RecursionError):
        return {}  # being written (non-atomic backends): held, owner unknown


def lease_failures(lease: dict) -> Tuple[int, str]:
    """``(failed runs in a row, last error summary)`` recorded in a lease (untrusted: checked)."""
    n, error = lease.get("failed"), lease.get("error")
    if type(n) is not int or n < 0:
        return 0, ""
    return n, (error if isinstance(error, str) else "?")[:_ERROR_CHARS]


def summary(exc: BaseException) -> str:
    """What a lease records of a failed run: the error's type and the start of its message."""
    return f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]


def shown(value: Any) -> str:
    """An untrusted value from a lease, safe to log (short)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_lease(e: Entry) -> Optional[bytes]:
    return e.store.get(e.lease, timeout=lease_limit())


def create_lease(store: ObjectStore, key: str, data: bytes) -> bool:
    """Create the lease ``key`` if nobody holds it; True when this caller holds it now. ``data``
    names the owner (unique per caller), and ``verify`` reads it back (also on S3, for
    S3-compatible servers that may ignore the conditional PUT), so a backend without a conditional
    create cannot fool two callers into running."""
    return store.create_if_absent(key, data, verify=True, timeout=lease_limit())


def take_over(store: ObjectStore, key: str, raw: bytes, data: bytes) -> bool:
    """Replace the lease ``key``, last read as ``raw`` (expired, or left by a failed run), with
    ``data``; True for at most one caller per ``raw`` (where create-if-absent is exclusive).

    The right to replace it is a token ``<lease>.takeover.<digest of raw>.<round>`` made with
    create-if-absent: only its creator re-reads the lease and, if it is still ``raw``, overwrites
    it (there is no moment without a lease for a newcomer to slip in), then deletes the token.
    A token whose taker died before finishing expires after ``LEASE_TTL``; the next round's token
    is then made the same way. Token names are derived from the raw bytes, never from their
    (untrusted) content.
    """
    base = f"{key}.takeover.{hashlib.sha256(raw).hexdigest()[:32]}"
    mine = json.dumps({"taker": uuid.uuid4().hex, "expires": time.time() + LEASE_TTL}).encode()
    limit = lease_limit()
    for rnd in range(_TAKEOVER_ROUNDS):
        token = f"{base}.{rnd}"
        if store.create_if_absent(token, mine, verify=True, timeout=limit):
            try:
                if store.get(key, timeout=limit) != raw:
                    return False  # released, or taken over in an earlier round: look again
                store.put_atomic(key, data, timeout=limit)
                return True
            finally:
                # Best-effort: a token left behind only delays the next takeover of this same
                # lease instance by LEASE_TTL.
                try:
                    store.delete_many([f"{base}.{r}" for r in range(rnd + 1)], timeout=limit)
                except Exception as exc:  # noqa: BLE001
                    logger.debug("cache: could not delete takeover token %s: %s", token, exc)
        held = parse_lease(store.get(token, timeout=limit))
        if held is None:
            return False  # the taker finished: the lease changed
        expires: Any = held.get("expires")
        if not (type(expires) in (int, float) and expires < time.time()):
            return False  # another caller is taking it over
    return False


def release(e: Entry, owner: str) -> None:
    """Delete the lease if this caller still owns it (never raises: it expires anyway)."""
    try:
        lease = parse_lease(read_lease(e))
        if lease and lease.get("owner") == owner:
            e.store.delete(e.lease, timeout=lease_limit())
    except Exception as exc:  # noqa: BLE001
        logger.debug("cache %s: releasing lease failed: %s", e.fqn, exc)


def fail_lease(e: Entry, owner: str, failed: int, error: str) -> None:
    """The run of the lease's owner failed: leave the lease as a record of ``failed`` runs in a
    row (expiring after ``LEASE_TTL``) instead of deleting it, so that waiters elsewhere can stop
    after :data:`MAX_FAILURES` (never raises)."""
    try:
        lease = parse_lease(read_lease(e))
        if lease and lease.get("owner") == owner:
            e.store.put_atomic(e.lease, lease_doc(owner, -1, failed, error), timeout=lease_limit())
    except Exception as exc:  # noqa: BLE001
        logger.debug("cache %s: recording the failed run failed: %s", e.fqn, exc)


class Renewer:
    """Keeps a lease alive while its owner runs the call (a daemon thread)."""

    def __init__(self, e: Entry, owner: str) -> None:
        self.e, self.owner = e, owner
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flyte-ray-cache-lease", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        beat = 0
        while not self.stop.wait(LEASE_TTL / 3):
            beat += 1
            try:
                lease = parse_lease(read_lease(self.e))
                if not lease or lease.get("owner") != self.owner:
                    logger.warning("cache %s: lost the lease while running; another caller may run it too", self.e.fqn)
                    return
                if self.stop.is_set():
                    return
                self.e.store.put_atomic(self.e.lease, lease_doc(self.owner, beat), timeout=lease_limit())
            except Exception as exc:  # noqa: BLE001
                logger.debug("cache %s: lease renewal failed: %s", self.e.fqn, exc)

    def close(self) -> None:
        """Stop renewing, and wait for a renewal in flight (bounded by its time limit), so that
        nothing renews the lease after its owner released it or recorded a failure."""
        self.stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(2 * lease_limit() + 1)
