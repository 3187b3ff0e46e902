"""Where a run's records live in storage, and how they are written and read back.

Layout, under the run's storage root::

    runs/<run>/events/<time_ns>-<writer>-<seq>.jsonl   one batch of AttemptEvents (append-only)
    runs/<run>/run.json                                 the run's summary, written by its driver

Rules:

* Append-only: every batch is a new object, written atomically (on S3 one PUT), so writers in
  many processes never contend and a reader sees whole batches or none.
* Readers treat everything as untrusted (:mod:`.events`); a batch or a summary that does not
  decode is skipped and named in ``skipped``, never fatal.
* Listing runs reads ``run.json`` of each run (small); runs without one (a driver that died
  before writing it) are still listed by name, with what their events say.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..storage import Storage
from .events import AttemptEvent, decode_batch, encode_batch

__all__ = ["RunSummary", "RunLog", "write_batch", "write_summary", "load_run", "list_runs"]

MAX_SUMMARY_BYTES = 64 * 1024
_WRITER = f"{os.getpid():x}{secrets.token_hex(3)}"  # this process, in batch names


@dataclass
class RunSummary:
    """What a run's driver says about it (``run.json``)."""

    run: str
    task: str = ""
    started: float = 0.0
    ended: Optional[float] = None
    phase: str = "running"  # running | succeeded | failed | cancelled
    error: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, d: Any) -> "RunSummary":
        if not isinstance(d, dict) or not isinstance(d.get("run"), str):
            raise ValueError("run.json: expected an object with a string 'run'")
        out = cls(run=d["run"][:256])
        for k, kind in (("task", str), ("phase", str), ("error", str)):
            v = d.get(k, getattr(out, k))
            if not isinstance(v, kind):
                raise ValueError(f"run.json.{k}: expected a string")
            setattr(out, k, v[:2000])
        for k in ("started", "ended"):
            v = d.get(k, getattr(out, k))
            if v is None and k == "ended":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"run.json.{k}: expected a number")
            setattr(out, k, float(v))
        return out


@dataclass
class RunLog:
    """A run as read back from storage."""

    run: str
    summary: Optional[RunSummary]
    events: list[AttemptEvent] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _events_prefix(storage: Storage, run: str) -> str:
    return storage.key("runs", run, "events")


def write_batch(storage: Storage, run: str, events: list[AttemptEvent], seq: int) -> str:
    """Store one batch of ``run``'s events as a new object; its key."""
    key = f"{_events_prefix(storage, run)}/{time.time_ns():020d}-{_WRITER}-{seq:06d}.jsonl"
    storage.store.put_atomic(key, encode_batch(events))
    return key


def write_summary(storage: Storage, summary: RunSummary) -> None:
    storage.store.put_atomic(
        storage.key("runs", summary.run, "run.json"), json.dumps(summary.to_json(), allow_nan=False).encode()
    )


def load_run(storage: Storage, run: str) -> RunLog:
    """Every stored record of ``run`` (events in the order they were written)."""
    store = storage.store
    log = RunLog(run, None)
    raw = store.get(storage.key("runs", run, "run.json"))
    if raw is not None:
        try:
            if len(raw) > MAX_SUMMARY_BYTES:
                raise ValueError("run.json: too large")
            log.summary = RunSummary.from_json(json.loads(raw))
        except ValueError as e:
            log.skipped.append(str(e))
    for key in sorted(store.list(_events_prefix(storage, run))):
        if not key.endswith(".jsonl"):
            continue
        data = store.get(key)
        if data is None:
            continue
        events, skipped = decode_batch(data)
        log.events.extend(e for e in events if e.run == run)
        log.skipped.extend(f"{key.rsplit('/', 1)[-1]}: {s}" for s in skipped)
    return log


def list_runs(storage: Storage, since: Optional[float] = None, limit: int = 50) -> list[RunSummary]:
    """Recent runs under ``storage`` (newest first), started after ``since`` (epoch seconds)."""
    store = storage.store
    names = [k.rstrip("/").rsplit("/", 1)[-1] for k in store.list(storage.key("runs"))]
    out: list[RunSummary] = []
    for name in names:
        raw = store.get(storage.key("runs", name, "run.json"))
        summary: Optional[RunSummary] = None
        if raw is not None and len(raw) <= MAX_SUMMARY_BYTES:
            try:
                summary = RunSummary.from_json(json.loads(raw))
            except ValueError:
                summary = None
        if summary is None:
            summary = RunSummary(run=name, phase="unknown")
        if since is not None and summary.started and summary.started < since:
            continue
        out.append(summary)
    out.sort(key=lambda s: s.started, reverse=True)
    return out[:limit]
