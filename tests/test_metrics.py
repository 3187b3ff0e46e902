"""flyte-ray's metrics on a real embedded Ray: recorded in the driver (through the real attempt
loop) and in a worker process, scraped from the node's Prometheus endpoint over HTTP. No part of
Ray is patched. Ray exports every ``metrics_report_interval_ms`` (10 s by default): the cluster
here starts with ``RAY_metrics_report_interval_ms=1000``, so values show within ~2 s.

Each test records under its own task names: counters are cumulative for the cluster's session."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
import time
import urllib.request

import pytest
import ray

import flyte_ray
from flyte_ray._core.loop import run_attempts
from flyte_ray._core.records import AttemptRecord, AttemptRequest, Kind, Market, Outcome
from flyte_ray._ray.metrics import NAMES, Metrics, metrics

import tasks_metrics as tm

pytestmark = pytest.mark.timeout(120)

REPORT_MS = "1000"
POLL_LIMIT_S = 20.0


@pytest.fixture(scope="module")
def cluster():
    """An embedded Ray (one CPU) whose processes export metrics every second."""
    old = os.environ.get("RAY_metrics_report_interval_ms")
    os.environ["RAY_metrics_report_interval_ms"] = REPORT_MS  # read by every process the cluster starts
    flyte_ray.shutdown()
    flyte_ray.init(num_cpus=1, storage=tempfile.mkdtemp(prefix="frs-"))
    try:
        yield
    finally:
        flyte_ray.shutdown()
        if old is None:
            os.environ.pop("RAY_metrics_report_interval_ms", None)
        else:
            os.environ["RAY_metrics_report_interval_ms"] = old


# ---------------------------------------------------------------- scraping
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def endpoint() -> str:
    """The metrics export endpoint of the (only) node, from Ray's node table."""
    (node,) = [n for n in ray.nodes() if n["Alive"]]
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def scrape(url: str) -> tuple[list[tuple[str, dict, float]], dict[str, str]]:
    """Samples ``(name, labels, value)`` and ``# TYPE`` lines (name -> type) of one scrape."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    samples, types = [], {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        if m and "flyte_ray" in m.group(1):
            samples.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return samples, types


def value(samples, name: str, **labels: str):
    """The sum over Ray's own labels (one series per recording process) of ``name`` with ``labels``;
    None when no series matches."""
    hits = [v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items())]
    return sum(hits) if hits else None


def wait_for(url: str, expected: dict, limit: float = POLL_LIMIT_S):
    """Scrape until every ``(name, labels) -> value`` in ``expected`` shows; the last scrape."""
    deadline = time.monotonic() + limit
    while True:
        samples, types = scrape(url)
        got = {k: value(samples, k[0], **dict(k[1])) for k in expected}
        if got == expected:
            return samples, types
        if time.monotonic() > deadline:
            missing = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
            pytest.fail(f"metrics not exported within {limit}s: (got, expected) {missing}")
        time.sleep(0.25)


def key(mid: str, suffix: str = "", **labels: str) -> tuple:
    return (NAMES[mid] + suffix, tuple(sorted(labels.items())))


# ---------------------------------------------------------------- tests
def test_without_ray_nothing_raises_and_nothing_starts():
    """Ray not initialised: every method records locally or drops, never raises, starts no thread."""
    flyte_ray.shutdown()
    assert not ray.is_initialized()
    m = Metrics()
    call = tm.make_call("mt.noray")
    now = time.time()
    rec = AttemptRecord(attempt=0, user_attempt=0, system_failures=0, market=Market.SPOT, queue="default",
                        submitted=now)
    out = Outcome(Kind.OK, value=1, started=now + 1, ended=now + 2, runtime=1.0)
    rec.finish(out, now + 2)
    req = AttemptRequest(0, 0, 0, Market.SPOT, "default", None, None, None)
    m.attempt_started(call, req, rec)
    m.attempt_finished(call, req, rec, out)
    m.lost_work("mt.noray", 3.0)
    m.checkpoint_saved("mt.noray", 0.1, 10)
    m.checkpoint_restored("mt.noray", 0.1, 10)
    m.cache("mt.noray", True)
    m.replicas("pool", "spot", 2)
    m.flush()
    assert m._thread is None  # nothing heavy without Ray
    assert m._counts[("attempts", "mt.noray", Market.SPOT, "succeeded")] == 1  # kept for a Ray to come
    m.reset()
    assert not m._counts and not m._hists and not m._gauges


def test_broken_input_and_backend_never_raise_and_log_once(cluster):
    log = logging.getLogger("flyte_ray")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    log.addHandler(handler)
    try:
        m = Metrics()
        req = AttemptRequest(1, 0, 0, Market.SPOT, "default", None, None, None)
        rec = AttemptRecord(attempt=1, user_attempt=0, system_failures=0, market=Market.SPOT, queue="default")
        m.attempt_started(None, req, rec)  # type: ignore[arg-type]  # no call: caught
        m.attempt_finished(None, req, rec, Outcome(Kind.OK))  # type: ignore[arg-type]
        m.lost_work("t", float("nan"))  # dropped: Ray's counters take positive finite amounts
        m.lost_work("t", -1.0)
        m.checkpoint_saved("t", float("inf"), "many")  # type: ignore[arg-type]
        m.replicas("p", "spot", None)  # type: ignore[arg-type]
        assert not m._counts and not m._hists and not m._gauges
        m.cache("t", False)
        m._ray = {"cache": object()}  # a backend whose metric has no inc(): the flush drops, logs
        m.flush()
        m.flush()
        assert not m._counts
        warnings = [r for r in seen if r.levelno >= logging.WARNING and "metrics" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
    finally:
        log.removeHandler(handler)


def test_hot_path_stays_cheap(cluster):
    """The observer only adds to local tables (~1 us measured); a loose bound, a loaded machine."""
    m = metrics()
    call = tm.make_call("mt.cost")
    now = time.time()
    rec = AttemptRecord(attempt=0, user_attempt=0, system_failures=0, market=Market.SPOT, queue="default",
                        submitted=now)
    out = Outcome(Kind.OK, value=1, started=now + 0.01, ended=now + 0.02, runtime=0.005)
    rec.finish(out, now + 0.02)
    req = AttemptRequest(0, 0, 0, Market.SPOT, "default", None, None, None)

    def block(n: int = 1000) -> float:
        t = time.perf_counter()
        for _ in range(n):
            m.attempt_started(call, req, rec)
            m.attempt_finished(call, req, rec, out)
        return (time.perf_counter() - t) / n

    per_attempt = min(block() for _ in range(5))
    assert per_attempt < 25e-6, f"{per_attempt * 1e6:.1f} us per attempt"


def test_driver_and_worker_metrics_reach_prometheus(cluster):
    url = endpoint()
    m = metrics()

    # The driver: a real attempt loop with the part as its observer (a spot preemption, a user
    # failure, a success), and the reports other parts make.
    call = tm.make_call("mt.driver", retries=1)
    outcomes = [
        lambda t: Outcome(Kind.SYSTEM, error=RuntimeError("lost"), system_reason="preemption",
                          started=t + 0.2, ended=t + 2.2),  # no runtime reported: ran until it ended
        lambda t: Outcome(Kind.USER, error=ValueError("boom"), started=t + 0.2, ended=t + 0.6, runtime=0.3),
        lambda t: Outcome(Kind.OK, value="done", started=t + 0.2, ended=t + 0.6, runtime=0.3),
    ]

    async def execute(req: AttemptRequest) -> Outcome:
        return outcomes[req.attempt](time.time())

    async def no_sleep(s: float) -> None:
        pass

    assert asyncio.run(run_attempts(call, execute, no_sleep, observer=m)) == "done"
    history = call.state.history
    assert [r.outcome for r in history] == ["preemption", "failed", "succeeded"]
    m.lost_work("mt.driver", 12.5)
    m.checkpoint_saved("mt.driver", 0.2, 1000)
    m.checkpoint_restored("mt.driver", 0.07, 500)
    m.cache("mt.driver", hit=False)
    m.cache("mt.driver", hit=True)
    m.cache("mt.driver", hit=True)
    m.replicas("mt-pool", "spot", 3)

    # A worker process records through its own part; its flusher thread hands over.
    pid, worker_interval = ray.get(tm.record_in_worker_remote.remote("mt.worker"))
    assert pid != os.getpid()
    assert worker_interval == 0.5  # half of the cluster's 1 s export interval

    attempts = {}
    for r in history:
        k = key("attempts", task="mt.driver", market=str(r.market), outcome=r.outcome)
        attempts[k] = attempts.get(k, 0) + 1.0
    spot0 = str(history[0].market)
    assert spot0 == "spot"
    expected = {
        **attempts,
        key("preemptions", task="mt.driver", market="spot"): 1.0,
        key("retries", task="mt.driver", market=str(history[1].market), kind="system"): 1.0,
        key("retries", task="mt.driver", market=str(history[2].market), kind="user"): 1.0,
        # queued ~0.2 s each (bucket le=0.25); runtimes 2.0 (until the preempted one ended), 0.3, 0.3
        key("queued", "_count", task="mt.driver"): 3.0,
        key("queued", "_bucket", task="mt.driver", le="0.1"): 0.0,
        key("queued", "_bucket", task="mt.driver", le="0.25"): 3.0,
        key("runtime", "_count", task="mt.driver"): 3.0,
        key("runtime", "_bucket", task="mt.driver", le="0.1"): 0.0,
        key("runtime", "_bucket", task="mt.driver", le="0.5"): 2.0,
        key("runtime", "_bucket", task="mt.driver", le="1.0"): 2.0,
        key("runtime", "_bucket", task="mt.driver", le="5.0"): 3.0,
        # 2.0 s from the observer itself (the preempted attempt ran 2.0 s and the next one resumed
        # from no checkpoint: all of it was lost), plus the 12.5 s reported above
        key("lost_work", task="mt.driver"): 14.5,
        key("ckpt_seconds", "_count", task="mt.driver", op="save"): 1.0,
        key("ckpt_seconds", "_bucket", task="mt.driver", op="save", le="0.1"): 0.0,
        key("ckpt_seconds", "_bucket", task="mt.driver", op="save", le="0.25"): 1.0,
        key("ckpt_seconds", "_bucket", task="mt.driver", op="restore", le="0.1"): 1.0,
        key("ckpt_bytes", task="mt.driver", op="save"): 1000.0,
        key("ckpt_bytes", task="mt.driver", op="restore"): 500.0,
        key("cache", task="mt.driver", result="hit"): 2.0,
        key("cache", task="mt.driver", result="miss"): 1.0,
        key("replicas", pool="mt-pool", market="spot"): 3.0,
        # the worker: a preempted spot attempt queued 3 s, ran 40 s, and one checkpoint save
        key("attempts", task="mt.worker", market="spot", outcome="preemption"): 1.0,
        key("preemptions", task="mt.worker", market="spot"): 1.0,
        key("queued", "_bucket", task="mt.worker", market="spot", le="2.5"): 0.0,
        key("queued", "_bucket", task="mt.worker", market="spot", le="5.0"): 1.0,
        key("runtime", "_bucket", task="mt.worker", market="spot", le="30.0"): 0.0,
        key("runtime", "_bucket", task="mt.worker", market="spot", le="60.0"): 1.0,
        key("ckpt_bytes", task="mt.worker", op="save"): 4096.0,
    }
    samples, types = wait_for(url, expected)

    # The worker's series come from another process than the driver's (Ray labels each process).
    def processes(task: str) -> set:
        return {lab.get("WorkerId") for n, lab, _ in samples if n == NAMES["attempts"] and lab.get("task") == task}

    workers, drivers = processes("mt.worker"), processes("mt.driver")
    assert workers and drivers and workers.isdisjoint(drivers)
    # Prometheus types, and only the tags documented (plus Ray's own labels)
    assert types[NAMES["attempts"]] == "counter"
    assert types[NAMES["queued"]] == "histogram"
    assert types[NAMES["replicas"]] == "gauge"
    ours = {"task", "market", "outcome", "kind", "op", "result", "pool", "le"}
    ray_labels = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "JobId"}
    for n, lab, _ in samples:
        extra = set(lab) - ours - ray_labels
        assert all(x.startswith("otel_scope") for x in extra), (n, extra)

    # A gauge set once lives on: the flusher re-sets it (Ray's agent forgets a gauge after two export
    # intervals without a report); a new value replaces it.
    time.sleep(3.0)
    wait_for(url, {key("replicas", pool="mt-pool", market="spot"): 3.0}, limit=0.0)
    m.replicas("mt-pool", "spot", 5)
    wait_for(url, {key("replicas", pool="mt-pool", market="spot"): 5.0})
