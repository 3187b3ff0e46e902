"""Recording a run's attempts: an attempt observer that batches them to the run's storage.

:class:`RunRecorder` is a process part and an observer on the controller seam, so every process
that supervises calls — the driver, a supervising actor, a worker whose task makes nested calls,
a warm replica's caller — records the attempts it supervises, and only those (no call is
recorded twice). Which runs: ``init(record="runs")`` (the default) records runs started with
``flyte.run`` / ``with_runcontext(...).run`` (the flag travels in the run's overrides to every
call of the run), ``"all"`` also every plain ``task(x)`` call made outside a task, ``"off"``
none.

Off the call path: ``attempt_finished`` appends a small tuple to a list (measured in
``benchmarks/overhead.py`` with recording on and off). A daemon thread turns the tuples into
:class:`~flyte_ray._core.events.AttemptEvent` (node names and types looked up once per batch)
and writes one batch object per run every :data:`FLUSH_S` seconds, or sooner when
:data:`BATCH` attempts wait. :meth:`RunRecorder.flush` writes at once: the driver calls it when a
run ends, a worker when the attempt that made nested calls ends (before its result travels, so
the parent's children are stored before the parent is seen done; it waits at most
:data:`WORKER_FLUSH_S` for that, so a stalled storage never holds a result back), and ``atexit``. A storage that
fails is retried at the next flush; past :data:`MAX_PENDING` waiting attempts the oldest are
dropped with one warning — recording never fails or blocks a call.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

import ray

from .._core.events import AttemptEvent
from .._core.process import PROCESS
from .._core.records import AttemptRecord, AttemptRequest, Outcome
from .._core.runlog import RunSummary, write_batch, write_summary

if TYPE_CHECKING:
    from .._core.call import Call

__all__ = ["RunRecorder", "recorder", "FLUSH_S", "WORKER_FLUSH_S", "BATCH", "MAX_PENDING", "node_facts_for"]

logger = logging.getLogger("flyte_ray")

FLUSH_S = 2.0
WORKER_FLUSH_S = 5.0  # a worker waits this long, at most, for its nested calls' records to be written
BATCH = 2000
MAX_PENDING = 200_000
NODE_LABEL_TYPE = "flyte-ray.io/node-type"
NODE_LABEL_INSTANCE = "flyte-ray.io/instance-type"
_NODE_RESOURCE = "flyte-ray-node:"  # LocalCluster names its nodes with this resource


def recorded(call: "Call") -> bool:
    mode = call.settings.record
    if mode == "all":
        return True
    if mode == "off":
        return False
    ro = call.run_overrides
    return bool(getattr(ro, "recorded", False))


def node_facts_for(node_ids: Optional[set] = None) -> dict[str, tuple[str, str, str, float, float]]:
    """Node id → (name, node type, instance type, CPUs, GPUs) from the GCS, for ``node_ids``
    (None: every live node). A dead node's resources are gone from the GCS: its facts come only
    from an earlier look (the recorder keeps them)."""
    out: dict[str, tuple[str, str, str, float, float]] = {}
    if node_ids is not None and not node_ids or not ray.is_initialized():
        return out
    try:
        nodes = ray.nodes()
    except Exception:  # noqa: BLE001 - names are a nicety
        return out
    for n in nodes:
        nid = n.get("NodeID")
        if node_ids is not None and nid not in node_ids:
            continue
        res = n.get("Resources") or {}
        if not res:  # dead: nothing worth knowing is left
            continue
        labels = n.get("Labels") or {}
        name = next((k[len(_NODE_RESOURCE) :] for k in res if k.startswith(_NODE_RESOURCE)), "")
        name = name or str(n.get("NodeManagerHostname") or n.get("NodeName") or "")
        out[nid] = (
            name[:128],
            str(labels.get(NODE_LABEL_TYPE, ""))[:128],
            str(labels.get(NODE_LABEL_INSTANCE, ""))[:128],
            float(res.get("CPU", 0.0)),
            float(res.get("GPU", 0.0)),
        )
    return out


def _host() -> str:
    try:
        rc = ray.get_runtime_context()
        if rc.get_actor_id():
            return "actor"
        return "worker" if rc.worker.mode == ray.WORKER_MODE else "driver"
    except Exception:  # noqa: BLE001
        return "driver"


class RunRecorder:
    """Batches this process's finished attempts to their runs' storage (see the module docstring)."""

    reset_order = 85  # after the controller's parts: a reset flushes what is pending first

    def __init__(self) -> None:
        self.pending: list[tuple] = []
        self.summaries: dict[tuple, tuple] = {}  # (storage url, run) -> (storage, RunSummary)
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.seq = 0
        self.dropped = 0
        self.failed_once: set[str] = set()
        self.flush_lock = threading.Lock()
        self._atexit = False
        self.in_flight = 0  # attempts running under this process's supervision
        self.nodes: dict[str, tuple] = {}  # node facts seen while the node was alive (bounded)

    def reset(self) -> None:
        try:
            self.flush()
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------ the controller seam
    def attempt_started(self, call: "Call", req: AttemptRequest, record: AttemptRecord) -> None:
        if recorded(call):
            self.in_flight += 1
            self._kick()

    def attempt_finished(self, call: "Call", req: AttemptRequest, record: AttemptRecord, out: Outcome) -> None:
        if not recorded(call):
            return
        self.in_flight -= 1
        self.pending.append((call.settings.storage, call.run_name, call.call_id, call.spec, record, out.ckpt))
        self._kick()

    def cache_hit(self, call: "Call", at: float) -> None:
        """A call answered from the cache: no attempt ran; recorded as one ``cached`` event."""
        if not recorded(call):
            return
        rec = AttemptRecord(attempt=0, user_attempt=0, system_failures=0, market="", queue="", submitted=at)
        rec.ended, rec.outcome = time.time(), "cached"
        self.pending.append((call.settings.storage, call.run_name, call.call_id, call.spec, rec, None))
        self._kick()

    def run_summary(self, storage: Any, summary: RunSummary) -> None:
        """Keep ``runs/<run>/run.json`` (written at the next flush)."""
        with self.lock:
            self.summaries[(storage.url, summary.run)] = (storage, summary)
        self._kick()

    def _kick(self) -> None:
        if len(self.pending) >= BATCH:
            self.wake.set()
        if self.thread is None or not self.thread.is_alive():
            with self.lock:
                if self.thread is None or not self.thread.is_alive():
                    self.thread = threading.Thread(target=self._run, name="flyte-ray-recorder", daemon=True)
                    self.thread.start()
                    if not self._atexit:
                        self._atexit = True
                        atexit.register(self._at_exit)

    # ------------------------------------------------------------------ writing
    def _run(self) -> None:
        while True:
            self.wake.wait(FLUSH_S)
            self.wake.clear()
            try:
                if self.in_flight > 0:  # learn the live nodes' names while they are alive
                    self._learn(node_facts_for(None))
                self.flush()
            except Exception:  # noqa: BLE001 - never let the thread die
                logger.debug("run recorder flush failed", exc_info=True)

    def _learn(self, facts: dict) -> None:
        if len(self.nodes) > 10_000:
            self.nodes = {}
        self.nodes.update(facts)

    def _at_exit(self) -> None:
        try:
            self.flush()
        except Exception:  # noqa: BLE001
            pass

    def flush(self) -> int:
        """Write what is pending now (blocking); the number of events written."""
        with self.flush_lock:
            items, self.pending = self.pending, []
            with self.lock:
                summaries, self.summaries = self.summaries, {}
            if not items and not summaries:
                return 0
            if len(items) > MAX_PENDING:
                self.dropped += len(items) - MAX_PENDING
                logger.warning("flyte-ray: %d run records dropped (storage too slow)", len(items) - MAX_PENDING)
                items = items[-MAX_PENDING:]
            wanted = {it[4].node_id for it in items if it[4].node_id}
            self._learn(node_facts_for(wanted - set(self.nodes)) if wanted - set(self.nodes) else {})
            nodes = self.nodes
            host = _host()
            by_run: dict[tuple, tuple[Any, list[AttemptEvent]]] = {}
            for storage, run, call_id, spec, rec, ckpt in items:
                ev = _event(run, call_id, spec, rec, ckpt, nodes.get(rec.node_id), host)
                by_run.setdefault((storage.url, run), (storage, []))[1].append(ev)
            written = 0
            retry: list[tuple] = []
            for (url, run), (storage, events) in by_run.items():
                self.seq += 1
                try:
                    write_batch(storage, run, events, self.seq)
                    written += len(events)
                except Exception as e:  # noqa: BLE001 - keep them for the next flush
                    self._failed(url, e)
                    retry.extend(it for it in items if it[1] == run and it[0].url == url)
            for key, (storage, summary) in summaries.items():
                try:
                    write_summary(storage, summary)
                except Exception as e:  # noqa: BLE001
                    self._failed(key[0], e)
                    with self.lock:
                        self.summaries.setdefault(key, (storage, summary))
            if retry:
                self.pending[:0] = retry
            return written

    def flush_within(self, seconds: float) -> bool:
        """Write what is pending, waiting at most ``seconds`` (a stalled storage must not hold
        an attempt's result back): True when it was written in time; else the write goes on in
        the background."""
        t = threading.Thread(target=self._flush_quietly, name="flyte-ray-recorder-flush", daemon=True)
        t.start()
        t.join(seconds)
        return not t.is_alive()

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - recording never fails a call
            logger.debug("run recorder flush failed", exc_info=True)

    def _failed(self, url: str, e: BaseException) -> None:
        if url not in self.failed_once:
            self.failed_once.add(url)
            from ..storage.limits import redact_url

            logger.warning(
                "flyte-ray: cannot write run records to %s (%s); retrying at the next flush",
                redact_url(url),
                type(e).__name__,
            )


def _event(
    run: str,
    call_id: str,
    spec: Any,
    rec: AttemptRecord,
    ckpt: Optional[tuple],
    node: Optional[tuple],
    host: str,
) -> AttemptEvent:
    opts = spec.ray_options or {}
    name, ntype, itype, ncpu, ngpu = node or ("", "", "", 0.0, 0.0)
    saved, restored, resumed_from, last_saved = (ckpt or (0, 0, None, None))[:4]
    return AttemptEvent(
        run=run,
        call_id=call_id,
        fqn=spec.fqn,
        attempt=rec.attempt,
        user_attempt=rec.user_attempt,
        system_failures=rec.system_failures,
        market=str(rec.market),
        queue=rec.queue,
        outcome=rec.outcome,
        failure_kind=rec.failure_kind,
        submitted=rec.submitted,
        started=rec.started,
        ended=rec.ended,
        runtime=rec.runtime,
        node_id=rec.node_id or "",
        node_name=name,
        node_type=ntype,
        instance_type=itype,
        cpus=float(opts.get("num_cpus", 1) or 0),
        gpus=float(opts.get("num_gpus", 0) or 0),
        node_cpus=ncpu,
        node_gpus=ngpu,
        error=(rec.error or "")[:2000],
        ckpt_saved_bytes=int(saved),
        ckpt_restored_bytes=int(restored),
        ckpt_resumed_from=resumed_from,
        ckpt_last_saved=last_saved,
        notice_at=rec.notice_at,
        notice_deadline=rec.notice_deadline,
        host=host,
    )


def recorder() -> RunRecorder:
    return PROCESS.part(RunRecorder)
