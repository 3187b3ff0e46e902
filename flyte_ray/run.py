"""Runs: ``run(task, ...)``, ``with_runcontext(...)``, ``map(task, ...)`` and the ``Run`` handle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional

from ._controller.controller import background_loop, get_controller
from ._core.call import Call
from ._core.drive import drive
from ._core.events import AttemptEvent
from ._core.records import AttemptRecord, format_history
from ._core.runlog import RunSummary, load_run
from ._core.spec import RunOverrides
from ._core.validation import SHORT_NAME_RE, check_name, normalize
from ._duration import short_repr
from ._ray.port import BLOCKING
from ._ray.recording import node_facts_for, recorded, recorder
from .checkpoint.syncaio import quick_aio, sync_aio, with_aio
from .context import check_custom
from .progressbar import Progress
from .report.cost import CostReport, cost_report
from .report.tables import RunTree, build_tree
from .report.task_report import read_report
from .report.timeline import timeline_html, timeline_svg
from .runtime import current_prices, dashboard_url
from .task import TaskTemplate

__all__ = ["Run", "RunContext", "run", "with_runcontext", "map"]

logger = logging.getLogger("flyte_ray")
NAME_CHECK_TIMEOUT_S = 30.0  # the one LIST that tells whether a run name was used before


def _submit(call: Call) -> concurrent.futures.Future:
    """Start ``call`` on the loop that hosts runs; its future."""
    return asyncio.run_coroutine_threadsafe(get_controller().submit(call), background_loop())


class _Batch:
    """Many calls started on the loop that hosts runs (``flyte_ray.map``), their outcomes kept in
    input order under one lock.

    One hop to the loop for all of them (one per call cost a sync ``map`` of 10,000 calls about a
    third of its throughput), and no ``concurrent.futures.Future`` per call (each carries a
    condition variable and its lock: ~1 KiB per call in flight, measured at 100,000): the reader
    gets a future only for the one outcome it is waiting for."""

    def __init__(self, calls: List[Call]) -> None:
        self.outcomes: list = [None] * len(calls)  # (ok, value or exception) once settled
        self.lock = threading.Lock()
        self.waiting: Optional[tuple] = None  # (index, future) the reader waits on
        self.tasks: list = []
        self.loop = background_loop()
        self.stopped = False
        self.loop.call_soon_threadsafe(self._start, calls)

    def _start(self, calls: List[Call]) -> None:  # on the loop
        submit = get_controller().submit
        for i, call in enumerate(calls):
            if self.stopped:  # the reader gave up before this call started
                break
            t = self.loop.create_task(submit(call))
            t.add_done_callback(functools.partial(self._settle, i))
            self.tasks.append(t)

    def _settle(self, i: int, t: "asyncio.Task") -> None:  # on the loop
        if t.cancelled():
            out: tuple = (False, concurrent.futures.CancelledError())
        elif t.exception() is not None:
            out = (False, t.exception())
        else:
            out = (True, t.result())
        with self.lock:
            self.outcomes[i] = out
            waiting = self.waiting
        if waiting is not None and waiting[0] == i and not waiting[1].done():
            if out[0]:
                waiting[1].set_result(out[1])
            else:
                waiting[1].set_exception(out[1])

    def result(self, i: int) -> Any:
        """The ``i``-th call's value (or its error raised), waiting for it: inside a worker the
        wait releases the CPU while its attempts run (:func:`_result`)."""
        with self.lock:
            out = self.outcomes[i]
            if out is None:
                fut: concurrent.futures.Future = concurrent.futures.Future()
                self.waiting = (i, fut)
        if out is None:
            return _result(fut)
        if out[0]:
            return out[1]
        raise out[1]

    def cancel(self) -> None:
        self.stopped = True

        def stop() -> None:
            for t in self.tasks:
                t.cancel()

        try:
            self.loop.call_soon_threadsafe(stop)
        except RuntimeError:  # the loop is gone
            pass


def _result(fut: concurrent.futures.Future, timeout: Optional[float] = None) -> Any:
    """Wait for a run's future (inside a worker, releasing the CPU while its attempts run)."""
    return drive(BLOCKING.wait_future(fut, timeout))


class Run:
    """A call started by :func:`run`: its name, progress, attempt history and result.

    Attributes:
        name: the run's name (also the storage prefix of its checkpoints).
        url: the Ray dashboard, when the cluster has one.
    """

    def __init__(self, call: Call, future: concurrent.futures.Future) -> None:
        self._call = call
        self._future = future
        self.name = call.run_name
        self.task_name = call.spec.fqn
        self.url = dashboard_url()
        self._recorded = call.call_id == "root" and recorded(call)
        if self._recorded:
            rec = recorder()
            summary = RunSummary(self.name, self.task_name, started=time.time())
            rec.run_summary(call.settings.storage, summary)

            def ended(f: concurrent.futures.Future) -> None:
                phase = "cancelled" if f.cancelled() else ("failed" if f.exception() is not None else "succeeded")
                err = "" if phase != "failed" else f"{type(f.exception()).__name__}: {f.exception()}"[:2000]
                done = RunSummary(self.name, self.task_name, summary.started, time.time(), phase, err)
                rec.run_summary(call.settings.storage, done)
                rec.wake.set()  # write the run's last records now rather than at the next tick

            future.add_done_callback(ended)

    def __repr__(self) -> str:
        return f"Run(name={self.name!r}, task={self.task_name!r}, phase={self.phase!r})"

    @property
    def phase(self) -> str:
        """``"running"``, ``"succeeded"``, ``"failed"`` or ``"cancelled"``."""
        f = self._future
        if not f.done():
            return "running"
        if f.cancelled():
            return "cancelled"
        return "failed" if f.exception() is not None else "succeeded"

    def done(self) -> bool:
        return self._future.done()

    @sync_aio
    def wait(self, timeout: Optional[float] = None) -> "Run":
        """Block until the run ends (or ``timeout`` seconds pass); never raises the task's error.
        Where someone watches (``init(progress="auto")``), a bar shows the run's calls done,
        failed and retried and its spot share as its records arrive."""
        bar = Progress(None, f"run {self.name}") if self._recorded and not self.done() else None
        end = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                step = 2.0 if bar is not None and bar.bar is not None else None
                left = None if end is None else max(0.0, end - time.monotonic())
                wait_s = left if step is None else (step if left is None else min(step, left))
                try:
                    _result(self._future, wait_s)
                    break
                except concurrent.futures.TimeoutError:
                    if end is not None and time.monotonic() >= end:
                        break
                    if bar is not None:
                        self._progress(bar)
                except Exception:  # noqa: BLE001 - the task's error is for outputs()
                    break
        except KeyboardInterrupt:  # Ctrl-C in the driver cancels the run, then stops
            self.cancel()
            raise
        finally:
            if bar is not None:
                if self.done():
                    self._progress(bar)
                bar.close()
        return self

    def _progress(self, bar: Progress) -> None:
        try:
            tree = build_tree(self.name, self.events(), self.phase)
        except Exception:  # noqa: BLE001 - progress is a nicety
            return
        t = tree.totals()
        finished = [n for n in _walk(tree.roots) if n.attempts and n.attempts[-1][0].outcome in _FINAL]
        if bar.bar is not None:
            bar.bar.n = len(finished)
            bar.note(
                calls=t["calls"],
                failed=t["user_failures"],
                preempted=t["preemptions"],
                spot=f"{100 * t['spot_seconds'] / max(t['spot_seconds'] + t['ondemand_seconds'], 1e-9):.0f}%",
            )

    @sync_aio
    def outputs(self, timeout: Optional[float] = None) -> Any:
        """The task's return value (waits for it); raises the task's error if it failed. Ctrl-C
        while waiting cancels the run, then stops."""
        try:
            return _result(self._future, timeout)
        except KeyboardInterrupt:
            self.cancel()
            raise

    def cancel(self) -> bool:
        """Cancel the run; its running attempt is cancelled on Ray."""
        return self._future.cancel()

    @property
    def history(self) -> List[AttemptRecord]:
        """Every attempt so far: market, queue, node, times, outcome, failure kind."""
        return list(self._call.state.history)

    attempts = history

    @property
    def user_failures(self) -> int:
        return self._call.state.user_failures

    @property
    def system_failures(self) -> int:
        return self._call.state.system_failures

    def history_table(self) -> str:
        """The top-level call's attempts as a text table, nodes by readable name (:meth:`tree`
        shows every call of the run)."""
        return format_history(self.history, _node_names({r.node_id for r in self.history if r.node_id}))

    # ------------------------------------------------------------------ the whole run
    def events(self) -> List[AttemptEvent]:
        """Every recorded attempt of every call in the run (nested calls, map items, calls hosted
        by the supervising actor or run on warm replicas), read from the run's storage after this
        process has written what it holds. Records written by other processes arrive within a
        few seconds of their attempts (a worker writes its nested calls' records before its own
        result travels). Needs ``init(record="runs")`` (the default) and a run started with
        :func:`run`."""
        recorder().flush()
        return load_run(self._call.settings.storage, self.name).events

    def tree(self) -> RunTree:
        """The run's calls as a tree with their attempts and totals; ``print(run.tree())`` in a
        terminal, rich HTML in Jupyter."""
        return build_tree(self.name, self.events(), self.phase)

    def cost(self, prices: Any = None) -> CostReport:
        """What the run's node time cost, what the same work would have cost on on-demand nodes
        only, the savings and the cost of work lost to preemptions (``print(run.cost())``).
        ``prices``: a price table (path, mapping or ``PriceTable``), else ``init(prices=...)``'s;
        without one the report gives node time and says that prices are missing."""
        return cost_report(self.events(), prices if prices is not None else current_prices())

    def report(self, call_id: str = "root", attempt: Optional[int] = None) -> Optional[str]:
        """The HTML page a task made with ``report=True`` stored through ``flyte_ray.report`` for
        ``call_id`` (``"root"``: the run's task; a child's id as in :meth:`tree`), of ``attempt``
        (default: the newest that stored one); None when there is none."""
        return read_report(self._call.settings.storage, self.name, call_id, attempt)

    def timeline(self) -> "TimelinePage":
        """The run's attempts as bars per node, coloured by market, preemptions and notices
        marked: renders inline in Jupyter; ``.save("run.html")`` writes a page for a browser."""
        return TimelinePage(self.name, self.events())

    def print_history(self) -> None:
        print(self.history_table())

    def _repr_html_(self) -> str:  # Jupyter
        import html

        names = _node_names({r.node_id for r in self.history if r.node_id})
        head = "".join(f"<th>{h}</th>" for h in ("#", "market", "node", "queue", "secs", "outcome", "kind", "error"))
        rows = []
        for r in self.history:
            d = r.duration
            cells = (
                r.attempt,
                r.market,
                names.get(r.node_id) or (r.node_id or "-")[:12],
                r.queue,
                f"{d:.2f}" if d is not None else "-",
                r.outcome,
                r.failure_kind or "-",
            )
            err = f"<td style='white-space:pre-wrap;max-width:40em'>{html.escape(r.error)}</td>"
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + err + "</tr>")
        return (
            f"<b>Run {html.escape(self.name)}</b> — {html.escape(self.task_name)} — {self.phase}"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>"
        )


class TimelinePage:
    """A run's timeline (:meth:`Run.timeline`): ``str()`` is the HTML page."""

    def __init__(self, run: str, events: List[AttemptEvent]) -> None:
        self.run, self.events = run, events

    def svg(self) -> str:
        return timeline_svg(self.events, title=f"run {self.run}")

    def __str__(self) -> str:
        return timeline_html(self.events, title=f"run {self.run}")

    def save(self, path: str) -> str:
        with open(path, "w", encoding="utf-8") as f:
            f.write(str(self))
        return path

    def _repr_html_(self) -> str:
        return self.svg()


_FINAL = {"succeeded", "cached"}


def _walk(nodes: list) -> Iterator[Any]:
    for n in nodes:
        yield n
        yield from _walk(n.children)


def _node_names(ids: set) -> Dict[str, str]:
    """Readable names of ``ids``: what the recorder learned while they were alive, then the GCS."""
    known = recorder().nodes
    missing = {i for i in ids if i not in known}
    facts = {**known, **(node_facts_for(missing) if missing else {})}
    return {i: facts[i][0] for i in ids if i in facts and facts[i][0]}


class RunContext:
    """Run-level settings from :func:`with_runcontext`; they apply to every call in the run,
    above task and environment settings (below an explicit ``task.override``)."""

    def __init__(
        self,
        overrides: Dict[str, Any],
        name: Optional[str] = None,
        resume: bool = False,
        custom_context: Optional[Dict[str, str]] = None,
    ) -> None:
        self._overrides = RunOverrides(overrides) if overrides else None
        self._name = name
        self._resume = resume
        self._custom = custom_context

    @quick_aio
    def run(self, task: TaskTemplate, *args: Any, **kwargs: Any) -> Run:
        """Start ``task(*args, **kwargs)`` as a run; returns at once with a :class:`Run`."""
        if not isinstance(task, TaskTemplate):
            raise TypeError(f"run: expected a task (made with @env.task), got {task!r}")
        # A run started here is recorded (init(record="runs")): the flag rides in its overrides.
        overrides = RunOverrides(dict(self._overrides or {}), recorded=True, custom=self._custom)
        call = task._make_call(args, kwargs, overrides, self._name)
        if self._name is not None and not self._resume and call.call_id == "root":
            _refuse_a_used_name(call)
        return Run(call, _submit(call))


def _refuse_a_used_name(call: Call) -> None:
    """A run name that already has checkpoints would silently resume that run's calls."""
    storage = call.settings.storage
    prefix = storage.key("checkpoints", call.run_name)
    try:
        used = bool(storage.store.list(prefix, timeout=NAME_CHECK_TIMEOUT_S))
    except Exception as e:  # noqa: BLE001 - an unreadable store: the run's own first save will say so
        logger.warning(
            "with_runcontext(name=%r): could not check whether the name was used before (%s)",
            call.run_name,
            type(e).__name__,
        )
        return
    if used:
        raise ValueError(
            f"with_runcontext.name: a run named {call.run_name!r} ran before (its checkpoints are under "
            f"{storage.prefix_url('checkpoints', call.run_name)}); its calls would resume from them. Pass "
            f"with_runcontext(name={call.run_name!r}, resume=True) to continue that run, or choose another name."
        )


_MODES = ("remote", "local", "hybrid")
_ACCEPTED_IGNORED = (
    "debug",
    "preserve_original_types",
    "log_level",
    "project",
    "domain",
    "labels",
    "annotations",
    "copy_style",
    "version",
    "raw_data_path",
    "run_base_dir",
    # flyte-sdk settings of its backend, its logs and its UI: no meaning on Ray
    "service_account",
    "copy_bundle_to",
    "interactive_mode",
    "log_format",
    "user_log_level",
    "reset_root_logger",
    "cache_lookup_scope",
    "notifications",
    "tracked",
    "tracked_strict",
    "run_start_time",
)
#: flyte-sdk settings refused with a reason: ignoring them would change what the run does.
_REFUSED = {
    "dry_run": "flyte-ray has no dry run: the run would execute; do not call run() to not run",
    "max_action_concurrency": "not supported on Ray; bound fan-outs with flyte_ray.map(..., concurrency=N)",
}


def with_runcontext(
    mode: Optional[str] = None,
    *,
    name: Optional[str] = None,
    interruptible: Optional[bool] = None,
    queue: Optional[str] = None,
    overwrite_cache: bool = False,
    env_vars: Optional[Dict[str, str]] = None,
    resume: bool = False,
    custom_context: Optional[Dict[str, str]] = None,
    disable_run_cache: bool = False,
    **unsupported: Any,
) -> RunContext:
    """Settings for one run: ``flyte_ray.with_runcontext(interruptible=False).run(task, x)``.

    Args:
        mode: flyte-sdk's ``"remote"`` / ``"local"`` / ``"hybrid"``; accepted for compatibility:
            every run executes on the Ray cluster flyte-ray is connected to.
        name: the run's name (default: generated).
        interruptible: for every call in the run (overrides task and environment).
        queue: for every call in the run.
        overwrite_cache: recompute cached tasks and store the new outputs.
        env_vars: extra environment variables for every call in the run.
        resume: with ``name``: continue the run of that name (its calls resume from their
            checkpoints). Without it, a name whose run left checkpoints is refused
            (``ValueError``), so reusing a name never resumes another run by accident.
        custom_context: string pairs every call of the run sees in ``ctx().custom_context``
            (metadata such as trace ids: not inputs, not part of cache keys); change them for a
            block of calls with ``flyte_ray.custom_context(...)``.
        disable_run_cache: no call of the run reads or writes the cache (it runs every task).
    """
    if mode is not None and not isinstance(mode, str):
        raise TypeError(f"with_runcontext.mode: expected one of {_MODES} or None, got {type(mode).__name__}")
    if mode is not None and mode not in _MODES:
        raise ValueError(f"with_runcontext.mode: expected one of {_MODES} or None, got {short_repr(mode)}")
    # flyte-sdk settings with no meaning on Ray are accepted and ignored, so its examples run.
    for k in unsupported:
        if k in _REFUSED and unsupported[k] not in (None, False):
            raise ValueError(f"with_runcontext.{k}: {_REFUSED[k]}")
    unknown = sorted(k for k in unsupported if k not in _ACCEPTED_IGNORED and k not in _REFUSED)
    if unknown:
        raise TypeError(
            f"with_runcontext: unknown argument(s) {', '.join(unknown)}; accepted: "
            "mode, name, interruptible, queue, overwrite_cache, env_vars, resume, custom_context, disable_run_cache "
            f"(accepted and ignored: {', '.join(_ACCEPTED_IGNORED)})"
        )
    if name is not None:
        # The run's name prefixes its checkpoints and every call's identity: the short-name characters.
        check_name(
            name,
            "with_runcontext.name",
            SHORT_NAME_RE,
            "a run name of ASCII letters, digits, '_', '-' and '.', at most 128 characters",
        )
    if not isinstance(resume, bool):
        raise TypeError(f"with_runcontext.resume: expected True or False, got {type(resume).__name__}")
    if resume and name is None:
        raise ValueError("with_runcontext.resume: needs name= (the run to continue)")
    if not isinstance(overwrite_cache, bool):
        raise TypeError(
            f"with_runcontext.overwrite_cache: expected True or False, got {type(overwrite_cache).__name__}"
        )
    o: Dict[str, Any] = {}
    for k, v in (("interruptible", interruptible), ("queue", queue), ("env_vars", env_vars)):
        v = normalize(k, v, "with_runcontext")
        if v is not None:
            o[k] = v
    if not isinstance(disable_run_cache, bool):
        raise TypeError(
            f"with_runcontext.disable_run_cache: expected True or False, got {type(disable_run_cache).__name__}"
        )
    if overwrite_cache:
        o["_overwrite_cache"] = True
    if disable_run_cache:
        o["cache"] = normalize("cache", "disable", "with_runcontext")  # the run level beats task and env
    custom = check_custom(custom_context, "with_runcontext.custom_context") if custom_context is not None else None
    return RunContext(o, name or None, resume, custom)


def run(task: TaskTemplate, *args: Any, **kwargs: Any) -> Run:
    """Start ``task(*args, **kwargs)`` on Ray and return a :class:`Run` at once.

    ``run(...).outputs()`` waits for and returns the value; ``.history_table()`` shows where each
    attempt ran and how it ended. ``await run.aio(task, ...)`` from async code.
    """
    return with_runcontext().run(task, *args, **kwargs)


with_aio(run)


def map(task: TaskTemplate, *iterables: Iterable[Any], return_exceptions: bool = False) -> Iterator[Any]:
    """Run ``task`` over the zipped ``iterables`` in parallel; yield results in input order.

    With ``return_exceptions=True`` a failed call yields its exception instead of raising.
    """
    if not isinstance(task, TaskTemplate):
        raise TypeError(f"map: expected a task (made with @env.task), got {task!r}")
    calls = [task._make_call(tuple(args), {}) for args in zip(*iterables)]
    batch = _Batch(calls)
    bar = Progress(len(calls), f"map {task.name}")
    try:
        for i, call in enumerate(calls):
            try:
                value = batch.result(i)
            except Exception as e:  # noqa: BLE001
                bar.done(call, False)
                if not return_exceptions:
                    raise
                yield e
                continue
            bar.done(call, True)
            yield value
    finally:
        bar.close()
        batch.cancel()  # the calls still running (a finished one ignores it)
