"""Input validation and secret hygiene (issue #13).

* Every setting is checked where it is given (definition or call time): a wrong type is a
  ``TypeError``, a wrong value a ``ValueError``, and the message names the field.
* A fuzz test (hypothesis) throws valid and invalid values at every configuration entry point and
  checks that each either fails that way or is accepted with a normalised value in range.
* Secrets (env_vars values, storage options, secret requests) never show in a repr, an error
  message or a run's history table.

Everything here runs without Ray except the last section (an embedded cluster, one task).
"""

import logging
import math
import os
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flyte_ray as flyte
from flyte_ray import GPU, TPU, Backoff, Cache, ReusePolicy, Resources, RetryStrategy, Timeout
from flyte_ray import runtime
from flyte_ray._core.validation import ENV_NAME_RE, QUEUE_RE, SHORT_NAME_RE
from flyte_ray._duration import MAX_COUNT, MAX_SECONDS
from flyte_ray.cache_policy import as_cache
from flyte_ray.resources import MAX_AMOUNT, MAX_MEMORY, RAY_GRANULARITY
from flyte_ray.retry import as_retry_strategy
from flyte_ray.run import RunContext
from flyte_ray.timeout import as_timeout

import tasks_validation as tv

SENTINEL = tv.SENTINEL
NAN, INF = math.nan, math.inf


def _fn(x: int) -> int:
    return x


async def _afn(x: int) -> int:
    return x


ENV = flyte.TaskEnvironment(name="fuzz")
TASK = ENV.task(_fn)


# ------------------------------------------------------------------------------ known holes

@pytest.mark.parametrize("make, exc, words", [
    # durations (one parser: flyte_ray._duration)
    (lambda: Timeout(max_runtime=NAN), ValueError, ["Timeout.max_runtime", "finite"]),
    (lambda: Timeout(deadline=NAN), ValueError, ["Timeout.deadline", "finite"]),
    (lambda: Timeout(max_queued_time=NAN), ValueError, ["Timeout.max_queued_time", "finite"]),
    (lambda: Timeout(max_runtime=INF), ValueError, ["Timeout.max_runtime"]),
    (lambda: Timeout(max_runtime=2**2000), ValueError, ["Timeout.max_runtime", "bits"]),
    (lambda: Timeout(deadline=timedelta.max), ValueError, ["Timeout.deadline", "100 years"]),
    (lambda: Timeout(max_runtime=True), TypeError, ["Timeout.max_runtime", "timedelta"]),
    (lambda: Timeout(max_runtime="60"), TypeError, ["Timeout.max_runtime", "seconds"]),
    (lambda: as_timeout(NAN), ValueError, ["timeout", "finite"]),
    (lambda: as_timeout(True), TypeError, ["timeout", "Timeout("]),
    (lambda: ReusePolicy(idle_ttl=NAN), ValueError, ["ReusePolicy.idle_ttl"]),
    (lambda: ReusePolicy(scaledown_ttl=-1), ValueError, ["ReusePolicy.scaledown_ttl", ">= 0"]),
    (lambda: Backoff(base=NAN), ValueError, ["Backoff.base"]),
    (lambda: Backoff(base=1, factor=2, cap=timedelta.max), ValueError, ["Backoff.cap"]),
    (lambda: Backoff(base=1, factor=2**2000, cap=5), ValueError, ["Backoff.factor", "finite"]),
    (lambda: Backoff(base=1, factor=NAN, cap=5), ValueError, ["Backoff.factor"]),
    (lambda: Backoff(base=1, factor=True), TypeError, ["Backoff.factor"]),
    (lambda: flyte.init(inline_under=NAN), ValueError, ["inline_under", "finite"]),
    # resources Ray could not schedule
    (lambda: Resources(memory="0.00001"), ValueError, ["Resources.memory", "less than 1 byte"]),
    (lambda: Resources(memory=0), ValueError, ["Resources.memory", "1 byte"]),
    (lambda: Resources(memory="9" * 400), ValueError, ["Resources.memory"]),
    (lambda: Resources(memory="8Ei"), ValueError, ["Resources.memory", "2**63"]),
    (lambda: Resources(memory=2**63), ValueError, ["Resources.memory", "2**63"]),
    (lambda: Resources(memory=1.5e9), TypeError, ["Resources.memory", "float"]),
    (lambda: Resources(memory=("1Gi", "0.5")), ValueError, ["Resources.memory (limit)"]),
    (lambda: Resources(memory="١٢Gi"), ValueError, ["Resources.memory"]),  # non-ASCII digits
    (lambda: Resources(cpu=2**64), ValueError, ["Resources.cpu", str(MAX_AMOUNT)]),
    (lambda: Resources(cpu=10**400), ValueError, ["Resources.cpu"]),
    (lambda: Resources(cpu=NAN), ValueError, ["Resources.cpu", "finite"]),
    (lambda: Resources(cpu=INF), ValueError, ["Resources.cpu", "finite"]),
    (lambda: Resources(cpu=0.00001), ValueError, ["Resources.cpu", "granularity"]),
    (lambda: Resources(cpu="0.01m"), ValueError, ["Resources.cpu", "granularity"]),
    (lambda: Resources(cpu=True), TypeError, ["Resources.cpu"]),
    (lambda: Resources(cpu="2\n3"), ValueError, ["Resources.cpu"]),
    (lambda: Resources(cpu=(1, NAN)), ValueError, ["Resources.cpu (limit)"]),
    (lambda: Resources(gpu=2**64), ValueError, ["Resources.gpu", str(MAX_AMOUNT)]),
    (lambda: Resources(gpu=-1), ValueError, ["Resources.gpu"]),
    (lambda: Resources(gpu=1.5), TypeError, ["Resources.gpu", "float"]),
    (lambda: Resources(gpu=True), TypeError, ["Resources.gpu"]),
    (lambda: Resources(gpu="A100:0"), ValueError, ["Resources.gpu", "count"]),
    (lambda: Resources(gpu="A100:99999999"), ValueError, ["Resources.gpu", "count"]),
    (lambda: Resources(gpu="A100:١"), ValueError, ["Resources.gpu", "count"]),
    (lambda: Resources(disk="lots"), ValueError, ["Resources.disk"]),
    (lambda: GPU("A100", 2**64), ValueError, ["GPU.quantity"]),
    (lambda: GPU("A100", True), TypeError, ["GPU.quantity"]),
    (lambda: GPU(["A100"]), TypeError, ["GPU.device"]),
    (lambda: GPU("A100", 1, partition=7), TypeError, ["GPU.partition"]),
    (lambda: TPU(["V5P"]), TypeError, ["TPU.device"]),
    (lambda: TPU("V5P", "2x2x1\n"), ValueError, ["TPU.partition"]),
    (lambda: flyte.resources.Device(quantity=0), ValueError, ["Device.quantity"]),
    (lambda: flyte.resources.Device(quantity=1, device_class="NPU"), ValueError, ["Device.device_class"]),
    # counts: bools are not ints
    (lambda: RetryStrategy(True), TypeError, ["RetryStrategy.count"]),
    (lambda: RetryStrategy(2**64), ValueError, ["RetryStrategy.count", str(MAX_COUNT)]),
    (lambda: RetryStrategy(1, backoff=5), TypeError, ["RetryStrategy.backoff", "Backoff("]),
    (lambda: as_retry_strategy(True), TypeError, ["retries"]),
    (lambda: as_retry_strategy(1.0), TypeError, ["retries"]),
    (lambda: ReusePolicy(replicas=True), TypeError, ["ReusePolicy.replicas"]),
    (lambda: ReusePolicy(replicas=(True, 2)), TypeError, ["ReusePolicy.replicas (min)"]),
    (lambda: ReusePolicy(replicas=(3, 2)), ValueError, ["ReusePolicy.replicas"]),
    (lambda: ReusePolicy(replicas=(0, 2, 3)), ValueError, ["ReusePolicy.replicas", "3 items"]),
    (lambda: ReusePolicy(concurrency=2**40), ValueError, ["ReusePolicy.concurrency"]),
    (lambda: flyte.init(checkpoint_keep=True), TypeError, ["checkpoint_keep"]),
    (lambda: flyte.init(interruptible_failure_threshold=True), TypeError, ["interruptible_failure_threshold"]),
    (lambda: flyte.init(system_retries=False), TypeError, ["system_retries"]),
    # names: fullmatch, the safe characters
    (lambda: flyte.TaskEnvironment(name="fz", queue="gpu\n"), ValueError, ["TaskEnvironment.queue"]),
    (lambda: flyte.TaskEnvironment(name="fz", queue="a" * 64), ValueError, ["TaskEnvironment.queue", "63"]),
    (lambda: flyte.TaskEnvironment(name="fz", queue=5), TypeError, ["TaskEnvironment.queue"]),
    (lambda: flyte.TaskEnvironment(name="fz\n"), ValueError, ["TaskEnvironment.name"]),
    (lambda: flyte.TaskEnvironment(name=5), TypeError, ["TaskEnvironment.name"]),
    (lambda: flyte.TaskEnvironment(name="fz", description=5), TypeError, ["TaskEnvironment.description"]),
    (lambda: flyte.TaskEnvironment(name="fz", depends_on=5), TypeError, ["TaskEnvironment.depends_on"]),
    (lambda: flyte.TaskEnvironment(name="fz", interruptible=1), TypeError, ["TaskEnvironment.interruptible"]),
    (lambda: ENV.task(short_name="a/b"), ValueError, ["short_name", "call id"]),
    (lambda: ENV.task(short_name="a\n"), ValueError, ["short_name"]),
    (lambda: ENV.task(short_name=""), ValueError, ["short_name"]),
    (lambda: ENV.task(short_name=3), TypeError, ["short_name"]),
    (lambda: ENV.task(retries=True), TypeError, ["fuzz.task.retries"]),
    (lambda: ENV.task(timeout=NAN), ValueError, ["fuzz.task.timeout"]),
    (lambda: ENV.task(queue="q/1"), ValueError, ["fuzz.task.queue"]),
    (lambda: ENV.task(report="yes"), TypeError, ["fuzz.task.report"]),
    (lambda: ENV.task(docs=5), TypeError, ["fuzz.task.docs"]),
    (lambda: TASK.override(short_name="x/y"), ValueError, ["fuzz._fn.override.short_name"]),
    (lambda: TASK.override(short_name=""), ValueError, ["short_name"]),
    (lambda: TASK.override(timeout=INF), ValueError, ["fuzz._fn.override.timeout"]),
    (lambda: TASK.override(reusable="on"), ValueError, ["fuzz._fn.override.reusable", "'off'"]),
    (lambda: TASK.override(reusable=ReusePolicy(concurrency=2)), ValueError, ["override.reusable", "async"]),
    (lambda: flyte.with_runcontext(name="a/b"), ValueError, ["with_runcontext.name"]),
    (lambda: flyte.with_runcontext(name="run\n"), ValueError, ["with_runcontext.name"]),
    (lambda: flyte.with_runcontext(name="run|1"), ValueError, ["with_runcontext.name"]),
    (lambda: flyte.with_runcontext(name=7), TypeError, ["with_runcontext.name"]),
    (lambda: flyte.with_runcontext(queue="q\n"), ValueError, ["with_runcontext.queue"]),
    (lambda: flyte.with_runcontext(interruptible=1), TypeError, ["with_runcontext.interruptible"]),
    (lambda: flyte.with_runcontext(overwrite_cache="yes"), TypeError, ["with_runcontext.overwrite_cache"]),
    (lambda: flyte.with_runcontext(mode=1), TypeError, ["with_runcontext.mode"]),
    # env_vars: what a process environment can hold
    (lambda: flyte.TaskEnvironment(name="fz", env_vars={"A": "x\0y"}), ValueError, ["env_vars['A']", "NUL"]),
    (lambda: flyte.TaskEnvironment(name="fz", env_vars={"": "x"}), ValueError, ["env_vars", "empty name"]),
    (lambda: flyte.TaskEnvironment(name="fz", env_vars={"A=B": "x"}), ValueError, ["env_vars", "'='"]),
    (lambda: flyte.TaskEnvironment(name="fz", env_vars={"1A": "x"}), ValueError, ["env_vars", "'1'"]),
    (lambda: flyte.TaskEnvironment(name="fz", env_vars={"A\n": "x"}), ValueError, ["env_vars"]),
    (lambda: flyte.TaskEnvironment(name="fz", env_vars={"É": "x"}), ValueError, ["env_vars"]),
    (lambda: flyte.TaskEnvironment(name="fz", env_vars={"A": 1}), TypeError, ["env_vars['A']", "int"]),
    (lambda: flyte.TaskEnvironment(name="fz", env_vars={1: "x"}), TypeError, ["env_vars", "of type int"]),
    (lambda: flyte.TaskEnvironment(name="fz", env_vars=["A=1"]), TypeError, ["env_vars", "list"]),
    (lambda: flyte.TaskEnvironment(name="fz", env_vars={"A": "\ud800"}), ValueError, ["env_vars['A']"]),
    (lambda: flyte.TaskEnvironment(name="fz", env_vars={"A": "x" * 200_000}), ValueError, ["env_vars['A']", "bytes"]),
    (lambda: TASK.override(env_vars={"A": None}), TypeError, ["override.env_vars['A']"]),
    (lambda: flyte.with_runcontext(env_vars={"A B": "1"}), ValueError, ["with_runcontext.env_vars"]),
    # secrets: names, never values
    (lambda: flyte.TaskEnvironment(name="fz", secrets={"k": "v"}), TypeError, ["TaskEnvironment.secrets"]),
    (lambda: flyte.TaskEnvironment(name="fz", secrets=[""]), ValueError, ["TaskEnvironment.secrets[0]"]),
    (lambda: flyte.TaskEnvironment(name="fz", secrets=[5]), TypeError, ["TaskEnvironment.secrets[0]"]),
    (lambda: flyte.TaskEnvironment(name="fz", secrets=flyte.Secret(key=5)), TypeError, ["TaskEnvironment.secrets"]),
    (lambda: flyte.TaskEnvironment(name="fz", secrets=flyte.Secret(key="k", as_env_var="A-B")), ValueError,
     ["secrets.as_env_var"]),
    # cache
    (lambda: Cache(behavior=1), TypeError, ["Cache.behavior"]),
    (lambda: Cache(serialize="yes"), TypeError, ["Cache.serialize"]),
    (lambda: Cache(ignored_inputs=5), TypeError, ["Cache.ignored_inputs"]),
    (lambda: Cache(ignored_inputs=[""]), ValueError, ["Cache.ignored_inputs"]),
    (lambda: Cache(version_override=" "), ValueError, ["Cache.version_override"]),
    (lambda: as_cache(3), TypeError, ["cache"]),
    (lambda: as_cache("sometimes"), ValueError, ["cache", "auto"]),
    # init: checked before Ray is touched
    (lambda: runtime.check_init_args(storage=""), ValueError, ["storage", "empty"]),
    (lambda: runtime.check_init_args(storage="   "), ValueError, ["storage", "empty"]),
    (lambda: runtime.check_init_args(storage="/tmp/a\0b"), ValueError, ["storage", "control"]),
    (lambda: runtime.check_init_args(storage=5), TypeError, ["storage"]),
    (lambda: runtime.check_init_args(storage=flyte.Storage("memory://x"), storage_options={"k": 1}), ValueError,
     ["storage_options", "Storage("]),
    (lambda: runtime.check_init_args(storage_options=["k"]), TypeError, ["storage_options"]),
    (lambda: runtime.check_init_args(address=5), TypeError, ["address"]),
    (lambda: runtime.check_init_args(address=""), ValueError, ["address"]),
    (lambda: runtime.check_init_args(address="auto\n"), ValueError, ["address"]),
    (lambda: runtime.check_init_args(address="host:99999"), ValueError, ["address", "port"]),
    (lambda: runtime.check_init_args(address="ray://host"), ValueError, ["address"]),
    (lambda: runtime.check_init_args(num_cpus=1.5), ValueError, ["num_cpus", "whole"]),
    (lambda: runtime.check_init_args(num_cpus=NAN), ValueError, ["num_cpus"]),
    (lambda: runtime.check_init_args(num_cpus=-1), ValueError, ["num_cpus"]),
    (lambda: runtime.check_init_args(num_cpus=True), TypeError, ["num_cpus"]),
    (lambda: runtime.check_init_args(include_dashboard="no"), TypeError, ["include_dashboard"]),
    (lambda: runtime.check_init_args(namespace=""), ValueError, ["namespace"]),
    (lambda: runtime.check_init_args(namespace=1), TypeError, ["namespace"]),
    (lambda: runtime.check_init_args(runtime_env="pip"), TypeError, ["runtime_env"]),
    (lambda: runtime.check_init_args(runtime_env={"env_vars": {"A": "\0"}}), ValueError,
     ["runtime_env['env_vars']['A']", "NUL"]),
    (lambda: runtime.check_init_args(supervisor=1), TypeError, ["supervisor"]),
    (lambda: runtime.check_init_args(supervisor="actor"), ValueError, ["supervisor", "inline"]),
    (lambda: runtime.check_init_args(log_level="LOUD"), ValueError, ["log_level"]),
    (lambda: runtime.check_init_args(log_level=True), TypeError, ["log_level"]),
])
def test_bad_input_is_rejected_where_given(make, exc, words):
    with pytest.raises(exc) as info:
        make()
    assert type(info.value) is exc, repr(info.value)  # not a subclass such as OverflowError's kin
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_accepted_forms_are_normalised():
    assert Resources(cpu="500m", memory="1.5Ki").ray_options() == {"num_cpus": 0.5, "memory": 1536}
    assert Resources(cpu=0).ray_options() == {"num_cpus": 0.0}  # Ray's num_cpus=0: holds no CPU
    assert Resources(cpu=RAY_GRANULARITY, memory=1).ray_options() == {"num_cpus": 0.0001, "memory": 1}
    assert Resources(cpu=" 2 ", memory=" 4Gi ").ray_options() == {"num_cpus": 2.0, "memory": 4 * 1024**3}
    assert Resources(memory="7Ei").ray_options()["memory"] == 7 * 1024**6 < MAX_MEMORY
    assert Resources(memory="123456789012345678.9").ray_options()["memory"] == 123456789012345678  # exact
    assert Resources(gpu=0).ray_options() == {} and Resources(gpu="T4:2").ray_options()["num_gpus"] == 2
    assert Resources(cpu=MAX_AMOUNT, gpu=MAX_AMOUNT).ray_options()["num_gpus"] == MAX_AMOUNT
    assert Timeout(max_runtime=0).limits() == (None, None, None)  # 0: no limit
    assert Timeout(max_runtime=timedelta(minutes=1), deadline=MAX_SECONDS).limits() == (60.0, None, MAX_SECONDS)
    assert as_timeout(1.5) == Timeout(max_runtime=1.5)
    assert Backoff(base=0, factor=1e308, cap=5).seconds(10) == 0.0  # not the cap: 0 * anything is 0
    assert Backoff(base=1, factor=1e308, cap=5).seconds(10) == 5.0
    assert ReusePolicy(replicas=[0, 3]).replicas == (0, 3)
    assert Cache(ignored_inputs=["a", "b"]).ignored_inputs == ("a", "b") and as_cache(True).behavior == "auto"
    env = flyte.TaskEnvironment(name="fz", env_vars={"_A1": "", "B": "é=\n"}, secrets=["k", flyte.Secret(key="s")])
    assert env._values()["env_vars"] == {"_A1": "", "B": "é=\n"}
    assert isinstance(env._values()["secrets"], tuple)
    s = runtime.check_init_args(num_cpus=2.0, storage="/tmp/x", inline_under=timedelta(seconds=1))
    assert s.num_cpus == 2 and type(s.num_cpus) is int and s.settings.inline_under == 1.0
    assert runtime.check_init_args(address="[::1]:6379").address == "[::1]:6379"
    assert runtime.check_init_args(address="ray://head.svc:10001", log_level="info").log_level == "INFO"


def test_function_names_that_cannot_be_call_ids_need_a_short_name():
    def weird(x: int) -> int:
        return x

    weird.__name__ = "we/ird"
    with pytest.raises(ValueError, match="short_name"):
        ENV.task(weird)
    lam = ENV.task(lambda x: x)  # '<lambda>' holds no '/': accepted as before
    assert lam.short_name == "<lambda>"
    assert ENV.task(short_name="_private.v2-1")(_fn).short_name == "_private.v2-1"


def test_init_options_that_cannot_apply_to_a_connected_ray_are_rejected(monkeypatch):
    """No cluster needed: Ray is made to look connected; the check comes before anything changes."""
    monkeypatch.setattr(runtime.ray, "is_initialized", lambda: True)
    before = runtime.PROCESS.part(runtime.DriverSettings).value
    for kwargs in ({"num_cpus": 2}, {"include_dashboard": True}, {"namespace": "ns"}, {"runtime_env": {}}):
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))}.*already connected.*shutdown"):
            flyte.init(**kwargs)
    assert runtime.PROCESS.part(runtime.DriverSettings).value is before  # nothing applied


# ------------------------------------------------------------------------------ fuzzing

_NASTY = [
    "", " ", "\n", "a\n", "a\0b", "a/b", "../x", "a|b", "é", "名前", "\u200b", "\ud800", "x" * 300,
    "auto", "off", "disable", "override", "inline", "A100:1", "T4:0", "A100 80G:2", "H100:1", "500m",
    "0.00001", "0m", "4Gi", "8Ei", "1e3", "-1", "nan", "inf", "0", "1", "2", "TOKEN=1", "ok_name",
    "ok-name", "ok.name", "V5P", "2x2x1", "1g.5gb", "127.0.0.1:6379", "ray://h:1", "memory://m",
]
TEXT = st.one_of(st.sampled_from(_NASTY), st.text(max_size=12), st.text(st.characters(codec="ascii"), max_size=12))
NUMBERS = st.one_of(
    st.integers(-3, 3),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63, 2**64, 10**400, -(10**400), MAX_COUNT, MAX_COUNT + 1, MAX_AMOUNT + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([NAN, INF, -INF, 0.0, -0.0, 5e-324, 1e-5, 1e-4, 0.5, 1.5, 1e6, 1e6 + 1, 1e300, MAX_SECONDS + 1]),
)
DURATIONS = st.one_of(NUMBERS, st.timedeltas(), st.sampled_from([timedelta.max, timedelta.min, timedelta(0)]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT, st.timedeltas(), st.just(object()), st.just(b"x"))
ANY = st.one_of(
    SCALARS,
    st.lists(st.one_of(NUMBERS, TEXT, st.none()), max_size=3),
    st.tuples(st.one_of(NUMBERS, TEXT), st.one_of(NUMBERS, TEXT)),
    st.dictionaries(TEXT, st.one_of(TEXT, NUMBERS, st.none()), max_size=3),
)


def mostly(valid, nasty=ANY):
    """Two draws in three from ``valid``, else from ``nasty``: enough accepted values to check
    what they normalise to, enough bad ones to check the errors."""
    return st.integers(0, 2).flatmap(lambda i: nasty if i == 0 else valid)


VALID = {
    "cpu": st.one_of(
        st.sampled_from([0, 1, 0.25, "500m", "2", " 1.5 ", (1, 2), ("500m", 1), [2, 2]]),
        st.floats(1e-4, 1e6),
        st.integers(0, MAX_AMOUNT),
        st.integers(1, 10**6).map(lambda n: f"{n}m"),
    ),
    "memory": st.one_of(
        st.sampled_from(["512Mi", "4Gi", "1", "1.5Ki", "7Ei", 2**62, ("1Gi", "2Gi")]),
        st.integers(1, MAX_MEMORY),
        st.tuples(st.integers(1, 999), st.sampled_from(["", "k", "Mi", "G", "Ti", "P"])).map(lambda t: f"{t[0]}{t[1]}"),
    ),
    "gpu": st.one_of(
        st.integers(0, 8),
        st.sampled_from(["A100:1", "T4:2", "H200:8", GPU("H100", 2), GPU("A100", 1, "1g.5gb"), TPU("V5P", "2x2x1")]),
    ),
    "duration": st.one_of(
        st.floats(0, MAX_SECONDS), st.integers(0, 10**9), st.timedeltas(timedelta(0), timedelta(days=36500))
    ),
    "count": st.integers(0, 10),
    "text": st.from_regex(r"[a-z][a-z0-9_-]{0,10}[a-z0-9]", fullmatch=True),
}
#: examples per fuzz test: 150 keeps the file well under 10 s; set FLYTE_RAY_FUZZ_EXAMPLES for a soak run
FUZZ = settings(
    max_examples=int(os.environ.get("FLYTE_RAY_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _outcome(make, names):
    """``make()``, or ``None`` if it raised TypeError/ValueError naming one of ``names``; any other
    exception (OverflowError, a KeyError from deep inside...) fails the test."""
    try:
        return make()
    except (TypeError, ValueError) as e:
        msg = str(e)
        assert any(n in msg for n in names), f"{type(e).__name__} does not name {names}: {msg}"
        assert "Traceback" not in msg
        return None


def _in_range_seconds(s):
    return s is None or (isinstance(s, float) and math.isfinite(s) and 0 < s <= MAX_SECONDS)


def _check_ray_options(opts):
    cpus = opts.get("num_cpus")
    assert cpus is None or (math.isfinite(cpus) and (cpus == 0 or RAY_GRANULARITY <= cpus <= MAX_AMOUNT)), cpus
    mem = opts.get("memory")
    assert mem is None or (type(mem) is int and 1 <= mem <= MAX_MEMORY), mem
    gpus = opts.get("num_gpus")
    assert gpus is None or (type(gpus) is int and 1 <= gpus <= MAX_AMOUNT), gpus
    for v in opts.get("resources", {}).values():
        assert 1 <= v <= MAX_AMOUNT


def _fields(data, table, max_size=3):
    """Draw 1..max_size fields of ``table`` (field -> strategy) and a value for each."""
    chosen = data.draw(st.sets(st.sampled_from(sorted(table)), min_size=1, max_size=max_size), label="fields")
    return {f: data.draw(table[f], label=f) for f in sorted(chosen)}


RESOURCE_FIELDS = {
    "cpu": mostly(VALID["cpu"]),
    "memory": mostly(VALID["memory"]),
    "gpu": mostly(VALID["gpu"]),
    "disk": mostly(VALID["memory"]),
    "shm": mostly(st.one_of(VALID["memory"], st.just("auto"))),
}


@FUZZ
@given(data=st.data())
def test_fuzz_resources(data):
    kw = _fields(data, RESOURCE_FIELDS)
    r = _outcome(lambda: Resources(**kw), [f"Resources.{f}" for f in kw])
    if r is not None:
        _check_ray_options(r.ray_options())


@FUZZ
@given(data=st.data())
def test_fuzz_gpu_tpu(data):
    kind = data.draw(st.sampled_from(["GPU", "TPU"]))
    names = sorted(flyte.resources.MIG_PARTITIONS if kind == "GPU" else flyte.resources.TPU_SLICES)
    device = data.draw(mostly(st.sampled_from(names + (["T4", "L4"] if kind == "GPU" else []))), label="device")
    table = flyte.resources.MIG_PARTITIONS if kind == "GPU" else flyte.resources.TPU_SLICES
    parts = table.get(device, ()) if isinstance(device, str) else ()
    valid_part = st.one_of(st.none(), st.sampled_from(parts)) if parts else st.none()
    partition = data.draw(mostly(valid_part), label="partition")
    if kind == "GPU":
        quantity = data.draw(mostly(st.integers(1, 16)), label="quantity")
        d = _outcome(lambda: GPU(device, quantity, partition), ["GPU.device", "GPU.quantity", "GPU.partition"])
    else:
        d = _outcome(lambda: TPU(device, partition), ["TPU.device", "TPU.partition"])
    if d is not None:
        _check_ray_options(Resources(gpu=d).ray_options())


DURATION = mostly(VALID["duration"], st.one_of(ANY, DURATIONS))
COUNT = mostly(VALID["count"], st.one_of(ANY, NUMBERS))


@FUZZ
@given(data=st.data())
def test_fuzz_timeout(data):
    kw = _fields(data, {"max_runtime": DURATION, "max_queued_time": DURATION, "deadline": DURATION})
    t = _outcome(lambda: Timeout(**kw), [f"Timeout.{f}" for f in kw])
    if t is not None:
        assert all(_in_range_seconds(s) for s in t.limits())
    t = _outcome(lambda: as_timeout(data.draw(DURATION, label="timeout")), ["timeout"])
    if t is not None:
        assert all(_in_range_seconds(s) for s in t.limits())


@FUZZ
@given(data=st.data())
def test_fuzz_retry_strategy_and_backoff(data):
    factor = mostly(st.one_of(st.just(1), st.floats(1, 1e308), st.integers(1, 10**30)), st.one_of(ANY, NUMBERS))
    kw = _fields(data, {"base": DURATION, "factor": factor, "cap": DURATION})
    kw.setdefault("base", 1)
    b = _outcome(lambda: Backoff(**kw), [f"Backoff.{f}" for f in kw] + ["Backoff.cap"])
    if b is not None:
        for n in (0, 1, 7, 10_000):
            s = b.seconds(n)
            assert math.isfinite(s) and 0 <= s <= MAX_SECONDS
            assert b.compute_delay(n) >= timedelta(0)
    n = data.draw(COUNT, label="count")
    rs = _outcome(lambda: RetryStrategy(n, b), ["RetryStrategy.count"])
    if rs is not None:
        assert type(rs.count) is int and 0 <= rs.count <= MAX_COUNT and rs.delay(3) >= 0
    rs = _outcome(lambda: as_retry_strategy(n), ["retries"])
    assert rs is None or 0 <= rs.count <= MAX_COUNT


@FUZZ
@given(data=st.data())
def test_fuzz_reuse_policy(data):
    replicas = mostly(st.one_of(st.integers(1, 10), st.tuples(st.integers(0, 3), st.integers(3, 6))))
    kw = _fields(data, {"replicas": replicas, "idle_ttl": DURATION, "concurrency": mostly(st.integers(1, 64)),
                        "scaledown_ttl": DURATION})
    p = _outcome(lambda: ReusePolicy(**kw), [f"ReusePolicy.{f}" for f in kw])
    if p is not None:
        assert 0 <= p.min_replicas <= p.max_replicas <= MAX_COUNT and p.max_replicas >= 1
        assert 1 <= p.concurrency <= MAX_COUNT
        assert all(math.isfinite(x) and 0 <= x <= MAX_SECONDS for x in (p.idle_ttl, p.scaledown_ttl))


@FUZZ
@given(data=st.data())
def test_fuzz_cache(data):
    fields = {
        "behavior": mostly(st.sampled_from(["auto", "override", "disable"])),
        "version_override": mostly(st.one_of(st.none(), VALID["text"])),
        "serialize": mostly(st.booleans()),
        "ignored_inputs": mostly(st.one_of(VALID["text"], st.lists(VALID["text"], max_size=3))),
        "salt": mostly(st.text(max_size=5)),
        "policies": mostly(st.sampled_from([None, lambda t, i: "x", [len, str]])),
    }
    kw = _fields(data, fields)
    c = _outcome(lambda: Cache(**kw), [f"Cache.{f}" for f in kw])
    if c is not None:
        assert c.behavior in ("auto", "override", "disable") and all(isinstance(x, str) and x for x in c.ignored_inputs)
    c = _outcome(lambda: as_cache(data.draw(mostly(st.sampled_from(["auto", True, False, Cache()])), label="c")),
                 ["cache"])
    assert c is None or isinstance(c, Cache)


def _check_settings(values):
    ev = values.get("env_vars")
    if ev is not None:
        assert all(ENV_NAME_RE.fullmatch(k) and isinstance(v, str) and "\0" not in v for k, v in ev.items())
    q = values.get("queue")
    assert q is None or QUEUE_RE.fullmatch(q)
    assert values.get("interruptible") in (None, True, False)
    t = values.get("timeout")
    assert t is None or all(_in_range_seconds(s) for s in t.limits())
    r = values.get("retries")
    assert r is None or 0 <= r.count <= MAX_COUNT


ENV_VARS = mostly(
    st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), st.text(max_size=8), max_size=3),
    st.one_of(ANY, st.dictionaries(st.one_of(TEXT, st.sampled_from(["A", "_B", "C1"])), st.one_of(TEXT, NUMBERS),
                                   max_size=3)),
)
SECRETS = mostly(
    st.one_of(
        st.none(),
        VALID["text"],
        st.builds(flyte.Secret, key=VALID["text"], as_env_var=st.sampled_from([None, "TOKEN", "_X1"])),
        st.lists(st.one_of(VALID["text"], st.builds(flyte.Secret, key=VALID["text"])), max_size=3),
    ),
    st.one_of(
        ANY,
        st.builds(flyte.Secret, key=st.one_of(TEXT, NUMBERS), as_env_var=st.one_of(st.none(), TEXT)),
        st.lists(st.one_of(TEXT, st.builds(flyte.Secret, key=TEXT)), max_size=3),
    ),
)
QUEUE = mostly(st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
               st.one_of(ANY, TEXT))
BOOL = mostly(st.one_of(st.none(), st.booleans()))
ENV_FIELDS = {
    "name": mostly(VALID["text"]),
    "resources": mostly(st.builds(Resources, cpu=st.sampled_from([None, 1, "500m"]), memory=st.sampled_from([None, "1Gi"]))),
    "env_vars": ENV_VARS,
    "secrets": SECRETS,
    "cache": mostly(st.sampled_from(["auto", "disable", Cache("override")])),
    "reusable": mostly(st.sampled_from([None, ReusePolicy(), ReusePolicy(replicas=(0, 2))])),
    "interruptible": mostly(st.booleans()),
    "queue": QUEUE,
    "image": ANY,
    "depends_on": mostly(st.sampled_from([(), [ENV]])),
    "description": mostly(st.one_of(st.none(), st.text(max_size=300))),
    "pod_template": ANY,
}


@FUZZ
@given(data=st.data())
def test_fuzz_task_environment(data):
    kw = {"name": "fz", **_fields(data, ENV_FIELDS)}
    env = _outcome(lambda: flyte.TaskEnvironment(**kw), [f"TaskEnvironment.{f}" for f in kw])
    if env is not None:
        _check_settings(env._values())
        assert isinstance(repr(env), str)
        t = env.task(_afn)
        _check_spec(t.spec)


TASK_FIELDS = {
    "short_name": mostly(st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}", fullmatch=True)),
                         st.one_of(ANY, TEXT)),
    "cache": ENV_FIELDS["cache"],
    "retries": mostly(st.one_of(VALID["count"], st.just(RetryStrategy(2, Backoff(1, 2, 10))))),
    "timeout": mostly(st.one_of(VALID["duration"], st.just(Timeout(deadline=5)))),
    "interruptible": BOOL,
    "queue": QUEUE,
    "report": mostly(st.booleans()),
    "docs": mostly(st.one_of(st.none(), st.text(max_size=5))),
}


def _check_spec(spec):
    _check_settings({f: getattr(spec, f) for f in ("env_vars", "queue", "interruptible", "timeout", "retries")})
    if spec.resources is not None:
        _check_ray_options(spec.resources.ray_options())
    assert SHORT_NAME_RE.fullmatch(spec.short_name)
    assert isinstance(repr(spec), str)


@FUZZ
@given(data=st.data())
def test_fuzz_task_decorator(data):
    kw = _fields(data, TASK_FIELDS)
    deco = _outcome(lambda: ENV.task(**kw), list(kw))
    if deco is not None:
        t = deco(_fn)  # checked before the function is known: applying it never fails
        _check_spec(t.spec)


OVERRIDE_FIELDS = {
    **{k: v for k, v in TASK_FIELDS.items() if k not in ("report", "docs")},
    "resources": ENV_FIELDS["resources"],
    "reusable": mostly(st.sampled_from([None, "off", ReusePolicy(), ReusePolicy(concurrency=2)])),
    "env_vars": ENV_VARS,
    "secrets": SECRETS,
}
WARM = flyte.TaskEnvironment(name="fz-warm", reusable=ReusePolicy())
BASES = {"sync": TASK, "async": ENV.task(_afn), "reusable": WARM.task(_fn)}


@FUZZ
@given(data=st.data(), base=st.sampled_from(sorted(BASES)))
def test_fuzz_task_override(data, base):
    kw = _fields(data, OVERRIDE_FIELDS)
    t = _outcome(lambda: BASES[base].override(**kw), list(kw))
    if t is not None:
        _check_spec(t.spec)


RUN_FIELDS = {
    "mode": mostly(st.sampled_from([None, "remote", "local", "hybrid"])),
    "name": mostly(st.one_of(st.none(), VALID["text"]), st.one_of(ANY, TEXT)),
    "interruptible": BOOL,
    "queue": QUEUE,
    "overwrite_cache": mostly(st.booleans()),
    "env_vars": ENV_VARS,
}


@FUZZ
@given(data=st.data())
def test_fuzz_with_runcontext(data):
    kw = _fields(data, RUN_FIELDS)
    rc = _outcome(lambda: flyte.with_runcontext(**kw), [f"with_runcontext.{f}" for f in kw])
    if rc is not None:
        assert isinstance(rc, RunContext)
        assert rc._name is None or SHORT_NAME_RE.fullmatch(rc._name)
        _check_settings(dict(rc._overrides or {}))
        assert isinstance(repr(rc._overrides), str)


INIT_FIELDS = {
    "address": mostly(st.sampled_from([None, "auto", "127.0.0.1:6379", "ray://h:10001", "[::1]:1", "head-0.svc:6380"])),
    "storage": mostly(st.sampled_from([None, "memory://fz", "s3://b/p", "/tmp/fz", "gs://b"])),
    "storage_options": mostly(st.one_of(st.none(), st.dictionaries(VALID["text"], ANY, max_size=2))),
    "system_retries": mostly(st.integers(-1, 10)),
    "interruptible_failure_threshold": mostly(st.one_of(st.none(), VALID["count"])),
    "checkpoint_keep": mostly(st.integers(1, 10)),
    "num_cpus": mostly(st.one_of(st.none(), VALID["count"], st.just(2.0))),
    "include_dashboard": mostly(st.booleans()),
    "namespace": mostly(st.one_of(st.none(), VALID["text"])),
    "runtime_env": mostly(st.one_of(st.none(), st.builds(lambda ev: {"env_vars": ev}, ENV_VARS))),
    "supervisor": mostly(st.sampled_from(["auto", "inline"])),
    "inline_under": DURATION,
    "log_level": mostly(st.sampled_from(["INFO", "debug", logging.ERROR, 0])),
}


@FUZZ
@given(data=st.data())
def test_fuzz_init_arguments(data):
    kw = _fields(data, INIT_FIELDS, max_size=4)
    args = _outcome(lambda: runtime.check_init_args(**kw), list(kw))
    if args is not None:
        s = args.settings
        assert -1 <= s.system_retries <= MAX_COUNT and 1 <= s.checkpoint_keep <= MAX_COUNT
        assert s.interruptible_failure_threshold is None or 0 <= s.interruptible_failure_threshold <= MAX_COUNT
        assert math.isfinite(s.inline_under) and 0 <= s.inline_under <= MAX_SECONDS
        assert args.num_cpus is None or (type(args.num_cpus) is int and 0 <= args.num_cpus <= MAX_COUNT)
        assert s.storage.url.strip() and isinstance(repr(s), str)


# ------------------------------------------------------------------------------ secrets never printed

def _assert_hidden(*texts):
    for text in texts:
        assert SENTINEL not in text, text


def test_reprs_show_names_not_secret_values():
    env = tv.env
    task = tv.token_seen
    spec = task.spec
    assert spec.env_vars == {"API_TOKEN": SENTINEL}  # the value is there to be used ...
    assert spec.ray_options["runtime_env"]["env_vars"] == {"API_TOKEN": SENTINEL}
    _assert_hidden(repr(env), str(env), repr(spec), str(spec), repr(task))  # ... and never printed
    assert "env_vars={'API_TOKEN': '***'}" in repr(env) and "'API_TOKEN': '***'" in repr(spec)
    assert "Secret(key='api-token', as_env_var='API_TOKEN')" in repr(env)
    over = task.override(env_vars={"OTHER": SENTINEL})
    _assert_hidden(repr(over.spec))
    rc = flyte.with_runcontext(env_vars={"RUN_TOKEN": SENTINEL})
    _assert_hidden(repr(rc._overrides), repr(rc))
    assert "RUN_TOKEN" in repr(rc._overrides)
    args = runtime.check_init_args(storage="memory://fz", storage_options={"secret": SENTINEL},
                                   runtime_env={"env_vars": {"T": SENTINEL}, "pip": [SENTINEL]})
    _assert_hidden(repr(args), repr(args.settings), repr(args.settings.storage))
    assert "'T': '***'" in repr(args) and "secret" in repr(args.settings)
    clone = env.clone_with("validation-2", image=flyte.Image.from_debian_base().with_env_vars({"IMG": SENTINEL}))
    _assert_hidden(repr(clone))


def test_secret_repr_shows_names_and_paths_only():
    class Holder:  # whatever a mount may be: only a path is shown
        def __repr__(self):
            return SENTINEL

    s = flyte.Secret(key="db", group="prod", mount=Holder(), as_env_var="DB_PASSWORD")
    assert repr(s) == "Secret(key='db', group='prod', as_env_var='DB_PASSWORD', mount=<Holder>)"
    assert repr(flyte.Secret(key="db", mount="/etc/secrets")) == "Secret(key='db', mount='/etc/secrets')"
    env = flyte.TaskEnvironment(name="fz", secrets=[s, "plain-key"])
    _assert_hidden(repr(s), str(s), repr(env), repr(env.task(_fn).spec))


@pytest.mark.parametrize("make", [
    lambda: flyte.TaskEnvironment(name="fz", env_vars={"A": SENTINEL + "\0"}),
    lambda: flyte.TaskEnvironment(name="fz", env_vars={"A": SENTINEL * 20_000}),
    lambda: flyte.TaskEnvironment(name="fz", env_vars={"A": SENTINEL + "\ud800"}),
    lambda: flyte.TaskEnvironment(name="fz", env_vars={"TOKEN=" + SENTINEL: ""}),
    lambda: flyte.TaskEnvironment(name="fz", env_vars={" " + SENTINEL: "x"}),
    lambda: flyte.TaskEnvironment(name="fz", env_vars={"A": SENTINEL.encode()}),
    lambda: flyte.TaskEnvironment(name="fz", env_vars=[("A", SENTINEL)]),
    lambda: flyte.TaskEnvironment(name="fz", secrets={"api": SENTINEL}),
    lambda: flyte.TaskEnvironment(name="fz", secrets=["\n" + SENTINEL]),
    lambda: flyte.TaskEnvironment(name="fz", secrets=[flyte.Secret(key=SENTINEL + "\0")]),
    lambda: tv.token_seen.override(env_vars={"B": SENTINEL + "\0"}),
    lambda: tv.token_seen.override(env_vars={"A": SENTINEL}, reusable=5),
    lambda: flyte.with_runcontext(env_vars={"B": [SENTINEL]}),
    lambda: runtime.check_init_args(storage_options=SENTINEL),
    lambda: runtime.check_init_args(storage_options={1: SENTINEL}),
    lambda: runtime.check_init_args(storage=flyte.Storage("memory://x", {"k": SENTINEL}), storage_options={"k": SENTINEL}),
    lambda: runtime.check_init_args(storage="s3://" + SENTINEL + "\n"),
    lambda: runtime.check_init_args(storage=SENTINEL.encode()),
    lambda: runtime.check_init_args(runtime_env=SENTINEL),
    lambda: runtime.check_init_args(runtime_env={"env_vars": {"A": SENTINEL + "\0"}}),
])
def test_errors_never_repeat_a_secret(make):
    with pytest.raises((TypeError, ValueError)) as info:
        make()
    _assert_hidden(str(info.value), repr(info.value))


@pytest.mark.parametrize("text", [
    "storage_options: {0}\n",
    "storage_options:\n  key: [1, 2]\n  nested: {{a: 1}}\nsystem_retries: {0}\n",
    "runtime_env: {0}\n",
    "storage: 5\nstorage_options: {{secret: {0}}}\nnum_cpus: {0}\n",
    "supervisor: {0}\n",
])
def test_init_from_config_reports_fields_not_values(tmp_path, text):
    cfg = tmp_path / "flyte-ray.yaml"
    cfg.write_text(text.format(SENTINEL))
    with pytest.raises(ValueError) as info:
        flyte.init_from_config(cfg)
    msg = str(info.value)
    _assert_hidden(msg)
    assert "init_from_config" in msg and str(cfg) in msg


def test_init_from_config_passes_storage_options_through_the_same_checks(tmp_path, monkeypatch):
    """A file whose values are all valid for pydantic still meets init's checks, before Ray."""
    called = []
    monkeypatch.setattr(runtime, "_connect", lambda *a, **k: called.append(a))
    cfg = tmp_path / "flyte-ray.json"
    cfg.write_text('{"storage": " ", "storage_options": {"secret": "%s"}}' % SENTINEL)
    with pytest.raises(ValueError) as info:
        flyte.init_from_config(cfg)
    _assert_hidden(str(info.value))
    assert "storage" in str(info.value) and not called


# ------------------------------------------------------------------------------ on Ray (one task)

def test_secret_env_vars_reach_the_worker_but_no_history_or_repr(embedded):
    assert tv.token_seen("API_TOKEN", False) is True  # the environment's variable reached the worker
    # run-level env_vars take precedence over the environment's (they replace them, as any setting)
    run = flyte.with_runcontext(env_vars={"RUN_TOKEN": SENTINEL}).run(tv.token_seen, "RUN_TOKEN", True)
    assert run.outputs() is True
    table = run.history_table()
    assert len(run.history) == 2 and "first attempt fails" in table
    _assert_hidden(table, repr(run), run._repr_html_(), *(repr(r) for r in run.history))
    with pytest.raises(ValueError, match="num_cpus, runtime_env cannot apply"):
        flyte.init(num_cpus=1, runtime_env={"env_vars": {"T": SENTINEL}})
    flyte.init(storage=embedded)  # flyte-ray's own settings still change on a live connection
