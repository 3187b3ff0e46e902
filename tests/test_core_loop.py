"""The pure core without Ray: the attempt loop driven by scripted outcomes and a fake clock.

Every rule of the contract's "Attempts" section, each budget edge, backoff delays, the deadline
across attempts and max_queued_time moves. Nothing here starts Ray; the whole file runs in well
under a second.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Optional

import pytest
from hypothesis import given, settings, strategies as st

from flyte_ray._core.call import Call, ChildSequencer
from flyte_ray._core.classify import NodeFacts, Observation, Seen, classify, needs_node_facts
from flyte_ray._core.drive import SuspendedError, drive
from flyte_ray._core.loop import run_attempts
from flyte_ray._core.records import AttemptRecord, AttemptRequest, Kind, Market, Outcome
from flyte_ray._core.settings import Settings
from flyte_ray._core.spec import CallSpec
from flyte_ray.errors import (NonRecoverableError, OOMError, PlacementError, RetriesExhaustedError,
                              RuntimeUserError, TaskInterruptedError, TaskTimeoutError)
from flyte_ray.retry import Backoff, RetryStrategy
from flyte_ray.timeout import Timeout


class Clock:
    """A fake monotonic clock; ``sleep`` advances it."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def make_call(*, interruptible: bool = True, retries: Any = 0, timeout: Optional[Timeout] = None,
              system_retries: int = 3, threshold: Optional[int] = None, queue: Optional[str] = None) -> Call:
    spec = CallSpec(fqn="env.t", short_name="t", interruptible=interruptible, queue=queue,
                    retries=RetryStrategy(retries) if isinstance(retries, int) else retries, timeout=timeout,
                    resources=None, env_vars=None, secrets=None, cache=None, reusable=None, ray_options={})
    settings = Settings(system_retries=system_retries, interruptible_failure_threshold=threshold)
    return Call(None, spec, "r1", "root", (), {}, settings)


def ok(v: Any = "done") -> Outcome:
    return Outcome(Kind.OK, value=v)


def user(msg: str = "boom", exc: Optional[BaseException] = None) -> Outcome:
    return Outcome(Kind.USER, error=exc or ValueError(msg), traceback="tb")


def system(reason: str = "preemption") -> Outcome:
    return Outcome(Kind.SYSTEM, error=RuntimeError("node lost"), system_reason=reason)


class Script:
    """An executor that returns scripted outcomes and remembers the requests it got."""

    def __init__(self, *outcomes: Outcome, clock: Optional[Clock] = None, takes: float = 0.0) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[AttemptRequest] = []
        self.clock = clock
        self.takes = takes

    async def __call__(self, req: AttemptRequest) -> Outcome:
        self.requests.append(req)
        if self.clock is not None:
            self.clock.t += self.takes
        return self.outcomes.pop(0)

    @property
    def markets(self) -> list[str]:
        return [str(r.market) for r in self.requests]


def run(call: Call, script: Script, clock: Optional[Clock] = None) -> Any:
    clock = clock or script.clock or Clock()
    return drive(run_attempts(call, script, clock.sleep, clock=clock, wall=clock))


# ---------------------------------------------------------------------------------- markets

def test_not_interruptible_runs_every_attempt_on_ondemand():
    call = make_call(interruptible=False, retries=2)
    s = Script(user(), system(), user(), ok())
    assert run(call, s) == "done"
    assert s.markets == ["ondemand"] * 4


def test_retries_zero_never_runs_on_spot():
    s = Script(ok())
    run(make_call(retries=0), s)
    assert s.markets == ["ondemand"]


def test_final_user_attempt_runs_on_ondemand():
    s = Script(user(), user(), ok())
    assert run(make_call(retries=2), s) == "done"
    assert s.markets == ["spot", "spot", "ondemand"]
    assert [r.user_attempt for r in s.requests] == [0, 1, 2]


def test_default_threshold_puts_the_last_allowed_system_attempt_on_ondemand():
    s = Script(system(), system(), system(), ok())
    call = make_call(retries=5, system_retries=3)
    assert run(call, s) == "done"
    assert s.markets == ["spot", "spot", "spot", "ondemand"]
    assert call.state.user_failures == 0 and call.state.system_failures == 3


def test_explicit_failure_threshold():
    s = Script(system(), ok())
    run(make_call(retries=5, threshold=1), s)
    assert s.markets == ["spot", "ondemand"]


def test_unlimited_system_retries_use_threshold_three():
    outcomes = [system()] * 50 + [ok()]
    s = Script(*outcomes)
    call = make_call(retries=1, system_retries=-1)
    assert run(call, s) == "done"
    assert s.markets[:3] == ["spot"] * 3 and set(s.markets[3:]) == {"ondemand"}
    assert call.state.system_failures == 50 and call.state.user_failures == 0


# ---------------------------------------------------------------------------------- budgets

def test_preemptions_never_consume_user_retries():
    s = Script(system(), user(), system(), ok())
    call = make_call(retries=1, system_retries=3)
    assert run(call, s) == "done"
    assert call.state.user_failures == 1 and call.state.system_failures == 2
    assert [r.user_attempt for r in s.requests] == [0, 0, 1, 1]


def test_system_budget_exhausted_names_it_and_keeps_the_cause():
    s = Script(system(), system(), system())
    call = make_call(retries=3, system_retries=2)
    with pytest.raises(RetriesExhaustedError, match="system_retries=2") as ei:
        run(call, s)
    assert ei.value.budget == "system" and len(ei.value.history) == 3
    assert isinstance(ei.value.__cause__, RuntimeError)


def test_system_retries_zero_fails_on_the_first_loss():
    with pytest.raises(RetriesExhaustedError) as ei:
        run(make_call(retries=3, system_retries=0), Script(system()))
    assert ei.value.budget == "system"


def test_user_budget_exhausted_is_also_the_users_error_type():
    s = Script(user("a"), user("b"), user("c"))
    call = make_call(retries=2)
    with pytest.raises(RetriesExhaustedError, match="retries=2 exhausted") as ei:
        run(call, s)
    assert isinstance(ei.value, ValueError)  # except ValueError still catches it
    assert ei.value.budget == "user" and len(ei.value.history) == 3
    assert str(ei.value.__cause__) == "c"


def test_retries_zero_raises_the_users_own_error():
    with pytest.raises(ValueError, match="boom") as ei:
        run(make_call(retries=0), Script(user()))
    assert isinstance(ei.value, RuntimeUserError)


def test_non_recoverable_fails_at_once():
    s = Script(user(exc=NonRecoverableError("bad input")), ok())
    with pytest.raises(NonRecoverableError, match="bad input"):
        run(make_call(retries=5), s)
    assert len(s.requests) == 1


def test_oom_and_timeout_are_user_failures():
    s = Script(Outcome(Kind.OOM, error=OOMError("oom")), Outcome(Kind.TIMEOUT, error=TaskTimeoutError("slow")), ok())
    call = make_call(retries=2)
    assert run(call, s) == "done"
    assert call.state.user_failures == 2
    assert [h.outcome for h in call.state.history] == ["oom", "timeout", "succeeded"]
    assert [h.failure_kind for h in call.state.history] == ["user", "user", None]


def test_cancelled_raises_interrupted():
    with pytest.raises(TaskInterruptedError):
        run(make_call(retries=3), Script(Outcome(Kind.CANCELLED, error=RuntimeError("x"))))


def test_history_records_reasons():
    s = Script(system("preemption"), system("node_failure"), ok())
    call = make_call(retries=1)
    run(call, s)
    assert [(h.outcome, h.failure_kind) for h in call.state.history] == [
        ("preemption", "system"), ("node_failure", "system"), ("succeeded", None)]
    assert [h.market for h in call.state.history] == ["spot", "spot", "spot"]  # 2 < threshold 3


# ---------------------------------------------------------------------------------- time

def test_backoff_delays_count_retries_from_zero():
    clock = Clock()
    s = Script(user(), user(), user(), ok())
    call = make_call(retries=RetryStrategy(3, Backoff(1, 2, cap=5)))
    run(call, s, clock)
    assert clock.slept == [1, 2, 4]


def test_backoff_accepts_timedelta_as_flyte_sdk():
    b = Backoff(base=timedelta(seconds=10), factor=2.0, cap=timedelta(minutes=5))
    assert [b.compute_delay(n) for n in range(6)] == [timedelta(seconds=s) for s in (10, 20, 40, 80, 160, 300)]
    assert Backoff(2).compute_delay(5) == timedelta(seconds=2)
    assert Backoff(1) == Backoff(timedelta(seconds=1))
    assert Backoff(1, 2, cap=10).seconds(10_000) == 10  # no overflow


@pytest.mark.parametrize("kwargs, field", [
    ({"base": float("inf")}, "Backoff.base"), ({"base": -1}, "Backoff.base"), ({"base": "1s"}, "Backoff.base"),
    ({"base": 1, "factor": 0.5}, "Backoff.factor"), ({"base": 1, "factor": float("nan"), "cap": 1}, "Backoff.factor"),
    ({"base": 1, "factor": 2}, "Backoff.cap"), ({"base": 1, "cap": float("inf")}, "Backoff.cap"),
])
def test_backoff_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=field):
        Backoff(**kwargs)


def test_system_failures_back_off_after_the_first_and_ignore_the_user_backoff():
    clock = Clock()
    run(make_call(retries=RetryStrategy(2, Backoff(5)), system_retries=-1), Script(*[system()] * 9, ok()), clock)
    # the first system retry starts at once (a preempted attempt restarts elsewhere); then doubling to the cap
    assert clock.slept == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_deadline_spans_attempts_and_is_handed_down():
    clock = Clock()
    s = Script(user(), user(), user(), ok(), clock=clock, takes=10)
    call = make_call(retries=5, timeout=Timeout(deadline=25))
    with pytest.raises(TaskTimeoutError, match="deadline of 25.0s passed after 3 attempt") as ei:
        run(call, s)
    assert [r.deadline_left for r in s.requests] == [25, 15, 5]
    assert len(ei.value.history) == 3


def test_a_backoff_that_would_cross_the_deadline_fails_before_sleeping():
    clock = Clock()
    s = Script(user(), ok(), clock=clock, takes=1)
    call = make_call(retries=RetryStrategy(3, Backoff(30)), timeout=Timeout(deadline=20))
    with pytest.raises(TaskTimeoutError):
        run(call, s)
    assert clock.slept == [] and len(s.requests) == 1


def test_limits_go_to_every_attempt():
    s = Script(user(), ok())
    run(make_call(retries=1, timeout=Timeout(max_runtime=7, max_queued_time=3)), s)
    assert [(r.max_runtime, r.max_queued_time, r.deadline_left) for r in s.requests] == [(7, 3, None)] * 2


def test_spot_queued_timeout_moves_to_ondemand_without_using_a_budget():
    s = Script(Outcome(Kind.QUEUED_TIMEOUT, missing=("spot",)), user(), ok())
    call = make_call(retries=3, timeout=Timeout(max_queued_time=5))
    assert run(call, s) == "done"
    assert s.markets == ["spot", "ondemand", "ondemand"]  # it stays on on-demand
    assert [r.user_attempt for r in s.requests] == [0, 0, 1]
    assert call.state.history[0].outcome == "queued_timeout" and call.state.history[0].failure_kind is None


def test_ondemand_queued_timeout_fails_naming_what_is_missing():
    s = Script(Outcome(Kind.QUEUED_TIMEOUT, missing=("GPU", "queue:big")))
    with pytest.raises(PlacementError, match="GPU, queue:big") as ei:
        run(make_call(interruptible=False, timeout=Timeout(max_queued_time=5)), s)
    assert ei.value.missing == ["GPU", "queue:big"]


def test_queue_goes_to_requests():
    s = Script(ok())
    run(make_call(queue="gpu-pool"), s)
    assert s.requests[0].queue == "gpu-pool"
    s = Script(ok())
    run(make_call(), s)
    assert s.requests[0].queue == "default"


# ---------------------------------------------------------------------------------- properties

_kinds = st.sampled_from(["ok", "user", "system", "oom", "queued"])


@settings(max_examples=150, deadline=None)
@given(script=st.lists(_kinds, min_size=1, max_size=30), retries=st.integers(0, 4),
       system_retries=st.integers(-1, 4), interruptible=st.booleans())
def test_rules_hold_for_any_sequence_of_outcomes(script, retries, system_retries, interruptible):
    outcomes = {"ok": ok, "user": user, "system": system,
                "oom": lambda: Outcome(Kind.OOM, error=OOMError("oom")),
                "queued": lambda: Outcome(Kind.QUEUED_TIMEOUT, missing=("x",))}
    s = Script(*[outcomes[k]() for k in script] + [ok()] * 200)
    call = make_call(interruptible=interruptible, retries=retries, system_retries=system_retries,
                     timeout=Timeout(max_queued_time=1))
    try:
        run(call, s)
        failed = None
    except BaseException as e:  # noqa: BLE001
        failed = e
    state = call.state
    for req in s.requests:
        if not interruptible or req.user_attempt >= retries:
            assert req.market == Market.ONDEMAND
    # the user budget only ever counts user-kind failures, and never beyond retries + 1
    user_kinds = sum(1 for h in state.history if h.failure_kind == "user")
    assert state.user_failures == user_kinds <= retries + 1
    assert state.system_failures == sum(1 for h in state.history if h.failure_kind == "system")
    if isinstance(failed, RetriesExhaustedError):
        assert failed.budget in ("user", "system")
        if failed.budget == "system":
            assert 0 <= system_retries < state.system_failures
        else:
            assert state.user_failures == retries + 1
    if isinstance(failed, PlacementError):
        assert state.history[-1].market == "ondemand"


# ---------------------------------------------------------------------------------- classify

def _obs(seen: Seen, **kw: Any) -> Observation:
    kw.setdefault("market", Market.ONDEMAND)
    return Observation(seen, kw.pop("error", RuntimeError("x")), **kw)


def test_classify_oom_cancel_user_import():
    assert classify(_obs(Seen.OOM_KILLED, message="Task was killed due to OOM\nmore")).kind is Kind.OOM
    out = classify(_obs(Seen.OOM_KILLED, message="Task was killed due to OOM\nmore"))
    assert isinstance(out.error, OOMError) and str(out.error) == "Task was killed due to OOM"
    assert classify(_obs(Seen.CANCELLED)).kind is Kind.CANCELLED
    user_err = KeyError("k")
    out = classify(_obs(Seen.USER_RAISED, error=user_err, traceback="tb"))
    assert out.kind is Kind.USER and out.error is user_err and out.traceback == "tb"
    out = classify(_obs(Seen.IMPORT_FAILED, message="No module named 'mytasks'"))
    assert out.kind is Kind.USER and isinstance(out.error, NonRecoverableError)
    assert "importable on every node" in str(out.error) and "mytasks" in str(out.error)


@pytest.mark.parametrize("obs, node, reason", [
    (_obs(Seen.ACTOR_DIED, preempted=True, node_id="n1"), None, "preemption"),
    (_obs(Seen.LOST, market=Market.SPOT, cluster_has_markets=True, node_id="n1"), None, "preemption"),
    (_obs(Seen.LOST, market=Market.SPOT, cluster_has_markets=False), None, "node_failure"),
    (_obs(Seen.LOST, node_id=""), None, "node_failure"),
    (_obs(Seen.LOST, node_id="n1"), NodeFacts(found=True, spot=True), "preemption"),
    (_obs(Seen.LOST, node_id="n1"), NodeFacts(found=True, alive=False, death_reason=3), "preemption"),
    (_obs(Seen.LOST, node_id="n1"), NodeFacts(found=True, alive=False, death_reason=2), "node_failure"),
    (_obs(Seen.LOST, node_id="n1"), NodeFacts(found=True, alive=True), "node_failure"),
    (_obs(Seen.LOST, node_id="n1"), NodeFacts(found=False), "node_failure"),
    # a notice seen by the supervisor (the node was drained) makes a lost on-demand node a
    # preemption, also when Ray recorded an unexpected termination (death before the deadline)
    (_obs(Seen.LOST, node_id="n1"), NodeFacts(found=True, alive=False, death_reason=2, drained=True), "preemption"),
    (_obs(Seen.LOST, node_id="n1"), NodeFacts(found=False, drained=True), "preemption"),
    (_obs(Seen.ACTOR_DIED, node_id="n1"), NodeFacts(found=True, alive=True, drained=True), "preemption"),
])
def test_classify_system_reasons(obs, node, reason):
    out = classify(obs, node)
    assert out.kind is Kind.SYSTEM and out.system_reason == reason


def test_node_facts_are_needed_only_when_the_observation_does_not_decide():
    assert not needs_node_facts(_obs(Seen.OOM_KILLED, node_id="n"))
    assert not needs_node_facts(_obs(Seen.ACTOR_DIED, preempted=True, node_id="n"))
    assert not needs_node_facts(_obs(Seen.LOST, market=Market.SPOT, cluster_has_markets=True, node_id="n"))
    assert not needs_node_facts(_obs(Seen.LOST, node_id=""))
    assert needs_node_facts(_obs(Seen.LOST, node_id="n"))


# ---------------------------------------------------------------------------------- identities, drive

def test_child_ids_are_per_task_so_interleaving_does_not_shift_them():
    a, b = ChildSequencer(), ChildSequencer()
    ids_a = [a.next_id("root", n) for n in ("x", "y", "x", "y", "x")]
    ids_b = [b.next_id("root", n) for n in ("y", "x", "x", "y", "x")]
    assert sorted(ids_a) == sorted(ids_b)
    assert [i for i in ids_a if "/x-" in i] == ["root/x-0", "root/x-1", "root/x-2"]


def test_drive_refuses_a_coroutine_that_suspends():
    async def waits():
        await asyncio.sleep(0)

    with pytest.raises(SuspendedError, match="blocking port"):
        drive(waits())

    async def done():
        return 3

    assert drive(done()) == 3


def test_a_crashed_worker_is_a_user_failure_unless_its_node_died():
    err = RuntimeError("The worker died unexpectedly while executing this task.")
    out = classify(_obs(Seen.WORKER_DIED, error=err))
    assert out.kind is Kind.CRASH and "worker process died" in str(out.error)
    # a worker that dies on a node being drained for preemption went with its node: not a crash
    drained = classify(_obs(Seen.WORKER_DIED, error=err, node_id="n1"), NodeFacts(found=True, alive=True, drained=True))
    assert drained.kind is Kind.SYSTEM and drained.system_reason == "preemption"
    assert isinstance(out.error, RuntimeUserError)
    alive = classify(_obs(Seen.WORKER_DIED, error=err, node_id="n1"), NodeFacts(found=True, alive=True))
    assert alive.kind is Kind.CRASH
    dead = classify(_obs(Seen.WORKER_DIED, error=err, node_id="n1"), NodeFacts(found=True, alive=False, death_reason=3))
    assert dead.kind is Kind.SYSTEM and dead.system_reason == "preemption"
    assert needs_node_facts(_obs(Seen.WORKER_DIED, node_id="n1")) and not needs_node_facts(_obs(Seen.WORKER_DIED))


def test_crashes_use_the_user_budget_and_are_recorded_as_worker_crash():
    crash = Outcome(Kind.CRASH, error=RuntimeUserError("WorkerCrash", "died"))
    call = make_call(retries=1, system_retries=-1)
    with pytest.raises(RetriesExhaustedError) as ei:
        run(call, Script(crash, crash, ok()))
    assert ei.value.budget == "user" and ei.value.kind == "user"
    assert [(h.outcome, h.failure_kind) for h in call.state.history] == [("worker_crash", "user")] * 2
    assert call.state.system_failures == 0


def test_system_exhaustion_says_the_budget_and_is_of_the_system_kind():
    class Lost(Exception):
        def __str__(self):
            return "The worker died unexpectedly"

    s = Script(Outcome(Kind.SYSTEM, error=Lost(), system_reason="node_failure"))
    with pytest.raises(RetriesExhaustedError, match="exceed system_retries=0") as ei:
        run(make_call(retries=3, system_retries=0), s)
    assert ei.value.kind == "system" and isinstance(ei.value.__cause__, Lost)


def test_spot_unavailable_moves_to_ondemand_without_a_budget_and_says_so():
    gone = Outcome(Kind.SPOT_UNAVAILABLE, missing=("spot",), error=RuntimeError("no spot capacity after 300s"))
    s = Script(system(), gone, ok())
    call = make_call(retries=2)
    assert run(call, s) == "done"
    assert s.markets == ["spot", "spot", "ondemand"]
    assert [(h.outcome, h.failure_kind) for h in call.state.history] == [
        ("preemption", "system"), ("spot_unavailable", None), ("succeeded", None)]
    assert "no spot capacity after 300s" in call.state.history[1].error
    assert call.state.user_failures == 0 and call.state.system_failures == 1


def test_spot_wait_goes_to_spot_attempts_only():
    s = Script(user(), ok())
    call = make_call(retries=1)
    run(call, s)
    assert [(str(r.market), r.spot_wait) for r in s.requests] == [("spot", 300.0), ("ondemand", None)]
    call = make_call(retries=1)
    call.settings = Settings(spot_wait=None)
    s = Script(ok())
    run(call, s)
    assert s.requests[0].spot_wait is None  # waiting for ever is an explicit choice


def test_an_infeasible_ondemand_attempt_fails_at_once_naming_what_is_missing():
    s = Script(Outcome(Kind.INFEASIBLE, missing=("accelerator_type:H100",)))
    with pytest.raises(PlacementError, match="no node, live or launchable, offers: accelerator_type:H100") as ei:
        run(make_call(interruptible=False), s)
    assert ei.value.missing == ["accelerator_type:H100"] and len(s.requests) == 1


# ---------------------------------------------------------------------------------- preemption notice

def test_preemption_notice_is_set_once_and_wakes_waiters():
    import threading

    from flyte_ray._core.notice import NEVER, PreemptionNotice

    n = PreemptionNotice()
    assert not n.is_set() and not n and n.deadline is None and n.as_wire() is None
    assert n.wait(0.01) is False and "not set" in repr(n)
    calls = []
    n.on_notice(lambda: calls.append(1))
    n.on_notice(lambda: 1 / 0)  # a failing callback does not stop the others
    n.on_notice(lambda: calls.append(2))
    woke = []
    t = threading.Thread(target=lambda: woke.append(n.wait(10)))
    t.start()
    assert n.set(1000.0, at=990.0) is True
    t.join(5)
    assert woke == [True] and calls == [1, 2] and n.is_set() and n.deadline == 1000.0
    assert n.as_wire() == (990.0, 1000.0)
    assert n.set(2000.0) is False and n.deadline == 1000.0  # the first notice stands
    n.on_notice(lambda: calls.append(3))  # registered after the notice: runs at once
    assert calls == [1, 2, 3]
    assert NEVER.set(1.0) is False and not NEVER.is_set()
    NEVER.on_notice(lambda: calls.append(4))
    assert calls == [1, 2, 3]


def test_a_notice_is_recorded_on_the_attempt():
    rec = AttemptRecord(attempt=0, user_attempt=0, system_failures=0, market="spot", queue="default")
    rec.finish(Outcome(Kind.SYSTEM, system_reason="preemption", notice=(10.0, 40.0)), 50.0)
    assert rec.outcome == "preemption" and rec.notice_at == 10.0 and rec.notice_deadline == 40.0


def test_a_cancelled_attempt_still_ends_for_the_history_and_the_observers():
    """Run.cancel() cancels the loop inside an attempt: the attempt is recorded as cancelled and
    every observer hears that it finished (the records, metrics and drain poller count on it)."""
    heard: list = []

    class Observer:
        def attempt_started(self, call, req, record):
            heard.append(("started", record.attempt))

        def attempt_finished(self, call, req, record, out):
            heard.append(("finished", record.attempt, out.kind))

    async def hangs(req: AttemptRequest) -> Outcome:
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    async def go(call: Call) -> None:
        task = asyncio.ensure_future(run_attempts(call, hangs, asyncio.sleep, observer=Observer()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    call = make_call()
    asyncio.run(go(call))
    assert heard == [("started", 0), ("finished", 0, Kind.CANCELLED)]
    assert call.state.history[0].outcome == "cancelled" and call.state.history[0].ended is not None
