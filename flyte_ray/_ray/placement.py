"""Where an attempt runs: markets, queues and accelerators as custom resources or node labels.

Two conventions (see ``cluster-configs/README.md``), one strategy object each:

**Markers** (:class:`MarkerPlacement`), Ray custom resources:

* a node declares ``spot`` or ``ondemand`` (its market) — the head declares ``ondemand`` too (with
  0 CPUs), which also tells flyte-ray the cluster follows the convention before any worker is up;
* ``queue:<name>`` for each queue it serves; nodes for tasks without a queue declare
  ``queue:default``;
* GPUs through Ray's ``accelerator_type:<T>`` resources (MIG partitions and TPU slices through
  ``gpu-partition:…`` / ``tpu:…``, see :mod:`flyte_ray.resources`).

An attempt asks for a tiny amount (:data:`MARKER`) of its market and queue markers, so CPUs and
GPUs, not markers, limit how many attempts share a node.

**Labels** (:class:`LabelPlacement`), Ray node labels and ``label_selector`` (Ray >= 2.60):

* the market is Ray's own label ``ray.io/market-type`` (:data:`MARKET_LABEL`): ``spot`` or
  ``on-demand`` (flyte-ray's ``ondemand``), which Ray sets when a node starts with the environment
  variable ``RAY_NODE_MARKET_TYPE`` (``ray start``, a KubeRay container's env) — the head too;
* a queue is one label per queue, ``flyte-ray.io/queue-<name>`` = ``true``
  (:data:`QUEUE_LABEL_PREFIX`). Ray checks label keys as Kubernetes does: the part after the ``/``
  is at most 63 characters of letters, digits, ``-``, ``_``, ``.``, beginning and ending with a
  letter or digit, so in this mode a queue name has at most 57 characters and ends with a letter
  or digit (others fail at once, naming the queue);
* a GPU type is Ray's label ``ray.io/accelerator-type`` (:data:`ACCELERATOR_LABEL`), which Ray sets
  from the same detection as its ``accelerator_type:<T>`` resource: a task's ``accelerator_type``
  option becomes that selector entry (same meaning: only nodes with that accelerator), so
  label-only nodes serve it too. MIG partitions and TPU slices stay resources (they are counted).

An attempt's selector holds plain equality entries, e.g. ``{"ray.io/market-type": "on-demand",
"flyte-ray.io/queue-default": "true"}``. Every entry is a hard constraint (``label_selector``); the
final on-demand attempt is never a soft ``fallback_strategy``.

**Which one** (:meth:`ClusterView.placement`, the one place the strategy is chosen): ``init(
placement="markers" | "labels")`` forces a mode; with ``"auto"`` (default) the live nodes decide:

* some node declares a market resource (``spot`` / ``ondemand``) and none the market label →
  markers; the market label and no market resource → labels;
* both (a mixed cluster): per attempt, markers if some live node serves its market and queue with
  markers, else labels if some live node serves them with labels, else markers. One attempt uses
  one convention (Ray cannot express "this resource *or* that label"): where live nodes of both
  conventions serve the same market and queue, the label-only ones get no attempts (``flyte-ray
  doctor`` says so), and work for a pool with no live node yet asks for markers (what ``ray up``
  and KubeRay autoscalers match node types on);
* neither: no market constraint (see below).

On a cluster where no node declares any market that constraint is dropped, with one warning: the
embedded single-node cluster runs everything. Queues are dropped likewise when no node declares a
queue *and* none declares a market; a cluster with markets must give its task nodes the default
queue.

:class:`ClusterView` is the cached view of what the live nodes declare (resources and labels).
Its refresh asks the GCS, so on an event loop it is primed off the loop first
(:meth:`ClusterView.primed` / :meth:`ClusterView.refresh`) and afterwards refreshed by a
background thread while callers keep the last view (stale by at most ``ttl`` seconds).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Iterable, Mapping, Optional, Protocol

import ray

from .._core.process import PROCESS
from . import waiting
from .drains import draining_nodes
from .node_types import unmet

__all__ = [
    "MARKER",
    "SPOT",
    "ONDEMAND",
    "DEFAULT_QUEUE",
    "QUEUE_PREFIX",
    "MARKET_LABEL",
    "ACCELERATOR_LABEL",
    "QUEUE_LABEL_PREFIX",
    "MARKET_LABEL_VALUES",
    "LABEL_TRUE",
    "AUTO",
    "MARKERS",
    "LABELS",
    "ClusterView",
    "cluster_view",
    "Placement",
    "MarkerPlacement",
    "LabelPlacement",
    "attempt_options",
    "request_of",
    "offers",
    "constraint",
    "node_convention",
    "queue_label",
    "node_market",
    "describe",
]

logger = logging.getLogger("flyte_ray")

MARKER = 0.001  # per attempt; nodes declare e.g. 1000 of each marker
DEFAULT_QUEUE = "default"
QUEUE_PREFIX = "queue:"
SPOT, ONDEMAND = "spot", "ondemand"

MARKET_LABEL = "ray.io/market-type"  # Ray sets it from RAY_NODE_MARKET_TYPE
ACCELERATOR_LABEL = "ray.io/accelerator-type"  # Ray sets it on accelerator nodes
QUEUE_LABEL_PREFIX = "flyte-ray.io/queue-"  # + queue name, value "true"
LABEL_TRUE = "true"
MARKET_LABEL_VALUES = {SPOT: "spot", ONDEMAND: "on-demand"}  # flyte-ray market -> label value
_LABEL_MARKETS = {v: k for k, v in MARKET_LABEL_VALUES.items()}
AUTO, MARKERS, LABELS = "auto", "markers", "labels"

# Ray 2.60's label key name / value rule (ray/_private/label_utils.py LABEL_REGEX), plus its length.
_LABEL_NAME_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?")


def queue_label(queue: str) -> str:
    """The node label key of ``queue`` in label mode (``ValueError`` if Ray cannot hold it)."""
    key = QUEUE_LABEL_PREFIX + queue
    if not _LABEL_NAME_RE.fullmatch(key.split("/", 1)[1]):
        raise ValueError(
            f"queue {queue!r} cannot be placed with Ray node labels: the label {key!r} needs a queue "
            "name of at most 57 characters that ends with a letter or digit (Ray's label key rule); "
            "rename the queue or use init(placement='markers') on a cluster that declares queue:<name>"
        )
    return key


def node_market(resources: Mapping[str, float], labels: Mapping[str, str]) -> list[str]:
    """The flyte-ray markets a node declares, by marker resources or the market label."""
    out = [m for m in (SPOT, ONDEMAND) if resources.get(m, 0) > 0]
    lm = _LABEL_MARKETS.get(labels.get(MARKET_LABEL, ""))
    if lm is not None and lm not in out:
        out.append(lm)
    return out


def node_convention(resources: Mapping[str, float], labels: Mapping[str, str]) -> str:
    """How a node declares its market: ``"markers"``, ``"labels"``, ``"both"`` or ``"none"``."""
    marker = resources.get(SPOT, 0) > 0 or resources.get(ONDEMAND, 0) > 0
    label = MARKET_LABEL in labels
    return "both" if marker and label else MARKERS if marker else LABELS if label else "none"


def constraint(mode: str, market: str, queue: str) -> dict[str, float]:
    """What a node must offer under ``mode`` to take attempts on ``market`` and ``queue`` (named as
    :func:`request_of` names them)."""
    if mode == LABELS:
        return {f"{MARKET_LABEL}={MARKET_LABEL_VALUES[market]}": MARKER, f"{queue_label(queue)}={LABEL_TRUE}": MARKER}
    return {market: MARKER, QUEUE_PREFIX + queue: MARKER}


def offers(resources: Mapping[str, float], labels: Mapping[str, str]) -> dict[str, float]:
    """What a node offers, as :func:`request_of` names it: its resources, and each label as a
    ``key=value`` entry (present, amount 1)."""
    out = {k: float(v) for k, v in resources.items()}
    out.update({f"{k}={v}": 1.0 for k, v in labels.items()})
    return out


class _Snapshot:
    """What the live nodes declared at one refresh (replaced whole, so readers see one refresh)."""

    __slots__ = ("names", "nodes", "offers", "usable", "markets", "queues", "label_markets", "label_queues", "mixed")

    def __init__(
        self, nodes: list[tuple[dict[str, float], dict[str, str]]], draining: Optional[list[bool]] = None
    ) -> None:
        self.nodes = nodes  # per live node: its resource totals and its labels
        self.offers = [offers(res, lb) for res, lb in nodes]
        # what the nodes that are not draining offer (a draining node takes no new work)
        self.usable = self.offers if draining is None else [o for o, d in zip(self.offers, draining) if not d]
        self.names: frozenset[str] = frozenset(k for res, _ in nodes for k in res)
        self.markets = SPOT in self.names or ONDEMAND in self.names
        # A cluster that declares markets follows the convention, queues included, even while
        # only its head (which serves no queue) is up: an autoscaler must see the queue marker
        # in pending demand to launch a node of the right pool.
        self.queues = self.markets or any(n.startswith(QUEUE_PREFIX) for n in self.names)
        self.label_markets = any(MARKET_LABEL in lb for _, lb in nodes)
        self.label_queues = self.label_markets or any(k.startswith(QUEUE_LABEL_PREFIX) for _, lb in nodes for k in lb)
        self.mixed: dict[tuple[str, Optional[str]], str] = {}  # per (market, queue): the mode

    def serves(self, mode: str, market: str, queue: Optional[str]) -> bool:
        """Some live node serves ``market`` (and ``queue``, unless None) under ``mode``."""
        for res, lb in self.nodes:
            if mode == MARKERS:
                ok = res.get(market, 0) > 0 and (queue is None or res.get(QUEUE_PREFIX + queue, 0) > 0)
            else:
                ok = lb.get(MARKET_LABEL) == MARKET_LABEL_VALUES[market] and (
                    queue is None or lb.get(QUEUE_LABEL_PREFIX + queue) == LABEL_TRUE
                )
            if ok:
                return True
        return False


class ClusterView:
    """A cached view of which resources and labels the cluster's live nodes declare (a process part).

    Refreshed at most every ``ttl`` seconds: the hot path must not pay a GCS round trip per
    call, and a node that appears (autoscaling, a replacement after preemption) is seen soon.
    """

    reset_order = 30
    ttl = 5.0

    def __init__(self) -> None:
        self._at = 0.0
        self._snap: Optional[_Snapshot] = None
        self.version = 0  # bumped by every refresh (caches of feasibility key by it)
        self.stale = False  # a node was lost since the last refresh: placement checks refresh first
        self._lock = threading.Lock()
        self._refreshing = False
        self._warned: set[str] = set()
        self.embedded = False  # set by flyte_ray.init: this process started the cluster itself
        self._strategies: dict[str, Placement] = {MARKERS: MarkerPlacement(self), LABELS: LabelPlacement(self)}

    def reset(self) -> None:
        with self._lock:
            self._at = 0.0
            self._snap = None
            self._warned = set()
            self.embedded = False
            self.stale = False

    @property
    def primed(self) -> bool:
        """True once the view holds an answer (possibly stale); else :meth:`refresh` blocks."""
        return self._snap is not None

    def refresh(self) -> frozenset[str]:
        """Ask the GCS now (blocking)."""
        live = [n for n in ray.nodes() if n.get("Alive")]
        drain = draining_nodes() or {}
        snap = _Snapshot(
            [
                (
                    {str(k): float(v) for k, v in (n.get("Resources") or {}).items()},
                    {str(k): str(v) for k, v in (n.get("Labels") or {}).items()},
                )
                for n in live
            ],
            [n.get("NodeID") in drain for n in live],
        )
        with self._lock:
            self._snap, self._at = snap, time.monotonic()
            self.version += 1
            self.stale = False
        return snap.names

    def _current(self) -> _Snapshot:
        snap = self._snap
        if snap is None:
            self.refresh()
            snap = self._snap
            assert snap is not None
            return snap
        if time.monotonic() - self._at > self.ttl and not self._refreshing:
            with self._lock:
                start = not self._refreshing
                self._refreshing = True
            if start:
                threading.Thread(target=self._refresh_in_background, name="flyte-ray-cluster-view", daemon=True).start()
        return snap

    def resource_names(self) -> frozenset[str]:
        return self._current().names

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

    def mark_stale(self) -> None:
        """A node was lost: the cached answer may offer capacity that is gone (see ``stale``)."""
        self.stale = True

    def declares(self) -> tuple[bool, bool, bool, bool]:
        """Markets and queues by markers, then by labels, in one look (the hot path keys its
        caches by them)."""
        s = self._current()
        return s.markets, s.queues, s.label_markets, s.label_queues

    def has_markets(self, mode: str = AUTO) -> bool:
        """Some node declares a market: by markers, by labels, or (``"auto"``) either."""
        s = self._current()
        return s.markets if mode == MARKERS else s.label_markets if mode == LABELS else s.markets or s.label_markets

    def has_queues(self, mode: str = AUTO) -> bool:
        s = self._current()
        return s.queues if mode == MARKERS else s.label_queues if mode == LABELS else s.queues or s.label_queues

    def mode(self, override: str = AUTO, market: str = ONDEMAND, queue: Optional[str] = None) -> str:
        """``"markers"`` or ``"labels"``: how to place work on ``market`` (and ``queue``; ``None``
        for actors that serve no queue) — ``override`` when not ``"auto"``, else what the live
        nodes declare (see the module docstring)."""
        if override == MARKERS or override == LABELS:
            return override
        s = self._current()
        if s.markets != s.label_markets:  # one convention declares markets
            return MARKERS if s.markets else LABELS
        if not s.markets:  # neither: a queue-only cluster follows its queues
            return LABELS if s.label_queues and not s.queues else MARKERS
        key = (str(market), queue)
        m = s.mixed.get(key)
        if m is None:
            m = next((c for c in (MARKERS, LABELS) if s.serves(c, str(market), queue)), MARKERS)
            s.mixed[key] = m
        return m

    def placement(self, override: str = AUTO, market: str = ONDEMAND, queue: Optional[str] = None) -> "Placement":
        """The placement strategy for ``market`` and ``queue``: the one place it is chosen."""
        return self._strategies[self.mode(override, market, queue)]

    def explain(self, override: str = AUTO) -> tuple[str, str]:
        """The cluster's placement mode and why, for people (``flyte-ray doctor``)."""
        s = self._current()
        if override in (MARKERS, LABELS):
            return override, f"forced by init(placement={override!r})"
        if s.markets and s.label_markets:
            return "mixed", (
                f"nodes declare market resources and others the {MARKET_LABEL} label: each attempt uses "
                "markers where a live node serves its market and queue with markers, else labels"
            )
        if s.markets:
            return MARKERS, "nodes declare market resources ('spot' / 'ondemand')"
        if s.label_markets:
            return LABELS, f"nodes declare the {MARKET_LABEL} label and no market resources"
        if s.label_queues and not s.queues:
            return LABELS, "no node declares a market; nodes declare queue labels"
        return MARKERS, "no node declares a market (resource or label): no market constraint"

    def node_warnings(
        self, name: str, resources: Mapping[str, float], labels: Mapping[str, str], override: str = AUTO
    ) -> list[str]:
        """What is wrong with how one live node declares its placement (``flyte-ray doctor``): a
        market label flyte-ray does not know, or a node that declares by one convention only while
        the attempts of its market and queues are placed by the other (none lands there)."""
        out = []
        value = labels.get(MARKET_LABEL)
        if value is not None and value not in _LABEL_MARKETS:
            out.append(f"node {name}: {MARKET_LABEL}={value!r} is neither 'spot' nor 'on-demand'")
        conv = node_convention(resources, labels)
        if conv in (MARKERS, LABELS):
            for m in node_market(resources, labels):
                queues = [q[len(QUEUE_PREFIX) :] for q in resources if q.startswith(QUEUE_PREFIX)]
                queues += [k[len(QUEUE_LABEL_PREFIX) :] for k, v in labels.items() if k.startswith(QUEUE_LABEL_PREFIX)]
                for q in queues:
                    chosen = self.mode(override, m, q)
                    if chosen != conv:
                        out.append(
                            f"node {name} declares its market by {conv} only, but attempts on {m} / queue {q} "
                            f"are placed by {chosen}: none lands there"
                        )
        return out

    def clear_warnings(self) -> None:
        """Say each warning again (``init`` calls it: new settings may change what is said)."""
        self._warned = set()

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            # The driver says it once (every worker process would repeat it); on the embedded
            # single-node cluster dropping the constraint is the expected behaviour.
            if not waiting.is_worker():
                logger.log(logging.DEBUG if self.embedded else logging.WARNING, message)

    @staticmethod
    def missing(request: dict[str, float], usable: bool = False) -> list[str]:
        """Entries of ``request`` (:func:`request_of`: resources and ``key=value`` labels) that no
        single live node can offer (by totals), fresh from the GCS (blocking: call it off any
        event loop). ``usable``: count only nodes that are not draining (they take no new work)."""
        live = [n for n in ray.nodes() if n.get("Alive")]
        if usable:
            drain = draining_nodes() or {}
            live = [n for n in live if n.get("NodeID") not in drain]
        return lacking(request, [offers(n.get("Resources") or {}, n.get("Labels") or {}) for n in live])

    @property
    def nodes(self) -> list[dict[str, float]]:
        """What each live node offers (:func:`offers`), by the cached view ([] before a refresh)."""
        snap = self._snap
        return snap.offers if snap is not None else []

    def missing_cached(self, request: dict[str, float], usable: bool = False) -> list[str]:
        """:meth:`missing` by the cached view (no GCS call; stale by up to ``ttl`` seconds)."""
        snap = self._current()
        return lacking(request, snap.usable if usable else snap.offers)


def lacking(request: dict[str, float], nodes: list[dict[str, float]]) -> list[str]:
    """Entries of ``request`` that no one of ``nodes`` (what each offers) offers: the shortest
    such list over the nodes; every requested entry when there is no node."""
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
    """Turns an attempt's market and queue into Ray options (one strategy per convention)."""

    mode: str  # "markers" / "labels"

    def options(self, base: dict[str, Any], market: str, queue: Optional[str]) -> dict[str, Any]:
        """Ray ``.options()`` for one attempt: ``base`` (the task's own options: num_cpus, memory,
        num_gpus, accelerator_type, custom resources, runtime_env; not modified) plus placement."""
        ...

    def pinned(self, market: str) -> dict[str, Any]:
        """Ray options that keep an actor serving no queue (the supervising actor, a pool's
        manager) on ``market``; empty when the cluster declares no market this way."""
        ...


class MarkerPlacement:
    """Placement through custom-resource markers (see the module docstring)."""

    mode = MARKERS

    def __init__(self, view: Optional[ClusterView] = None) -> None:
        self.view = view or cluster_view()

    def options(self, base: dict[str, Any], market: str, queue: Optional[str]) -> dict[str, Any]:
        view = self.view
        markers: dict[str, float] = {}
        if view.has_markets(MARKERS):
            markers[str(market)] = MARKER
        else:
            view.warn_once(
                "markets",
                "no node of this cluster declares a market resource ('spot' / 'ondemand'): "
                "attempts are placed without a market constraint.",
            )
        q = queue or DEFAULT_QUEUE
        if view.has_queues(MARKERS):
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

    def pinned(self, market: str) -> dict[str, Any]:
        return {"resources": {str(market): MARKER}} if self.view.has_markets(MARKERS) else {}


class LabelPlacement:
    """Placement through Ray node labels and ``label_selector`` (see the module docstring)."""

    mode = LABELS

    def __init__(self, view: Optional[ClusterView] = None) -> None:
        self.view = view or cluster_view()

    def options(self, base: dict[str, Any], market: str, queue: Optional[str]) -> dict[str, Any]:
        view = self.view
        selector: dict[str, str] = {}
        if view.has_markets(LABELS):
            selector[MARKET_LABEL] = MARKET_LABEL_VALUES[str(market)]
        else:
            view.warn_once(
                "label-markets",
                f"no node of this cluster declares the market label {MARKET_LABEL!r}: "
                "attempts are placed without a market constraint.",
            )
        if view.has_queues(LABELS):
            selector[queue_label(queue or DEFAULT_QUEUE)] = LABEL_TRUE
        else:
            view.warn_once(
                "label-queues",
                f"no node of this cluster declares a queue label ('{QUEUE_LABEL_PREFIX}<name>'): "
                "attempts are placed without a queue constraint.",
            )
        if not selector and "accelerator_type" not in base:
            return base
        opts = dict(base)
        acc = opts.pop("accelerator_type", None)
        if acc:
            selector[ACCELERATOR_LABEL] = str(acc)
        opts["label_selector"] = {**(opts.get("label_selector") or {}), **selector}
        return opts

    def pinned(self, market: str) -> dict[str, Any]:
        if not self.view.has_markets(LABELS):
            return {}
        return {"label_selector": {MARKET_LABEL: MARKET_LABEL_VALUES[str(market)]}}


def attempt_options(base: dict[str, Any], market: str, queue: Optional[str], override: str = AUTO) -> dict[str, Any]:
    """One attempt's Ray options with this process's cluster view and the strategy it chooses."""
    view = cluster_view()
    return view.placement(override, market, queue or DEFAULT_QUEUE).options(base, market, queue)


def request_of(opts: dict[str, Any]) -> dict[str, float]:
    """What ``opts`` asks of a node: Ray resource names -> amounts, and each plain label-selector
    entry as ``key=value`` (amount :data:`MARKER`; see :func:`offers`). Selector entries with an
    operator (``!``, ``in(...)``) are not checked."""
    req: dict[str, float] = {"CPU": float(opts.get("num_cpus", 1) or 0)}
    if opts.get("num_gpus"):
        req["GPU"] = float(opts["num_gpus"])
    if opts.get("memory"):
        req["memory"] = float(opts["memory"])
    if opts.get("accelerator_type"):
        req[f"accelerator_type:{opts['accelerator_type']}"] = 0.001
    req.update(opts.get("resources") or {})
    for k, v in (opts.get("label_selector") or {}).items():
        if v and _LABEL_NAME_RE.fullmatch(str(v)):
            req[f"{k}={v}"] = MARKER
    return {k: v for k, v in req.items() if v > 0}


def describe(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))
