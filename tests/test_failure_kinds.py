"""Failure kinds on a real embedded Ray: a worker that crashes or exits, Ray errors and interrupts
raised by the task's own code are *user* failures on the user budget, never system retries."""

import pytest
import ray

import flyte_ray as flyte
from flyte_ray.errors import RetriesExhaustedError, RuntimeUserError, TaskInterruptedError

import tasks_failures as tf

pytestmark = [pytest.mark.usefixtures("embedded"), pytest.mark.timeout(180)]


def _runs(path) -> int:
    with open(path) as f:
        return len(f.read())


@pytest.mark.parametrize("task, outcome", [
    (tf.segfault, "worker_crash"),
    (tf.hard_exit, "worker_crash"),
    (tf.calls_sys_exit, "failed"),
    (tf.raises_ray_timeout, "failed"),
    (tf.raises_keyboard_interrupt, "failed"),
])
def test_crashes_exits_and_user_raised_ray_errors_use_the_user_budget(task, outcome, tmp_path):
    path = str(tmp_path / "runs")
    run = flyte.run(task, path)
    with pytest.raises(RetriesExhaustedError) as ei:
        run.outputs(timeout=120)
    err = ei.value
    assert err.budget == "user" and err.kind == "user" and "retries=1 exhausted" in str(err)
    assert [(h.outcome, h.failure_kind) for h in run.history] == [(outcome, "user")] * 2
    assert run.system_failures == 0 and run.user_failures == 2
    assert _runs(path) == 2  # retried once, then given up: no crash loop on the system budget
    assert isinstance(err.__cause__, RuntimeUserError)


def test_a_ray_error_raised_by_user_code_keeps_its_type(tmp_path):
    with pytest.raises(ray.exceptions.GetTimeoutError, match="my own ray.get timed out") as ei:
        tf.raises_ray_timeout.override(retries=0)(str(tmp_path / "runs"))
    assert isinstance(ei.value, RuntimeUserError)  # and not a builtin TimeoutError only


def test_a_keyboard_interrupt_raised_by_the_task_is_not_a_cancellation(tmp_path):
    with pytest.raises(RuntimeUserError, match="KeyboardInterrupt") as ei:
        tf.raises_keyboard_interrupt.override(retries=0)(str(tmp_path / "runs"))
    assert not isinstance(ei.value, TaskInterruptedError)


def test_task_interrupted_without_a_notice_is_the_users_failure(tmp_path):
    """Stopping on purpose is a system retry only after a preemption notice on the task's node
    (tests/test_notices.py); without one it goes on the user budget like any exception."""
    path = str(tmp_path / "runs")
    run = flyte.run(tf.stops_without_a_notice, path)
    with pytest.raises(RetriesExhaustedError):
        run.outputs(timeout=120)
    assert [(h.outcome, h.failure_kind) for h in run.history] == [("failed", "user"), ("failed", "user")]
    assert run.system_failures == 0 and _runs(path) == 2


def test_sys_exit_in_a_task_does_not_exit_the_caller(tmp_path):
    with pytest.raises(RuntimeUserError, match=r"sys.exit\(2\)") as ei:
        tf.calls_sys_exit.override(retries=0)(str(tmp_path / "runs"))
    assert not isinstance(ei.value, SystemExit)


def test_a_crash_is_retried_like_any_user_failure(tmp_path):
    path = str(tmp_path / "runs")
    run = flyte.run(tf.crash_then_ok.override(retries=1), path)
    assert run.outputs(timeout=120) == "recovered"
    assert [(h.outcome, h.failure_kind) for h in run.history] == [("worker_crash", "user"), ("succeeded", None)]
    assert "worker process died" in run.history[0].error


def test_nested_calls_of_an_interruptible_task_without_markets_are_supervised_in_the_caller():
    # The embedded cluster declares no markets: no supervising actor exists, so the parent (which
    # the loop placed "on spot") must supervise its children itself instead of waiting for one.
    run = flyte.run(tf.interruptible_parent, 1)
    assert run.outputs(timeout=60) == 5
    assert [h.outcome for h in run.history] == ["succeeded"]
