"""Where an attempt runs: markets, queues and accelerators as Ray custom resources.

The convention (see ``cluster-configs/README.md``):

* a node declares ``spot`` or ``ondemand`` (its market) — the head declares ``ondemand`` too (with
  0 CPUs), which also tells flyte-ray the cluster follows the convention before any worker is up;
* ``queue:<name>`` for each queue it serves; nodes for tasks without a queue declare
  ``queue:default``;
* GPUs through Ray's ``accelerator_type:<T>`` resources (MIG partitions and TPU slices through
  ``gpu-partition:…`` / ``tpu:…``, see :mod:`flyte_ray.resources`).

An attempt asks for a tiny amount (:data:`MARKER`) of its market and queue markers, so CPUs and
GPUs, not markers, limit how many attempts share a node. On a cluster where no node declares any
market that constraint is dropped, with one warning: the embedded single-node cluster runs
everything. Queues are dropped likewise when no node declares a queue *and* none declares a
market; a cluster with markets must give its task nodes ``queue:default``.

:class:`Placement` is the interface the executors use (one strategy today, custom-resource
markers: :class:`MarkerPlacement`); :class:`ClusterView` is the cached view of what the live nodes
declare. Its refresh asks the GCS, so on an event loop it is primed off the loop first
(:meth:`ClusterView.primed` / :meth:`ClusterView.refresh`) and afterwards refreshed by a
background thread while callers keep the last view (stale by at most ``ttl`` seconds).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterable, Optional, Protocol

import ray

from .._core.process import PROCESS
from . import waiting
from .node_types import unmet

__all__ = [
    "MARKER",
    "DEFAULT_QUEUE",
    "QUEUE_PREFIX",
    "ClusterView",
    "cluster_view",
    "Placement",
    "MarkerPlacement",
    "attempt_options",
    "request_of",
    "describe",
]

logger = logging.getLogger("flyte_ray")

MARKER = 0.001  # per attempt; nodes declare e.g. 1000 of each marker
DEFAULT_QUEUE = "default"
QUEUE_PREFIX = "queue:"
SPOT, ONDEMAND = "spot", "ondemand"


class ClusterView:
    """A cached view of which resources the cluster's live nodes declare (a process part).

    Refreshed at most every ``ttl`` seconds: the hot path must not pay a GCS round trip per
    call, and a node that appears (autoscaling, a replacement after preemption) is seen soon.
    """

    reset_order = 30
    ttl = 5.0

    def __init__(self) -> None:
        self._at = 0.0
        self._names: Optional[frozenset[str]] = None
        self._markets = False  # some node declares spot / ondemand (computed with each refresh)
        self._queues = False  # ... or a queue
        self.nodes: list[dict[str, float]] = []  # each live node's resource totals
        self.version = 0  # bumped by every refresh (caches of feasibility key by it)
        self._lock = threading.Lock()
        self._refreshing = False
        self._warned: set[str] = set()
        self.embedded = False  # set by flyte_ray.init: this process started the cluster itself

    def reset(self) -> None:
        with self._lock:
            self._at = 0.0
            self._names = None
            self._markets = self._queues = False
            self.nodes = []
            self._warned = set()
            self.embedded = False

    @property
    def primed(self) -> bool:
        """True once the view holds an answer (possibly stale); else :meth:`refresh` blocks."""
        return self._names is not None

    def refresh(self) -> frozenset[str]:
        """Ask the GCS now (blocking)."""
        nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
        names = frozenset(k for res in nodes for k in res)
        markets = SPOT in names or ONDEMAND in names
        # A cluster that declares markets follows the convention, queues included, even while
        # only its head (which serves no queue) is up: an autoscaler must see the queue marker
        # in pending demand to launch a node of the right pool.
        queues = markets or any(n.startswith(QUEUE_PREFIX) for n in names)
        with self._lock:
            self._names, self._markets, self._queues, self._at = names, markets, queues, time.monotonic()
            self.nodes = nodes
            self.version += 1
        return names

    def resource_names(self) -> frozenset[str]:
        names = self._names
        if names is None:
            return self.refresh()
        if time.monotonic() - self._at > self.ttl and not self._refreshing:
            with self._lock:
                start = not self._refreshing
                self._refreshing = True
            if start:
                threading.Thread(target=self._refresh_in_background, name="flyte-ray-cluster-view", daemon=True).start()
        return names

    def _refresh_in_background(self) -> None:
        try:
            if ray.is_initialized():  # after a shutdown, a Ray call here would start Ray again
                self.refresh()
        except Exception:  # noqa: BLE001 - keep the last view; the next call tries again
            pass
        finally:
            self._refreshing = False

    def invalidate(self) -> None:
        self._at = 0.0

    def declares(self) -> tuple[bool, bool]:
        """``(has_markets, has_queues)`` in one look (the hot path keys its caches by them)."""
        self.resource_names()
        return self._markets, self._queues

    def has_markets(self) -> bool:
        self.resource_names()
        return self._markets

    def has_queues(self) -> bool:
        self.resource_names()
        return self._queues

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            # The driver says it once (every worker process would repeat it); on the embedded
            # single-node cluster dropping the constraint is the expected behaviour.
            if not waiting.is_worker():
                logger.log(logging.DEBUG if self.embedded else logging.WARNING, message)

    @staticmethod
    def missing(request: dict[str, float]) -> list[str]:
        """Resources in ``request`` that no single live node can offer (by totals), fresh from
        the GCS (blocking: call it off any event loop)."""
        return lacking(request, [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")])

    def missing_cached(self, request: dict[str, float]) -> list[str]:
        """:meth:`missing` by the cached view (no GCS call; stale by up to ``ttl`` seconds)."""
        self.resource_names()
        return lacking(request, self.nodes)


def lacking(request: dict[str, float], nodes: list[dict[str, float]]) -> list[str]:
    """Resources in ``request`` that no one of ``nodes`` (resource totals) offers: the shortest
    such list over the nodes; every requested resource when there is no node."""
    if not nodes:
        return sorted(request)
    best: Optional[list[str]] = None
    for res in nodes:
        lack = unmet(request, res)
        if not lack:
            return []
        if best is None or len(lack) < len(best):
            best = lack
    return best or []


def cluster_view() -> ClusterView:
    return PROCESS.part(ClusterView)


class Placement(Protocol):
    """Turns an attempt's market and queue into Ray options."""

    def options(self, base: dict[str, Any], market: str, queue: Optional[str]) -> dict[str, Any]: ...


class MarkerPlacement:
    """Placement through custom-resource markers (see the module docstring)."""

    def __init__(self, view: Optional[ClusterView] = None) -> None:
        self.view = view or cluster_view()

    def options(self, base: dict[str, Any], market: str, queue: Optional[str]) -> dict[str, Any]:
        """Ray ``.options()`` for one attempt: the task's resource options plus placement markers.

        ``base`` comes from the call's spec (num_cpus, memory, num_gpus, accelerator_type, custom
        resources, runtime_env); it is not modified.
        """
        view = self.view
        markers: dict[str, float] = {}
        if view.has_markets():
            markers[str(market)] = MARKER
        else:
            view.warn_once(
                "markets",
                "no node of this cluster declares a market resource ('spot' / 'ondemand'): "
                "attempts are placed without a market constraint.",
            )
        q = queue or DEFAULT_QUEUE
        if view.has_queues():
            markers[QUEUE_PREFIX + q] = MARKER
        else:
            view.warn_once(
                "queues",
                "no node of this cluster declares a queue resource ('queue:<name>'): "
                "attempts are placed without a queue constraint.",
            )
        if not markers:
            return base
        opts = dict(base)
        custom = dict(opts.get("resources") or {})
        custom.update(markers)
        opts["resources"] = custom
        return opts


def attempt_options(base: dict[str, Any], market: str, queue: Optional[str]) -> dict[str, Any]:
    """:meth:`MarkerPlacement.options` with this process's cluster view."""
    return MarkerPlacement().options(base, market, queue)


def request_of(opts: dict[str, Any]) -> dict[str, float]:
    """The resource request (Ray resource names -> amounts) that ``opts`` describes."""
    req: dict[str, float] = {"CPU": float(opts.get("num_cpus", 1) or 0)}
    if opts.get("num_gpus"):
        req["GPU"] = float(opts["num_gpus"])
    if opts.get("memory"):
        req["memory"] = float(opts["memory"])
    if opts.get("accelerator_type"):
        req[f"accelerator_type:{opts['accelerator_type']}"] = 0.001
    req.update(opts.get("resources") or {})
    return {k: v for k, v in req.items() if v > 0}


def describe(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))
