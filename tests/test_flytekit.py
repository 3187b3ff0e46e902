"""flyte_ray.flytekit: flytekit-style task code (tests/tasks_flytekit.py) on the embedded one-CPU
Ray; definition-time checks without Ray. The run across a real preemption is in
test_checkpoint_resume.py (it needs a multi-node cluster)."""

import datetime
import os

import pytest

import flyte_ray
import flyte_ray.flytekit as flytekit
from flyte_ray.errors import NonRecoverableError
from flyte_ray.flytekit.exceptions.user import FlyteRecoverableException

import tasks_flytekit as tk


# --------------------------------------------------------------------------- no Ray needed
def test_task_settings_map_onto_flyte_ray():
    spec = tk.square.spec
    assert spec.resources.cpu == ("100m", "1") and spec.resources.memory == ("100Mi", "200Mi")
    assert tk.use_checkpoint.retries == 3 and tk.use_checkpoint.interruptible is False
    assert tk.train.interruptible is True
    assert tk.cached.spec.cache.behavior == "auto" and tk.cached.spec.cache.version_override == "1"
    assert tk.checkpointing_example.spec.resources.cpu == 0  # a workflow reserves no CPU
    assert tk.use_checkpoint.name == "tasks-flytekit.use_checkpoint"

    @flytekit.task(timeout=datetime.timedelta(minutes=5), environment={"A": "1"}, container_image="img:1")
    def t(x: int) -> int:
        return x

    assert t.spec.timeout.max_runtime == 300 and t.spec.env_vars == {"A": "1"}


def test_bad_definitions_fail_at_definition_time_naming_the_argument():
    with pytest.raises(TypeError, match="unknown argument.*bogus.*accepted"):
        flytekit.task(bogus=1)
    with pytest.raises(ValueError, match="retries"):
        flytekit.task(retries=-1)
    with pytest.raises(TypeError, match="requests: expected flyte_ray.flytekit.Resources"):
        flytekit.task(requests={"cpu": 1})
    with pytest.raises(ValueError, match="requests/limits.*cpu"):
        flytekit.task(requests=flytekit.Resources(cpu="-1"))
    with pytest.raises(ValueError, match="cache_version.*need cache=True"):
        flytekit.task(cache_version="1")
    with pytest.raises(ValueError, match="workflow-level default is not supported"):
        flytekit.workflow(interruptible=True)
    with pytest.raises(ValueError, match="accelerator: unknown device"):
        flytekit.task(accelerator="nvidia-quantum-9000")
    assert flytekit.task(accelerator="nvidia-tesla-a100")(lambda_free).spec.resources.gpu == "A100:1"


def lambda_free(x: int) -> int:  # a module-level function for the accelerator check above
    return x


def test_the_flytekit_rule_marks_other_exceptions_non_recoverable():
    @flytekit.task
    def boom() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError) as info:
        boom.forward()
    assert isinstance(info.value, NonRecoverableError) and info.value.args == ("k",)

    @flytekit.task
    def again() -> None:
        raise FlyteRecoverableException("retry me")

    with pytest.raises(FlyteRecoverableException) as info2:
        again.forward()
    assert not isinstance(info2.value, NonRecoverableError)


def test_current_context_outside_a_task():
    p = flytekit.current_context()
    assert p.execution_id.name == "local" and p.task_id is None
    with pytest.raises(RuntimeError, match="only available inside a task"):
        p.checkpoint


# --------------------------------------------------------------------------- on Ray
on_ray = pytest.mark.usefixtures("embedded")


@on_ray
def test_checkpointed_loop_with_recoverable_failures_finishes_within_its_retries():
    assert tk.checkpointing_example(n_iterations=10) == 9
    run = flyte_ray.run(tk.checkpointing_example, n_iterations=10)
    assert run.outputs() == 9
    child = [e for e in run.events() if e.fqn == "tasks-flytekit.use_checkpoint"]
    assert [e.outcome for e in child] == ["failed", "failed", "failed", "succeeded"]
    assert all(e.failure_kind == "user" for e in child[:3])


@on_ray
def test_a_non_recoverable_exception_is_not_retried(tmp_path):
    marker = str(tmp_path / "marker")
    with pytest.raises(ValueError, match="bad input") as info:
        tk.not_recoverable(marker=marker)
    assert isinstance(info.value, NonRecoverableError)
    assert open(marker).read().count("attempt") == 1  # retries=3, yet one attempt


@on_ray
def test_workflow_dynamic_and_map_task_run_their_tasks_on_ray():
    assert tk.pipeline(a=1, b=2) == 9
    assert tk.fan(n=4) == [0, 1, 4, 9]
    assert tk.mapped(xs=[1, 2, 3]) == [1, 4, 9]
    run = flyte_ray.run(tk.pipeline, a=2, b=3)
    assert run.outputs() == 25
    calls = {e.call_id for e in run.events()}
    assert {"root", "root/add-0", "root/square-0"} <= calls  # one run, the tasks its children


@on_ray
def test_cache_version_reuses_outputs(tmp_path):
    marker = str(tmp_path / "m")
    assert tk.cached(x=1, marker=marker) == 2 and tk.cached(x=1, marker=marker) == 2
    assert open(marker).read().count("ran") == 1


@on_ray
def test_context_secrets_working_directory_and_deck(monkeypatch):
    with pytest.raises(ValueError, match="_FSEC_GRP_KEY") as info:
        tk.context_facts()
    assert "s3cr3t" not in str(info.value)
    env = {"_FSEC_GRP_KEY": "s3cr3t"}
    out = tk.context_facts.override(env_vars=env)()
    assert out["secret"] == "s3cr3t" and out["task"] == "tasks-flytekit.context_facts"
    assert not os.path.exists(out["wd"])  # removed when the attempt ended
    run = flyte_ray.run(tk.with_deck)
    assert run.outputs() == run.name
    page = run.report()
    assert "hello from a deck" in page and "summary" in page
