"""A cached call, start to end: look up, elect a runner, run, store (one ``async`` implementation).

:func:`cached_call` is the controller's cache step. It waits only through its port, so blocking
callers drive it on their own thread and event loops await it (:mod:`flyte_ray._ray.port`).
Storage I/O runs through the port's ``offload`` unless the storage is a local folder
(:func:`io`).

Behaviors: ``"auto"`` looks up, then runs and stores on a miss; ``"override"`` (or
``with_runcontext(overwrite_cache=True)``, which reaches every call of the run) skips the lookup,
runs and stores, replacing what was there. Only successful outputs are stored. A hit schedules
nothing on Ray, so a ``Run`` served from the cache has an empty attempt history.

``serialize=True``: identical calls run once.

* In one process (the driver, or one worker), concurrent identical calls - sync or async, from
  any thread - share one in-flight call (:class:`CacheState`). The others wait for it and each
  gets its own copy of the output (deserialised, so callers never alias one mutable object).
* Across processes and machines, a storage lease elects one runner (:mod:`.store`). Waiters poll
  the small lease object with backoff (0.05 s growing to 1 s) and read the output once the lease
  is gone. Inside a Ray worker a waiter naps in a zero-CPU Ray task, so that its CPU goes to the
  runner's attempt (no deadlock on small clusters).
* If the runner fails, nothing is stored; one of the waiters becomes the next runner (as Flyte's
  cache reservations do) -- but bounded: after ``MAX_FAILURES`` (2,
  ``$FLYTE_RAY_CACHE_MAX_FAILURES``) failed runs of the key in a row within ``LEASE_TTL``, the
  remaining waiters fail instead of running it once more each. In one process they get the last
  runner's exception itself (raised once in each waiter, not wrapped). Across processes the failed
  runner leaves its lease as a record of the failure count and an error summary (expiring after
  ``LEASE_TTL``) instead of deleting it; a waiter seeing fewer than ``MAX_FAILURES`` takes it over
  and runs, and one seeing that many raises :class:`~.store.CacheRunFailed` with the summary. A
  caller that arrives later (it never waited for a runner) runs the call itself. A runner that
  is cancelled or interrupted (not a failure of the call) releases the lease as before.
* Taking over a lease (expired, or left by a failed run) is a conditional operation
  (:func:`~.store.take_over`): of several waiters that saw the same lease, exactly one replaces it
  (where the backend's create-if-absent is exclusive: local folders, S3) and runs.
* Guarantees: with a live runner, identical calls run exactly once. After a lease expires while
  its runner is in fact alive (a stall longer than ``LEASE_TTL``, or large clock skew), or on a
  backend without create-if-absent, two runners may run; both store the same key and the last
  write wins, which is harmless for deterministic tasks.
* Lease requests run under a time limit (``LEASE_TTL / 3``, at least 1 s), lookups and stores
  under the storage's (:mod:`flyte_ray.storage.limits`): a stalled storage makes the call run
  uncached (warnings), it never hangs it or fails it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, NamedTuple, Optional, Union

import ray

from .._core.process import PROCESS
from .._ray import waiting
from .._ray.port import Port
from .store import (
    CacheRunFailed,
    Entry,
    Renewer,
    create_lease,
    fail_lease,
    lease_doc,
    lease_failures,
    lease_ttl,
    loads,
    lookup,
    max_failures,
    new_owner,
    parse_lease,
    read_lease,
    release,
    shown,
    store_output,
    summary,
    take_over,
)

if TYPE_CHECKING:
    from .._core.call import Call

__all__ = ["cached_call", "CacheState"]

logger = logging.getLogger("flyte_ray")

POLL_MIN, POLL_MAX = 0.05, 1.0


class CacheState:
    """In-process single flight: output url -> Future of ("payload", bytes) | ("value", obj), and
    failed runs in a row per url (count, when the last one failed) (a process part)."""

    reset_order = 50

    def __init__(self) -> None:
        self.inflight: dict[str, concurrent.futures.Future] = {}
        self.failures: dict[str, tuple[int, float]] = {}
        self.lock = threading.Lock()

    def reset(self) -> None:
        with self.lock:
            self.inflight = {}
            self.failures = {}

    def failed(self, url: str) -> int:
        """Record a failed run of ``url``; the failed runs in a row within ``LEASE_TTL``."""
        now = time.monotonic()
        with self.lock:
            n, last = self.failures.get(url, (0, now))
            n = n + 1 if now - last <= lease_ttl() else 1
            self.failures[url] = (n, now)
        return n

    def succeeded(self, url: str) -> None:
        with self.lock:
            self.failures.pop(url, None)


class _LeaderFailed(Exception):
    """The in-process runner did not finish: ``error`` is its failure (None: cancelled or
    interrupted) and ``failures`` the failed runs in a row. A waiter tries again (and may become
    the runner), or below ``max_failures`` raises ``error``."""

    def __init__(self, error: Optional[BaseException], failures: int) -> None:
        super().__init__(repr(error))
        self.error, self.failures = error, failures


class _Run(NamedTuple):
    owner: str
    failed: int = 0  # failed runs in a row recorded in the lease this runner took over


class _Hit(NamedTuple):
    meta: dict
    payload: bytes


async def io(e: Entry, port: Port, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, a storage operation: in place on a local folder, else off the loop."""
    if e.store.is_local:
        return fn(*args)
    return await port.offload(fn, *args)


def _nap_in_ray(seconds: float) -> None:
    time.sleep(seconds)


_napper = ray.remote(num_cpus=0, max_retries=0)(_nap_in_ray)


async def _nap(port: Port, seconds: float) -> None:
    """Back off; inside a worker in a zero-CPU Ray task, so the worker's CPU is released."""
    if waiting.is_worker():
        await port.get(_napper.remote(seconds))
    else:
        await port.sleep(seconds)


def _shared(value: Any, payload: Optional[bytes]) -> tuple:
    return ("payload", payload) if payload is not None else ("value", value)


def _share(shared: tuple) -> Any:
    kind, obj = shared
    if kind == "payload":
        return ray.cloudpickle.loads(obj)
    return obj


async def cached_call(call: "Call", port: Port, inner: Callable[["Call"], Awaitable[Any]]) -> Any:
    """Run ``call`` through the cache: a hit returns the stored output, a miss runs ``inner``."""
    e = Entry(call)
    if e.secret is None:  # no cache key for this storage (warned once): run uncached
        return await inner(call)
    if not e.overwrite:
        got = await io(e, port, lookup, e)
        if got is not None:
            ok, value = loads(e, got[1])
            if ok:
                return value
    if not e.serialize:
        value = await inner(call)
        await io(e, port, store_output, e, value, new_owner())
        return value
    state = PROCESS.part(CacheState)
    waited = False  # this caller waited for a runner (then it stops after max_failures())
    while True:
        with state.lock:
            fut = state.inflight.get(e.url)
            lead = fut is None
            if lead:
                fut = state.inflight[e.url] = concurrent.futures.Future()
        assert fut is not None
        if not lead:
            waited = True
            try:
                return _share(await port.wait_future(fut))
            except _LeaderFailed as failed:
                error = failed.error if failed.failures >= max_failures() else None
            if error is None:
                continue  # try again (maybe as the runner)
            # The runner's own exception, raised once in each waiter (outside the except block,
            # so that nothing is chained onto the object the runner raised too).
            raise error
        try:
            value, shared = await _lead(e, call, port, inner, waited)
        except Exception as exc:
            fut.set_exception(_LeaderFailed(exc, state.failed(e.url)))
            raise
        except BaseException:
            fut.set_exception(_LeaderFailed(None, 0))  # cancelled or interrupted: hand over
            raise
        else:
            state.succeeded(e.url)
            fut.set_result(shared)
            return value
        finally:
            with state.lock:
                if state.inflight.get(e.url) is fut:
                    del state.inflight[e.url]


async def _lead(
    e: Entry, call: "Call", port: Port, inner: Callable[["Call"], Awaitable[Any]], waited: bool = False
) -> tuple:
    """This process runs the call: under the storage lease when it can get one."""
    res: Union[_Run, _Hit, None]
    try:
        res = await _elect(e, port, checked=True, waited=waited)
    except CacheRunFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - storage trouble: run unserialized rather than fail
        logger.warning(
            "cache %s: serialize lease unavailable (%s: %s); running without it", e.fqn, type(exc).__name__, exc
        )
        res = None
    if not isinstance(res, _Run):
        if res is not None:
            ok, value = loads(e, res.payload)
            if ok:
                return value, ("payload", res.payload)
        value = await inner(call)  # no lease (storage trouble) or an unloadable output: run, store
        payload = await io(e, port, store_output, e, value, new_owner())
        return value, _shared(value, payload)
    renewer = Renewer(e, res.owner)
    failure: Optional[str] = None
    try:
        value = await inner(call)
        payload = await io(e, port, store_output, e, value, res.owner)
    except Exception as exc:
        failure = summary(exc)
        raise
    finally:
        await io(e, port, renewer.close)  # waits for a renewal in flight: none lands after this
        if failure is None:
            await io(e, port, release, e, res.owner)  # done, or cancelled: the lease goes
        else:
            await io(e, port, fail_lease, e, res.owner, res.failed + 1, failure)
    return value, _shared(value, payload)


async def _elect(e: Entry, port: Port, checked: bool, waited: bool = False) -> Union[_Run, _Hit]:
    """Across processes: become the runner (``_Run``) or wait for the runner's output (``_Hit``).
    ``checked``: the caller has just looked the output up; ``waited``: the caller has waited for
    a runner already (in this process), so failed runs count against it."""
    delay = POLL_MIN
    watched: Optional[str] = None  # owner of the lease being waited on
    last_raw: Optional[bytes] = None
    last_change = time.monotonic()
    while True:
        raw = await io(e, port, read_lease, e)
        if raw is None:
            if not checked and (watched is not None or not e.overwrite):
                got = await io(e, port, lookup, e)
                if got is not None and (not e.overwrite or got[0].get("owner") == watched):
                    return _Hit(*got)
            checked = False
            owner = new_owner()
            if await io(e, port, create_lease, e.store, e.lease, lease_doc(owner, 0)):
                return await _ran_or_hit(e, port, owner, 0)
            continue  # someone else got it: wait on theirs
        lease = parse_lease(raw) or {}  # {}: being written (non-atomic backends), owner unknown
        now = time.monotonic()
        if raw != last_raw:
            last_raw, last_change = raw, now
        if lease:
            watched = lease.get("owner", watched)
        failed, error = lease_failures(lease)
        expired = (
            bool(lease) and isinstance(lease.get("expires"), (int, float)) and lease["expires"] < time.time()
        ) or now - last_change > lease_ttl()
        if failed and not expired:
            if waited and failed >= max_failures():
                raise CacheRunFailed(e.fqn, failed, lease_ttl(), error)
            why, carried = "its last run failed", failed
        elif expired:
            why, carried = "it expired", 0
        else:
            waited = True  # a live runner: this caller waits for it
            await _nap(port, delay)
            delay = min(delay * 1.6, POLL_MAX)
            continue
        owner = new_owner()
        if await io(e, port, take_over, e.store, e.lease, raw, lease_doc(owner, 0)):
            logger.warning("cache %s: took over the lease of %s (%s)", e.fqn, shown(lease.get("owner", "?")), why)
            return await _ran_or_hit(e, port, owner, carried)
        # Another caller took it over (or is doing so): wait on theirs.
        watched, last_raw, checked = None, None, False
        await _nap(port, delay)


async def _ran_or_hit(e: Entry, port: Port, owner: str, carried: int) -> Union[_Run, _Hit]:
    """This caller holds the lease now: run, unless a runner finished in the meantime."""
    if not e.overwrite:
        got = await io(e, port, lookup, e)  # a runner may have finished between our lookup and the lease
        if got is not None:
            await io(e, port, release, e, owner)
            return _Hit(*got)
    return _Run(owner, carried)
