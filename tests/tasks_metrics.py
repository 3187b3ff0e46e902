"""What tests/test_metrics.py runs in Ray workers: a worker process records metrics through its own
``Metrics`` part, with real attempt records, and leaves the hand-over to Ray to the part's thread."""

from __future__ import annotations

import os
import time

import ray

from flyte_ray._core.call import Call
from flyte_ray._core.records import AttemptRecord, AttemptRequest, Kind, Market, Outcome
from flyte_ray._core.settings import Settings
from flyte_ray._core.spec import CallSpec
from flyte_ray._ray.metrics import metrics
from flyte_ray.retry import RetryStrategy


def make_call(fqn: str, retries: int = 0) -> Call:
    spec = CallSpec(fqn=fqn, short_name=fqn.rsplit(".", 1)[-1], interruptible=True, queue=None,
                    retries=RetryStrategy(retries), timeout=None, resources=None, env_vars=None, secrets=None,
                    cache=None, reusable=None, ray_options={})
    return Call(None, spec, "r-metrics", "root", (), {}, Settings())


def finished(call: Call, market: Market, out: Outcome, *, attempt: int = 0, submitted: float) -> AttemptRecord:
    """One attempt of ``call`` recorded as the attempt loop does (a record, ``finish``, the observer)."""
    req = AttemptRequest(attempt, 0, 0, market, "default", None, None, None)
    rec = AttemptRecord(attempt=attempt, user_attempt=0, system_failures=0, market=market, queue="default",
                        submitted=submitted)
    call.state.history.append(rec)
    m = metrics()
    m.attempt_started(call, req, rec)
    rec.finish(out, out.ended or time.time())
    m.attempt_finished(call, req, rec, out)
    return rec


def record_in_worker(fqn: str) -> tuple:
    """A preempted spot attempt (ran 40 s, queued 3 s) and a checkpoint save, recorded in this worker."""
    call = make_call(fqn)
    now = time.time()
    finished(call, Market.SPOT,
             Outcome(Kind.SYSTEM, error=RuntimeError("node lost"), system_reason="preemption",
                     started=now - 40.0, ended=now),
             submitted=now - 43.0)
    metrics().checkpoint_saved(fqn, 0.3, 4096)
    return os.getpid(), metrics().interval


# Bound under another name: the plain function stays importable by reference (ray-here.md).
record_in_worker_remote = ray.remote(num_cpus=1, max_retries=0)(record_in_worker)
