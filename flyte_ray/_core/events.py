"""Run records: one :class:`AttemptEvent` per finished attempt of every call in a run, and the
codec that stores them.

Every process that runs attempt loops (the driver, a supervising actor, a worker whose task
makes nested calls, the caller of a warm replica) records its attempts through the controller's
recorder (:mod:`flyte_ray._ray.recording`); batches go to the run's storage as JSON-lines
objects under ``<storage>/runs/<run>/events/`` (append-only: each batch is a new object), and
:func:`decode_batch` reads them back for ``Run.history``, ``flyte-ray show``, the cost report
and the timeline.

Rules:

* **Storage is untrusted input.** :meth:`AttemptEvent.from_json` checks every field's type and
  bounds and rejects the line (it is skipped and counted, never half-read); strings are cut to
  their limits; a batch larger than :data:`MAX_BATCH_BYTES` is not read.
* **Named, versioned format**: the first line of a batch is ``{"format": "flyte-ray-events",
  "v": 1}``; a batch of another version is skipped with a reason.
* Times are epoch seconds; ``started`` is None when the attempt never reported a start (a plain
  Ray task that was lost before its result), ``runtime`` the seconds the user code ran as the
  worker measured it.
* ``lost_work_s`` (seconds of work a preemption threw away: the attempt's runtime after the last
  checkpoint that the retry resumed from) needs the *next* attempt's facts, so it is worked out
  when a call's attempts are read together (:func:`with_lost_work`), never stored.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Optional

from .records import NEVER_RAN

__all__ = [
    "AttemptEvent",
    "EVENTS_FORMAT",
    "EVENTS_VERSION",
    "MAX_BATCH_BYTES",
    "encode_batch",
    "decode_batch",
    "with_lost_work",
    "lost_seconds",
    "parent_of",
]

EVENTS_FORMAT = "flyte-ray-events"
EVENTS_VERSION = 1
MAX_BATCH_BYTES = 64 * 1024 * 1024
_MAX_STR = {"error": 2000, "traceback": 0}
_DEFAULT_MAX_STR = 256


def parent_of(call_id: str) -> str:
    """The parent call's id (``"root/train-0"`` → ``"root"``; ``"root"`` → ``""``)."""
    return call_id.rsplit("/", 1)[0] if "/" in call_id else ""


@dataclass(frozen=True)
class AttemptEvent:
    """One finished attempt (or one cache hit, ``outcome="cached"``) of one call in a run."""

    run: str
    call_id: str
    fqn: str
    attempt: int
    user_attempt: int
    system_failures: int
    market: str  # "spot" | "ondemand" ("" for a cache hit)
    queue: str
    outcome: str  # succeeded | failed | preemption | node_failure | spot_unavailable | cached | ...
    failure_kind: Optional[str]  # "user" | "system" | None
    submitted: float
    started: Optional[float] = None
    ended: Optional[float] = None
    runtime: Optional[float] = None
    node_id: str = ""
    node_name: str = ""  # a readable name: LocalCluster's node name, the node's hostname, ...
    node_type: str = ""  # the cluster config's node type, when the node declares it
    instance_type: str = ""  # the cloud instance type, when the node declares it
    cpus: float = 0.0  # what the attempt reserved
    gpus: float = 0.0
    node_cpus: float = 0.0  # what its node offers (for the attempt's share of the node)
    node_gpus: float = 0.0
    error: str = ""
    ckpt_saved_bytes: int = 0
    ckpt_restored_bytes: int = 0
    ckpt_resumed_from: Optional[float] = None  # when the checkpoint this attempt resumed from was saved
    ckpt_last_saved: Optional[float] = None  # when this attempt last saved one
    notice_at: Optional[float] = None  # a preemption notice for its node: when it was seen
    notice_deadline: Optional[float] = None
    host: str = ""  # where the attempt loop ran: "driver" | "actor" | "worker"

    # ------------------------------------------------------------------ derived
    @property
    def parent(self) -> str:
        return parent_of(self.call_id)

    @property
    def queued(self) -> Optional[float]:
        """Seconds from submission to start (None when the start is unknown)."""
        return None if self.started is None else max(0.0, self.started - self.submitted)

    @property
    def seconds(self) -> Optional[float]:
        """Seconds the attempt held its node: start (or submission) to end."""
        if self.ended is None:
            return None
        return max(0.0, self.ended - (self.started if self.started is not None else self.submitted))

    @property
    def share(self) -> float:
        """The attempt's share of its node: the larger of its CPU and GPU shares (0 when unknown)."""
        parts = []
        if self.node_cpus > 0:
            parts.append(min(1.0, self.cpus / self.node_cpus))
        if self.node_gpus > 0 and self.gpus > 0:
            parts.append(min(1.0, self.gpus / self.node_gpus))
        return max(parts) if parts else 0.0

    # ------------------------------------------------------------------ codec
    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "", 0, 0.0) or k in _REQUIRED}

    @classmethod
    def from_json(cls, d: Any) -> "AttemptEvent":
        """An event from one decoded JSON object; raises ValueError naming the field when it is
        not one (the storage is untrusted)."""
        if not isinstance(d, dict):
            raise ValueError("event: expected a JSON object")
        kw: dict = {}
        for f in fields(cls):
            if f.name not in d:
                if f.name in _REQUIRED:
                    raise ValueError(f"event.{f.name}: missing")
                continue
            kw[f.name] = _check(f.name, _KINDS[f.name], d[f.name])
        return cls(**kw)


_REQUIRED = {
    "run",
    "call_id",
    "fqn",
    "attempt",
    "user_attempt",
    "system_failures",
    "market",
    "queue",
    "outcome",
    "failure_kind",
    "submitted",
}
_KINDS = {
    f.name: (
        "str"
        if f.type in ("str",)
        else "int"
        if f.type == "int"
        else "float"
        if f.type == "float"
        else "optfloat"
        if f.type == "Optional[float]"
        else "optstr"
    )
    for f in fields(AttemptEvent)
}


def _check(name: str, kind: str, v: Any) -> Any:
    if kind in ("optfloat", "optstr") and v is None:
        return None
    if kind in ("str", "optstr"):
        if not isinstance(v, str):
            raise ValueError(f"event.{name}: expected a string")
        return v[: _MAX_STR.get(name, _DEFAULT_MAX_STR)]
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int) or not (0 <= v < 2**53):
            raise ValueError(f"event.{name}: expected a non-negative integer")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1e13:
        raise ValueError(f"event.{name}: expected a finite number")
    return float(v)


def encode_batch(events: Iterable[AttemptEvent]) -> bytes:
    """A batch as stored: a header line, then one JSON object per event."""
    lines = [json.dumps({"format": EVENTS_FORMAT, "v": EVENTS_VERSION})]
    lines.extend(json.dumps(e.to_json(), separators=(",", ":"), allow_nan=False) for e in events)
    return ("\n".join(lines) + "\n").encode("utf-8")


def decode_batch(data: bytes) -> tuple[list[AttemptEvent], list[str]]:
    """The events of one stored batch, and why lines were skipped (none for a clean batch)."""
    if len(data) > MAX_BATCH_BYTES:
        return [], [f"batch of {len(data)} bytes is over the {MAX_BATCH_BYTES} byte limit"]
    lines = data.decode("utf-8", "replace").splitlines()
    if not lines:
        return [], ["empty batch"]
    try:
        head = json.loads(lines[0])
    except ValueError:
        return [], ["no header line"]
    if not isinstance(head, dict) or head.get("format") != EVENTS_FORMAT:
        return [], ["not a flyte-ray events batch"]
    if head.get("v") != EVENTS_VERSION:
        return [], [f"events format version {head.get('v')!r}, this flyte-ray reads {EVENTS_VERSION}"]
    out: list[AttemptEvent] = []
    skipped: list[str] = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            out.append(AttemptEvent.from_json(json.loads(line)))
        except ValueError as e:
            skipped.append(f"line {i}: {e}")
    return out, skipped


def with_lost_work(events: list[AttemptEvent]) -> list[tuple[AttemptEvent, Optional[float]]]:
    """Each event of ONE call (any order) with the seconds of work its failure threw away: for a
    system failure (``preemption``, ``node_failure``), the time it ran after the checkpoint the
    next attempt that ran resumed from (all of it when that attempt resumed from nothing older
    than this attempt's start, or when there is none); 0 for other outcomes. Attempts that never
    started (``spot_unavailable``, ``queued_timeout``, ``infeasible``) are passed over. The run time
    counted is the attempt's ``runtime`` when known, else its seconds on the node."""
    ordered = sorted(events, key=lambda e: e.attempt)
    out: list[tuple[AttemptEvent, Optional[float]]] = []
    for i, e in enumerate(ordered):
        if e.failure_kind != "system" or e.outcome == "cached":
            out.append((e, 0.0))
            continue
        ran = e.runtime if e.runtime is not None else e.seconds
        if ran is None:
            out.append((e, None))
            continue
        # the next attempt that ran (one that never started resumed nothing)
        nxt = next((n for n in ordered[i + 1 :] if n.outcome not in NEVER_RAN), None)
        out.append((e, lost_seconds(ran, e.ended, nxt.ckpt_resumed_from if nxt is not None else None)))
    return out


def lost_seconds(ran: float, ended: Optional[float], resumed_from: Optional[float]) -> float:
    """Seconds of an attempt's ``ran`` seconds (ending at ``ended``) after ``resumed_from``, the
    save time of the checkpoint the next attempt resumed from: all of them without one."""
    if resumed_from is None or ended is None:
        return ran
    begin = ended - ran  # when its user code started, by its own runtime
    return max(0.0, min(ran, ended - max(begin, resumed_from)))
