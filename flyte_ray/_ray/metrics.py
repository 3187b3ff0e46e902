"""flyte-ray's Prometheus metrics, exported through Ray's own metrics pipeline.

:class:`Metrics` (a process part) is an attempt observer on the controller seam and has a few
methods other parts call (checkpoints, the cache, replica pools). What it records goes to Ray's
metrics API (``ray.util.metrics``); Ray exports it on each node's Prometheus endpoint (the
metrics agent, port ``ray._private.worker.global_worker.node.metrics_export_port``, or
``MetricsExportPort`` in ``ray.nodes()``), where Ray's Grafana dashboards and any Prometheus
scrape config for a Ray cluster already look.

Exported names (Ray 2.60 with its default OpenTelemetry backend, measured): Ray prefixes
``ray_``; a counter gets ``_total``; a histogram is ``_bucket{le=...}``, ``_count`` and ``_sum``.

==============================================  ===========================  ======================
exported as                                     tags                         what
==============================================  ===========================  ======================
``ray_flyte_ray_attempts_total``                task, market, outcome        attempts that ended
``ray_flyte_ray_preemptions_total``             task, market                 attempts preempted
``ray_flyte_ray_retries_total``                 task, market, kind           attempts after the
                                                                             first: ``kind`` is the
                                                                             previous attempt's
                                                                             failure (``user``,
                                                                             ``system``, ``none``:
                                                                             nobody's, e.g. spot
                                                                             unavailable;
                                                                             ``unknown``: no
                                                                             history at hand)
``ray_flyte_ray_queued_seconds_*``              task, market                 submitted → started
``ray_flyte_ray_runtime_seconds_*``             task, market                 user code's runtime
``ray_flyte_ray_lost_work_seconds_total``       task                         work redone after a
                                                                             loss (``lost_work``)
``ray_flyte_ray_checkpoint_seconds_*``          task, op (save | restore)    checkpoint times
``ray_flyte_ray_checkpoint_bytes_total``        task, op (save | restore)    checkpoint sizes
``ray_flyte_ray_cache_lookups_total``           task, result (hit | miss)    cache lookups
``ray_flyte_ray_replicas``                      pool, market                 warm replicas (gauge)
==============================================  ===========================  ======================

``task`` is the task's fqn (bounded by the user's code), ``market`` ``spot``/``ondemand``,
``outcome`` one of :class:`~flyte_ray._core.records.AttemptRecord`'s outcomes: cardinality is
bounded. No call ids, run names or node ids as tags. Ray adds its own labels to every series
(``Component``, ``NodeAddress``, ``SessionName``, ``Version``, ``WorkerId``, ``otel_scope_*``),
so each process that records has its own series: sum over ``WorkerId`` in queries.

Cost (measured on the 2-core development machine, Ray 2.60): one ``Counter.inc`` with three
tags costs ~2.8 us, ``Histogram.observe`` ~1.6 us, ``Gauge.set`` ~1.8 us, so recording an attempt
directly (a count and two histograms) would cost ~6 us, more than half the ~10 us the layers
cost per call. Instead every method here only adds to local tables under one lock (a counter by
its tag tuple; a histogram by bucket, with the bucket's sum): ~1.0 us per attempt
(``attempt_started`` + ``attempt_finished``) with Ray connected, ~1.3 us without
(``tests/test_metrics.py`` guards a loose bound). One daemon thread per process hands the tables
to Ray every :func:`flush_interval` seconds: one ``inc`` per tag tuple, one ``observe`` per
observation at its bucket's mean (bucket counts stay exact), ~3.7 us per attempt off the hot path
(1000 attempts of one task: 3.7 ms). Ray itself exports a histogram's ``_sum`` as bucket
midpoints × counts (measured), so bucketing first loses nothing.

Rules:

* nothing here raises into the caller: a failure is logged once per process and the metrics
  of that moment are dropped;
* without Ray (``ray.is_initialized()`` false) nothing is handed to Ray and no thread starts;
  the tables (bounded by the tags' cardinality) wait for a Ray to flush to;
* the thread sleeps on an event while nothing is recorded; while any replica gauge is set it
  re-sets the gauges every interval, because Ray's metrics agent forgets a gauge that is not
  re-reported for two export intervals (measured: a gauge set once vanishes after ~20 s);
* Ray exports every ``metrics_report_interval_ms`` (10 s by default, 1 s at the least;
  ``RAY_metrics_report_interval_ms`` in the environment of the process that starts the cluster
  changes it for every process of the cluster: the tests use 1 s), so a value reaches Prometheus
  within one flush interval plus one export interval; what a process recorded in its last flush
  interval before it exits is lost (``reset``, i.e. ``flyte_ray.shutdown()``, flushes first);
* histogram boundaries are constants: Ray registers a metric once per node and drops data
  points whose buckets disagree.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

import ray

from .._core.events import lost_seconds
from .._core.process import PROCESS
from .._core.records import NEVER_RAN, AttemptRecord, AttemptRequest, Outcome

if TYPE_CHECKING:
    from .._core.call import Call

__all__ = ["Metrics", "metrics", "flush_interval", "NAMES", "QUEUED_BOUNDS", "RUNTIME_BOUNDS", "CHECKPOINT_BOUNDS"]

logger = logging.getLogger("flyte_ray")

#: Seconds an attempt waited to start: from 10 ms (a warm cluster) to an hour (a scale-up, a spot wait).
QUEUED_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: Seconds the user's code ran: from 1 ms (trivial tasks) to a day (training).
RUNTIME_BOUNDS = (0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
#: Seconds a checkpoint save or restore took.
CHECKPOINT_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

# Metric id -> (kind, Ray name, description, tag keys, histogram boundaries). The id is the first
# element of every local table key; the rest of the key is the tag values, in tag-key order.
_DEFS: dict[str, tuple[str, str, str, tuple[str, ...], Optional[tuple[float, ...]]]] = {
    "attempts": ("counter", "flyte_ray_attempts", "Attempts that ended", ("task", "market", "outcome"), None),
    "preemptions": ("counter", "flyte_ray_preemptions", "Attempts preempted", ("task", "market"), None),
    "retries": (
        "counter",
        "flyte_ray_retries",
        "Attempts after the first, by the previous attempt's failure kind (user, system, none)",
        ("task", "market", "kind"),
        None,
    ),
    "queued": (
        "histogram",
        "flyte_ray_queued_seconds",
        "Seconds from an attempt's submission to its start",
        ("task", "market"),
        QUEUED_BOUNDS,
    ),
    "runtime": (
        "histogram",
        "flyte_ray_runtime_seconds",
        "Seconds an attempt's user code ran",
        ("task", "market"),
        RUNTIME_BOUNDS,
    ),
    "lost_work": ("counter", "flyte_ray_lost_work_seconds", "Seconds of work lost and redone", ("task",), None),
    "ckpt_seconds": (
        "histogram",
        "flyte_ray_checkpoint_seconds",
        "Seconds a checkpoint save or restore took",
        ("task", "op"),
        CHECKPOINT_BOUNDS,
    ),
    "ckpt_bytes": ("counter", "flyte_ray_checkpoint_bytes", "Checkpoint bytes saved or restored", ("task", "op"), None),
    "cache": ("counter", "flyte_ray_cache_lookups", "Cache lookups by result (hit, miss)", ("task", "result"), None),
    "replicas": ("gauge", "flyte_ray_replicas", "Warm replicas by pool and market", ("pool", "market"), None),
}

#: Metric id -> the name Prometheus shows (Ray 2.60; histograms add _bucket/_count/_sum).
NAMES = {mid: "ray_" + name + ("_total" if kind == "counter" else "") for mid, (kind, name, _, _, _) in _DEFS.items()}


def flush_interval() -> float:
    """Seconds between hand-overs to Ray: ``FLYTE_RAY_METRICS_FLUSH_S`` when set, else half of
    Ray's export interval (at least 1 s, Ray's floor), at most 5 s: gauges re-set that often
    outlive the agent's two-interval expiry."""
    env = os.environ.get("FLYTE_RAY_METRICS_FLUSH_S")
    if env:
        try:
            return min(max(float(env), 0.05), 60.0)
        except ValueError:
            pass
    try:
        report_s = float(ray._config.metrics_report_interval_ms()) / 1000.0  # private; Ray 2.60
    except Exception:  # noqa: BLE001 - an upgrade moved it: Ray's default
        report_s = 10.0
    return min(5.0, max(report_s, 1.0) / 2.0)


class Metrics:
    """This process's metrics recorder (a process part; module docstring)."""

    reset_order = 95  # last: what other parts report while they reset is still handed over (Ray is connected)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple, float] = {}  # (metric id, *tag values) -> amount since the last flush
        self._hists: dict[tuple, list] = {}  # (metric id, *tag values) -> [counts per bucket, sums per bucket]
        self._gauges: dict[tuple, float] = {}  # (pool, market) -> replicas now (re-set every flush)
        self._ray: Optional[dict[str, Any]] = None  # metric id -> Ray metric (made on the first flush)
        self._warned = False
        self._wake = threading.Event()  # set: something to flush
        self._thread: Optional[threading.Thread] = None
        self._thread_lock = threading.Lock()
        self.interval: Optional[float] = None  # the flusher's interval (set when it starts)

    def reset(self) -> None:
        """Hand what is pending to Ray while it is still connected, then forget everything."""
        self.flush()
        with self._lock:
            self._counts = {}
            self._hists = {}
            self._gauges = {}
            self._ray = None
            self._warned = False

    # ------------------------------------------------------------ the controller seam
    def attempt_started(self, call: "Call", req: AttemptRequest, record: AttemptRecord) -> None:
        if record.attempt == 0:
            return
        try:
            history = call.state.history
            prev = history[-2] if len(history) >= 2 and history[-1] is record else None
            kind = (prev.failure_kind or "none") if prev is not None else "unknown"
            self._add(("retries", call.spec.fqn, record.market, kind), 1)
        except Exception as e:  # noqa: BLE001 - metrics never fail a call
            self._failed(e)

    def attempt_finished(self, call: "Call", req: AttemptRequest, record: AttemptRecord, out: Outcome) -> None:
        try:
            task = call.spec.fqn
            market = record.market
            outcome = record.outcome
            started = record.started
            runtime = record.runtime
            if runtime is None and started is not None and record.ended is not None:
                runtime = record.ended - started  # the attempt never reported (its node went): until it ended
            with self._lock:
                counts = self._counts
                key: tuple = ("attempts", task, market, outcome)
                counts[key] = counts.get(key, 0) + 1
                if outcome == "preemption":
                    key = ("preemptions", task, market)
                    counts[key] = counts.get(key, 0) + 1
                if started is not None and record.submitted:
                    # submitted is the supervisor's clock, started the worker's: clamp skew at 0
                    self._observe(("queued", task, market), QUEUED_BOUNDS, max(started - record.submitted, 0.0))
                if runtime is not None:
                    self._observe(("runtime", task, market), RUNTIME_BOUNDS, max(runtime, 0.0))
            hist = call.state.history
            # the attempt that ran after a system failure (attempts between that never started
            # resume nothing): what that one ran past the checkpoint this one resumed from was
            # lost (the rule of flyte_ray._core.events.with_lost_work)
            prev = None
            if len(hist) > 1 and hist[-1] is record and record.outcome not in NEVER_RAN:
                prev = next((r for r in reversed(hist[:-1]) if r.outcome not in NEVER_RAN), None)
            if prev is not None and prev.failure_kind == "system":
                ran = prev.runtime if prev.runtime is not None else prev.duration
                if ran is not None:
                    resumed = out.ckpt[2] if out.ckpt else None
                    self.lost_work(task, lost_seconds(ran, prev.ended, resumed))
            if not self._wake.is_set():
                self._kick()
        except Exception as e:  # noqa: BLE001 - metrics never fail a call
            self._failed(e)

    # ------------------------------------------------------------ other parts' reports
    def lost_work(self, task: str, seconds: float) -> None:
        """``seconds`` of ``task``'s work were lost (a preemption after the last checkpoint) and are redone."""
        self._add(("lost_work", task), seconds)

    def checkpoint_saved(self, task: str, seconds: float, nbytes: int) -> None:
        """``task`` saved a checkpoint of ``nbytes`` bytes in ``seconds``."""
        self._checkpoint(task, "save", seconds, nbytes)

    def checkpoint_restored(self, task: str, seconds: float, nbytes: int) -> None:
        """``task`` restored a checkpoint of ``nbytes`` bytes in ``seconds``."""
        self._checkpoint(task, "restore", seconds, nbytes)

    def cache(self, task: str, hit: bool) -> None:
        """A cache lookup of ``task``'s outputs hit or missed."""
        self._add(("cache", task, "hit" if hit else "miss"), 1)

    def replicas(self, pool: str, market: str, n: int) -> None:
        """``pool`` has ``n`` warm replicas on ``market`` now (a gauge, kept alive by the flusher)."""
        try:
            if not _finite(n):
                return
            with self._lock:
                self._gauges[(pool, market)] = float(n)
            if not self._wake.is_set():
                self._kick()
        except Exception as e:  # noqa: BLE001
            self._failed(e)

    # ------------------------------------------------------------ local tables
    def _add(self, key: tuple, amount: float) -> None:
        try:
            if not (_finite(amount) and amount > 0):  # Ray's counters take positive finite amounts only
                return
            with self._lock:
                counts = self._counts
                counts[key] = counts.get(key, 0) + amount
            if not self._wake.is_set():
                self._kick()
        except Exception as e:  # noqa: BLE001 - metrics never fail a call
            self._failed(e)

    def _checkpoint(self, task: str, op: str, seconds: float, nbytes: int) -> None:
        try:
            if _finite(seconds):
                with self._lock:
                    self._observe(("ckpt_seconds", task, op), CHECKPOINT_BOUNDS, max(float(seconds), 0.0))
            self._add(("ckpt_bytes", task, op), nbytes)
            if not self._wake.is_set():
                self._kick()
        except Exception as e:  # noqa: BLE001
            self._failed(e)

    def _observe(self, key: tuple, bounds: tuple[float, ...], value: float) -> None:
        # Caller holds the lock. Bucket i holds bounds[i-1] < value <= bounds[i] (Prometheus' le);
        # the last one everything above the last bound.
        cell = self._hists.get(key)
        n = len(bounds) + 1
        if cell is None:
            cell = self._hists[key] = [0] * n + [0.0] * n
        i = bisect.bisect_left(bounds, value)
        cell[i] += 1
        cell[n + i] += value

    # ------------------------------------------------------------ hand-over to Ray
    def _kick(self) -> None:
        """Something was recorded and the flusher is idle (or not started): wake or start it."""
        if self._thread is None:
            if not ray.is_initialized():
                return  # no Ray to hand to: keep the tables, start nothing
            with self._thread_lock:
                if self._thread is None:
                    self.interval = flush_interval()
                    t = threading.Thread(target=self._run, name="flyte-ray-metrics", daemon=True)
                    t.start()
                    self._thread = t
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self.interval = flush_interval()  # per cycle: a later cluster may export at another pace
            time.sleep(self.interval)
            if not self._gauges:
                self._wake.clear()  # cleared before the tables are taken: later records set it again
            self.flush()

    def flush(self) -> None:
        """Hand what this process recorded since the last flush to Ray's metrics now (the thread
        calls it every interval; ``reset`` calls it). Never raises; does nothing without Ray."""
        try:
            if not ray.is_initialized():
                return
            with self._lock:
                counts, self._counts = self._counts, {}
                hists, self._hists = self._hists, {}
                gauges = list(self._gauges.items())
            if not (counts or hists or gauges):
                return
            made = self._ray_metrics()
            for key, amount in counts.items():
                made[key[0]].inc(amount, _tags(key[0], key[1:]))
            for key, cell in hists.items():
                self._flush_histogram(made[key[0]], _DEFS[key[0]][4], _tags(key[0], key[1:]), cell)
            gauge = made["replicas"]
            for (pool, market), n in gauges:
                gauge.set(n, {"pool": str(pool), "market": str(market)})
        except Exception as e:  # noqa: BLE001 - what this flush held is dropped
            self._failed(e)

    @staticmethod
    def _flush_histogram(hist: Any, bounds: Any, tags: dict[str, str], cell: list) -> None:
        n = len(bounds) + 1
        for i in range(n):
            count = cell[i]
            if not count:
                continue
            # The bucket's mean, kept inside the bucket (float rounding may push it over an edge).
            lo = bounds[i - 1] if i > 0 else -math.inf
            hi = bounds[i] if i < n - 1 else math.inf
            value = min(cell[n + i] / count, hi)
            if value <= lo:
                value = math.nextafter(lo, math.inf)
            for _ in range(count):
                hist.observe(value, tags)

    def _ray_metrics(self) -> dict[str, Any]:
        made = self._ray
        if made is None:
            from ray.util.metrics import Counter, Gauge, Histogram

            made = {}
            for mid, (kind, name, desc, tag_keys, bounds) in _DEFS.items():
                if kind == "counter":
                    made[mid] = Counter(name, desc, tag_keys=tag_keys)
                elif kind == "histogram":
                    made[mid] = Histogram(name, desc, boundaries=[float(b) for b in bounds or ()], tag_keys=tag_keys)
                else:
                    made[mid] = Gauge(name, desc, tag_keys=tag_keys)
            self._ray = made
        return made

    def _failed(self, e: BaseException) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "flyte-ray metrics failed in this process (%s: %s); tasks go on, some metrics may be missing",
                type(e).__name__,
                e,
            )


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _tags(mid: str, values: tuple) -> dict[str, str]:
    return {k: str(v) for k, v in zip(_DEFS[mid][3], values)}


def metrics() -> Metrics:
    """This process's metrics recorder."""
    return PROCESS.part(Metrics)
