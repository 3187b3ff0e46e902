"""Core task model on a real embedded Ray with ONE CPU (so any deadlock would show)."""

import asyncio
import inspect
import json
import os
import pickle

import pytest
import ray

import flyte_ray as flyte
from flyte_ray import GPU, TPU, Cache, ReusePolicy, Resources, RetryStrategy, Backoff, Timeout
from flyte_ray.errors import NonRecoverableError, RetriesExhaustedError, RuntimeUserError

import tasks_core as tc

pytestmark = pytest.mark.usefixtures("embedded")


def test_sync_task_returns_value_and_forward_runs_in_process():
    assert tc.square(7) == 49
    assert tc.square.forward(3) == 9
    assert tc.square.name == "core.square"


def test_async_task_returns_awaitable_and_aio_always_awaitable():
    coro = tc.asquare(4)
    assert inspect.isawaitable(coro)
    assert asyncio.run(coro) == 16
    assert asyncio.run(tc.square.aio(5)) == 25


def test_nested_sync_and_async_on_one_cpu():
    assert tc.sync_parent(6) == sum(i * i for i in range(6))
    assert asyncio.run(tc.async_parent.aio(10)) == [i * i for i in range(10)]
    assert asyncio.run(tc.async_grandparent.aio(4)) == 3 * sum(i * i for i in range(4))
    assert asyncio.run(tc.async_calls_sync.aio(4)) == sum(i * i for i in range(4))


@pytest.mark.timeout(60)  # before the fix: a deadlock (reproduced: it timed out)
def test_a_sync_map_inside_an_async_task_does_not_deadlock():
    """#18: the map's calls were scheduled on the worker loop that the sync map itself blocked."""
    assert asyncio.run(tc.sync_map_inside_async.aio(4)) == [0, 2, 4, 6]


def test_gather_fan_out_of_200():
    assert asyncio.run(tc.async_parent.aio(200)) == [i * i for i in range(200)]

    async def driver():
        return await asyncio.gather(*(tc.square.aio(i) for i in range(200)))

    assert asyncio.run(driver()) == [i * i for i in range(200)]


def test_context_inside_task():
    info = tc.whoami()
    assert info["fqn"] == "core.whoami" and info["call_id"] == "root" and info["attempt"] == 0
    assert info["run"].startswith("r") and info["node"]
    assert flyte.ctx() is None  # outside a task


def test_resources_reach_ray():
    res = tc.assigned()["resources"]
    assert res["CPU"] == 0.5
    assert res["memory"] == 100 * 1024 * 1024
    custom = tc.square.override(resources=Resources(cpu=0.25))
    assert custom.spec.ray_options["num_cpus"] == 0.25
    assert tc.whoami.override(resources=Resources(cpu=0.25))()["resources"]["CPU"] == 0.25


def test_env_vars_env_then_override():
    assert tc.assigned()["env"] == {"FR_LEVEL": "env"}
    assert tc.assigned.override(env_vars={"FR_LEVEL": "call"})()["env"] == {"FR_LEVEL": "call"}


def test_user_exception_is_own_type_and_runtime_user_error_with_user_frame():
    with pytest.raises(tc.DataError) as info:
        tc.fails(3)
    e = info.value
    assert isinstance(e, RuntimeUserError) and isinstance(e, ValueError)
    assert e.detail == {"x": 3} and "bad input 3" in str(e)
    assert "in fails" in str(e.__cause__)  # the worker's traceback shows the user's frame
    with pytest.raises(RuntimeUserError):
        tc.fails(4)


def test_user_retries_and_exhaustion(tmp_path):
    assert tc.fails_then_succeeds(str(tmp_path / "n")) == 2
    run = flyte.run(tc.always_fails)
    with pytest.raises(RetriesExhaustedError) as info:
        run.outputs()
    assert isinstance(info.value, KeyError)  # still the user's own type
    assert len(info.value.history) == 3 and [r.outcome for r in run.history] == ["failed"] * 3


def test_non_recoverable_fails_at_once(tmp_path):
    p = tmp_path / "count"
    with pytest.raises(NonRecoverableError):
        tc.never_recovers(str(p))
    assert p.read_text() == "x"


def test_precedence_env_task_invocation():
    # env interruptible=True, task retries=2: attempts 1..2 may run on spot
    assert tc.market_probe()["market"] == "spot"
    # task-level interruptible=False beats the env
    assert tc.market_probe_task_false()["market"] == "ondemand"
    # invocation beats task: retries=0 means the only attempt is the final one -> on-demand
    assert tc.market_probe.override(retries=0)()["market"] == "ondemand"
    assert tc.market_probe.override(interruptible=False)()["market"] == "ondemand"
    assert tc.market_probe_task_false.override(interruptible=True)()["market"] == "spot"
    # None inherits
    assert tc.market_probe.override(interruptible=None)()["market"] == "spot"
    # run context is invocation level too, and reaches nested calls
    r = flyte.with_runcontext(interruptible=False).run(tc.market_probe)
    assert r.outputs()["market"] == "ondemand"


def test_override_returns_new_task_and_keeps_original():
    t2 = tc.square.override(retries=3, queue="fast", short_name="sq")
    assert t2.retries == 3 and t2.queue == "fast" and t2.short_name == "sq" and t2.name == "core.square"
    assert tc.square.retries == 0 and tc.square.queue is None


def test_run_map_and_runcontext():
    r = flyte.run(tc.square, 6)
    assert r.outputs() == 36 and r.phase == "succeeded" and r.name.startswith("r")
    assert len(r.history) == 1 and r.history[0].outcome == "succeeded"
    assert "succeeded" in r.history_table()
    named = flyte.with_runcontext(name="my-run").run(tc.whoami)
    assert named.outputs()["run"] == "my-run" and named.name == "my-run"
    assert list(flyte.map(tc.square, range(20))) == [i * i for i in range(20)]


def test_clone_with():
    e2 = tc.env.clone_with("core-2", interruptible=True)
    assert e2.name == "core-2" and e2.interruptible and e2.resources == tc.env.resources
    with pytest.raises(TypeError, match="unknown field"):
        tc.env.clone_with("x", colour="red")


def test_init_twice_keeps_connection_and_rejects_other_address(caplog):
    flyte.init(system_retries=5)
    assert flyte.current_settings().system_retries == 5
    with pytest.raises(RuntimeError, match="shutdown"):
        flyte.init(address="127.0.0.1:1")
    flyte.init(system_retries=3)
    assert tc.square(2) == 4


def test_init_from_config(tmp_path):
    cfg = tmp_path / "flyte-ray.yaml"
    cfg.write_text("system_retries: 7\ncheckpoint_keep: 3\ninline_under: 0.5\n")
    s = flyte.init_from_config(cfg)
    assert s.system_retries == 7 and s.checkpoint_keep == 3 and s.inline_under == 0.5
    with pytest.raises(ValueError, match="inline_under.*>= 0"):
        flyte.init(inline_under=-1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("system_retries: many\n")
    with pytest.raises(ValueError, match="system_retries"):
        flyte.init_from_config(bad)
    bad.write_text(json.dumps({"colour": 1}))
    with pytest.raises(ValueError, match="colour"):
        flyte.init_from_config(bad)
    flyte.init(system_retries=3)


def test_init_from_config_takes_flyte_sdks_arguments_and_has_aio(tmp_path):
    """#18: flyte-sdk's examples call init_from_config(path, log_level=..., root_dir=...)."""
    import logging
    import sys

    cfg = tmp_path / "config.yaml"
    cfg.write_text("system_retries: 5\n")
    s = flyte.init_from_config(str(cfg), log_level=logging.DEBUG, root_dir=tmp_path, images=("x",),
                               sync_local_sys_paths=True)
    assert s.system_retries == 5 and str(tmp_path) in sys.path
    s = asyncio.run(flyte.init_from_config.aio(cfg, log_level=logging.WARNING))
    assert s.system_retries == 5
    with pytest.raises(TypeError, match="Config object"):
        flyte.init_from_config(object())
    with pytest.raises(ValueError, match="root_dir"):
        flyte.init_from_config(cfg, root_dir=tmp_path / "missing")
    sys.path.remove(str(tmp_path))
    flyte.init(system_retries=3)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("make, exc, words", [
    (lambda: Resources(gpu="Z100:1"), ValueError, ["Resources.gpu", "Z100", "A100"]),
    (lambda: GPU("Z100"), ValueError, ["GPU.device", "accepted"]),
    (lambda: Resources(cpu=-1), ValueError, ["Resources.cpu", ">= 0"]),
    (lambda: Resources(cpu="lots"), ValueError, ["Resources.cpu", "500m"]),
    (lambda: Resources(memory="4 gigs"), ValueError, ["Resources.memory", "4Gi"]),
    (lambda: Resources(memory=("1Gi", "2Gi", "3Gi")), ValueError, ["Resources.memory", "2 items"]),
    (lambda: GPU("A100", 1, partition="3g.40gb"), ValueError, ["GPU.partition", "1g.5gb"]),
    (lambda: GPU("T4", 1, partition="1g.5gb"), ValueError, ["GPU.partition", "no MIG"]),
    (lambda: TPU("V5P", "9x9"), ValueError, ["TPU.partition", "2x2x1"]),
    (lambda: flyte.TaskEnvironment(name="my env"), ValueError, ["TaskEnvironment.name", "snake_case"]),
    (lambda: flyte.TaskEnvironment(name="MyEnv"), ValueError, ["TaskEnvironment.name", "kebab-case"]),
    (lambda: tc.env.task(42), TypeError, ["expected a function", "int"]),
    (lambda: tc.env.task("square"), TypeError, ["expected a function"]),
    (lambda: tc.square.override(name="other"), ValueError, ["'name' cannot be overridden"]),
    (lambda: tc.square.override(image="python:3.12"), ValueError, ["'image' cannot be overridden"]),
    (lambda: tc.square.override(colour=1), TypeError, ["unknown setting", "interruptible"]),
    (lambda: tc.square.override(retries=-1), ValueError, ["retries", ">= 0"]),
    (lambda: tc.square.override(queue="has space"), ValueError, ["queue", "queue:<name>"]),
    (lambda: tc.square.override(interruptible="yes"), TypeError, ["interruptible", "True, False"]),
    (lambda: tc.square.override(resources={"cpu": 1}), TypeError, ["resources", "Resources("]),
    (lambda: tc.square.override(timeout="soon"), TypeError, ["timeout", "Timeout("]),
    (lambda: Backoff(base=1, factor=2), ValueError, ["Backoff.cap", "required"]),
    (lambda: Cache(behavior="sometimes"), ValueError, ["Cache.behavior", "auto"]),
    (lambda: ReusePolicy(replicas=0), ValueError, ["ReusePolicy.replicas"]),
    (lambda: Timeout(max_runtime=-5), ValueError, ["Timeout.max_runtime", ">= 0"]),
    (lambda: tc.square("not", "enough", "args"), TypeError, ["core.square", "positional"]),
    (lambda: flyte.init(system_retries=-3), ValueError, ["system_retries", "-1 for unlimited"]),
    (lambda: flyte.with_runcontext(colour=1), TypeError, ["with_runcontext", "interruptible"]),
])
def test_bad_input_is_rejected_clearly(make, exc, words):
    with pytest.raises(exc) as info:
        make()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_reusable_env_guards():
    renv = flyte.TaskEnvironment(name="warm", reusable=ReusePolicy(replicas=2, concurrency=4))
    with pytest.raises(ValueError, match="concurrency=4 needs an async task"):
        @renv.task
        def sync_fn(x: int) -> int:
            return x

    @renv.task
    async def afn(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="reusable='off'"):
        afn.override(resources=Resources(cpu=2))
    with pytest.raises(ValueError, match="reusable='off'"):
        afn.override(env_vars={"A": "1"})
    t = afn.override(resources=Resources(cpu=2), reusable="off")
    assert t.spec.reusable is None and t.spec.ray_options["num_cpus"] == 2


def test_resources_mapping():
    assert Resources(cpu="500m", memory="4Gi").ray_options() == {"num_cpus": 0.5, "memory": 4 * 1024 ** 3}
    assert Resources(cpu=(1, 2), memory=("1Gi", "2Gi")).ray_options()["num_cpus"] == 1
    assert Resources(gpu="A100:2").ray_options() == {"num_gpus": 2, "accelerator_type": "A100"}
    assert Resources(gpu=GPU("A100 80G", 1)).ray_options()["accelerator_type"] == "A100-80G"
    assert Resources(gpu=GPU("L40s", 1)).ray_options()["accelerator_type"] == "L40S"
    assert Resources(gpu=3).ray_options() == {"num_gpus": 3}
    mig = Resources(gpu=GPU("A100", 1, partition="1g.5gb")).ray_options()
    assert mig == {"accelerator_type": "A100", "resources": {"gpu-partition:A100:1g.5gb": 1.0}}
    tpu = Resources(gpu=TPU("V5P", "2x2x1")).ray_options()
    assert tpu == {"accelerator_type": "TPU-V5P", "resources": {"tpu:V5P:2x2x1": 1.0}}
    assert RetryStrategy(3, Backoff(1, 2, cap=5)).delay(3) == 5


def test_help_reads_well():
    doc = flyte.TaskEnvironment.__doc__
    assert "interruptible" in doc and "queue" in doc and "Example" in doc


def test_task_module_not_importable_on_workers_fails_once_with_advice(tmp_path, monkeypatch):
    (tmp_path / "only_here.py").write_text(
        "import flyte_ray as flyte\nenv = flyte.TaskEnvironment(name='here')\n"
        "@env.task(retries=3)\ndef f(x: int) -> int:\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the driver can import it; workers cannot
    import only_here

    run = flyte.run(only_here.f, 1)
    with pytest.raises(NonRecoverableError, match="cannot be imported on the Ray worker"):
        run.outputs()
    assert len(run.history) == 1  # not retried: it would fail the same way


def test_with_runcontext_accepts_flyte_mode_and_rejects_unknown_mode():
    assert flyte.with_runcontext("remote", debug=True).run(tc.square, 3).outputs() == 9
    with pytest.raises(ValueError, match="mode"):
        flyte.with_runcontext("cloud")
    env = flyte.TaskEnvironment(name="podded", pod_template="my-template")  # recorded only
    assert env.pod_template == "my-template"


def test_big_inputs_are_put_once_for_all_attempts(tmp_path):
    """A 4 MB input to a task that needs three attempts is serialised once by the caller (put in
    the object store once per call, passed by reference), not once per attempt."""
    marks = tmp_path / "marks"
    marks.mkdir()
    big = tc.Counted(os.urandom(4 << 20))
    tc.Counted.pickled = 0
    run = flyte.run(tc.fails_twice_with_big_input, big, str(marks))
    assert run.outputs() == 4 << 20
    assert [r.outcome for r in run.history] == ["failed", "failed", "succeeded"]
    assert tc.Counted.pickled == 1
    # small inputs still travel inline (no put): a plain call works as before
    assert tc.square(7) == 49


def test_a_background_checkpoint_save_is_stored_before_the_attempt_ends():
    """The task returns right after a background save: its attempt ends only once the upload is
    stored, and the attempt's record counts the bytes."""
    from flyte_ray._core.process import PROCESS
    from flyte_ray._core.settings import DriverSettings
    from flyte_ray.checkpoint import checkpoint_for

    run = flyte.run(tc.saves_in_background, 3)
    assert run.outputs() == 3 << 20
    storage = PROCESS.part(DriverSettings).value.storage  # where this driver's settings keep them
    cp = checkpoint_for(storage, run.name, tc.saves_in_background.name, "root")
    assert cp.read() == b"s" * (3 << 20)
    assert [e.ckpt_saved_bytes for e in run.events() if e.call_id == "root"][-1] == 3 << 20


def test_20000_calls_in_flight_complete_correctly():
    """20,000 calls submitted at once (all in flight before the first result is read) through a
    sync map, each result in its place."""
    n = 20_000
    assert list(flyte.map(tc.square, range(n))) == [i * i for i in range(n)]


def test_attempts_are_named_for_rays_dashboard(tmp_path):
    """Ray's task list and timeline say what each attempt is: ``<fqn> #<attempt> (<market>)``."""
    assert tc.ray_task_name(str(tmp_path / "names")) == ["core.ray_task_name #0 (ondemand)",
                                                         "core.ray_task_name #1 (ondemand)"]


def test_settings_and_run_overrides_are_pickled_once_per_process():
    """Every attempt's payload carries them: pickling them per call cost each call of a run ~20 us
    (RunOverrides' slots had no room for the pickled form, so it was made again every time)."""
    from flyte_ray._core.settings import Settings
    from flyte_ray._core.spec import RunOverrides
    from flyte_ray._ray.executors import pickled_once

    for obj in (Settings(), RunOverrides({"queue": "q"}, recorded=True, custom={"k": "v"})):
        blob = pickled_once(obj)
        assert pickled_once(obj) is blob  # kept on the object, not made again
    assert pickle.loads(pickled_once(RunOverrides({"queue": "q"}, custom={"k": "v"}))).custom == {"k": "v"}


def test_refs_awaited_on_a_loop_several_times_each_and_in_bulk():
    """The loop's collector waits on refs in bulk: the same ref awaited twice (warm replicas share
    refs) gets its value twice; a failed task's error reaches each of its awaiters; thousands of
    refs beyond its window all arrive."""
    from flyte_ray._ray.waiting import await_ref

    @ray.remote
    def boom():
        raise ValueError("boom")

    ref, bad = ray.put(5), boom.remote()

    async def go():
        many = [ray.put(i) for i in range(5000)]
        return await asyncio.gather(await_ref(ref), await_ref(ref), await_ref(bad), await_ref(bad),
                                    *(await_ref(r) for r in many), return_exceptions=True)

    out = asyncio.run(go())
    assert out[:2] == [5, 5] and all(isinstance(e, ValueError) and "boom" in str(e) for e in out[2:4])
    assert out[4:] == list(range(5000))
    from flyte_ray._ray import waiting

    # the values came through Ray's private Worker.get_objects (no "blocking ray.get inside async
    # actor" warning from the collector's thread): a Ray upgrade that changes it fails here
    assert waiting.PRIVATE_FETCH_OK
