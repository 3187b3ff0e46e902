"""Stored outputs and serialisation leases, on the storage layer (:mod:`flyte_ray.storage`).

Stored objects: one object per key: a magic line, one line of JSON metadata (fqn, version, key,
writer id, time, payload size) and the output pickled with Ray's cloudpickle, written with
:meth:`~flyte_ray.storage.ObjectStore.put_atomic` (one PUT on object stores; a temporary file and a
rename locally). Readers check the magic and the recorded size, so a half-written output is never
read. A lookup is one GET; an output that cannot be read back (a truncated object, a class that no
longer unpickles) counts as a miss, and the call runs again.

Leases (``Cache(serialize=True)`` across processes): a lease object ``<key>.lease`` (owner id,
expiry) elects one runner. It is created with
:meth:`~flyte_ray.storage.ObjectStore.create_if_absent` (a hard link locally, ``If-None-Match: *``
on S3, elsewhere write-then-read-back), and read back to confirm the owner. The runner renews it
every ``LEASE_TTL / 3`` seconds while it runs (:class:`Renewer`), writes the output, then deletes
the lease. A lease whose expiry has passed (by its writer's clock) or that did not change for
``LEASE_TTL`` seconds (by the waiter's clock) is taken over: the runner died.

Every function here blocks on storage: async callers run them through their port's ``offload``
unless the storage is a local folder (:func:`flyte_ray.cache.flow.io`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Optional, Tuple

from ..storage import ObjectStore
from .keys import cache_key, cache_url

__all__ = [
    "Entry",
    "MAGIC",
    "LEASE_TTL",
    "pack",
    "unpack",
    "lookup",
    "loads",
    "store_output",
    "new_owner",
    "lease_doc",
    "lease_ttl",
    "parse_lease",
    "create_lease",
    "release",
    "Renewer",
]

logger = logging.getLogger("flyte_ray")

MAGIC = b"FLYTE-RAY-CACHE 1\n"
#: seconds a lease stays valid without renewal; the runner renews it every LEASE_TTL / 3
LEASE_TTL = float(os.environ.get("FLYTE_RAY_CACHE_LEASE_TTL", "60"))


def lease_ttl() -> float:
    """:data:`LEASE_TTL`, read when asked (tests shorten it)."""
    return LEASE_TTL


class Entry:
    """One cached call's key, where it is stored, and its mode."""

    __slots__ = ("fqn", "version", "key", "store", "url", "obj", "lease", "overwrite", "serialize")

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


def pack(e: Any, payload: bytes, owner: str) -> bytes:
    """The stored object for ``payload`` (``e``: anything with ``fqn``, ``version``, ``key``)."""
    meta = {
        "fqn": e.fqn,
        "version": e.version,
        "key": e.key,
        "owner": owner,
        "created": time.time(),
        "size": len(payload),
    }
    return MAGIC + json.dumps(meta, separators=(",", ":")).encode() + b"\n" + payload


def unpack(blob: bytes) -> Optional[Tuple[dict, bytes]]:
    """``(meta, payload)`` of a well-formed stored object, else None."""
    if not blob.startswith(MAGIC):
        return None
    nl = blob.find(b"\n", len(MAGIC))
    if nl < 0:
        return None
    try:
        meta = json.loads(blob[len(MAGIC) : nl])
    except ValueError:
        return None
    payload = blob[nl + 1 :]
    if not isinstance(meta, dict) or meta.get("size") != len(payload):
        return None
    return meta, payload


def lookup(e: Entry) -> Optional[Tuple[dict, bytes]]:
    """One GET: ``(meta, payload)`` of a readable stored output, or None."""
    try:
        blob = e.store.get(e.obj)
    except Exception as exc:  # noqa: BLE001 - a storage hiccup is a miss, not a failure
        logger.warning("cache %s: lookup failed (%s); running the task", e.fqn, exc)
        return None
    if blob is None:
        return None
    got = unpack(blob)
    if got is None:
        logger.warning("cache %s: unreadable object at %s; running the task", e.fqn, e.url)
    return got


def loads(e: Entry, payload: bytes) -> Tuple[bool, Any]:
    """``(True, output)``, or ``(False, None)`` when the stored output no longer loads."""
    from ray import cloudpickle

    try:
        return True, cloudpickle.loads(payload)
    except Exception as exc:  # noqa: BLE001
        logger.warning(
            "cache %s: stored output no longer loads (%s: %s); running the task", e.fqn, type(exc).__name__, exc
        )
        return False, None


def store_output(e: Entry, value: Any, owner: str) -> Optional[bytes]:
    """Pickle and store ``value``; returns the payload (None if it cannot be pickled)."""
    from ray import cloudpickle

    try:
        payload = cloudpickle.dumps(value)
    except Exception as exc:  # noqa: BLE001
        logger.warning("cache %s: output not stored, it cannot be pickled (%s)", e.fqn, exc)
        return None
    try:
        e.store.put_atomic(e.obj, pack(e, payload, owner))
    except Exception as exc:  # noqa: BLE001
        logger.warning("cache %s: output not stored (%s: %s)", e.fqn, type(exc).__name__, exc)
    return payload


# ---------------------------------------------------------------------------------- leases


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def lease_doc(owner: str, beat: int) -> bytes:
    return json.dumps({"owner": owner, "expires": time.time() + LEASE_TTL, "ttl": LEASE_TTL, "beat": beat}).encode()


def parse_lease(raw: Optional[bytes]) -> Optional[dict]:
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        return d if isinstance(d, dict) else {}
    except ValueError:
        return {}  # being written (non-atomic backends): held, owner unknown


def create_lease(store: ObjectStore, key: str, data: bytes) -> bool:
    """Create the lease ``key`` if nobody holds it; True when this caller holds it now. ``data``
    names the owner (unique per caller), and ``verify`` reads it back (also on S3, for S3-compatible servers that may
    ignore the conditional PUT), so a backend without a conditional create cannot fool two callers
    into running."""
    return store.create_if_absent(key, data, verify=True)


def release(e: Entry, owner: str) -> None:
    try:
        lease = parse_lease(e.store.get(e.lease))
        if lease and lease.get("owner") == owner:
            e.store.delete(e.lease)
    except Exception as exc:  # noqa: BLE001 - it expires anyway
        logger.debug("cache %s: releasing lease failed: %s", e.fqn, exc)


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
                lease = parse_lease(self.e.store.get(self.e.lease))
                if not lease or lease.get("owner") != self.owner:
                    logger.warning("cache %s: lost the lease while running; another caller may run it too", self.e.fqn)
                    return
                self.e.store.put_atomic(self.e.lease, lease_doc(self.owner, beat))
            except Exception as exc:  # noqa: BLE001
                logger.debug("cache %s: lease renewal failed: %s", self.e.fqn, exc)

    def close(self) -> None:
        self.stop.set()
