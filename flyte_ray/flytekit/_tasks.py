"""flytekit's task decorators (``task``, ``dynamic``, ``workflow``, ``map_task``) over flyte-ray's
tasks, with flytekit's retry rule.

Rules:

* ``@task(...)`` makes an ordinary flyte-ray task (:class:`~flyte_ray.TaskTemplate`) in an
  environment of its module, so everything flyte-ray does for tasks applies: spot placement with
  ``interruptible=True``, preemptions on their own budget, checkpoints, cache, records.
* flytekit's retry rule: a task's exception is retried only when it is a
  ``FlyteRecoverableException``; any other exception fails the call at once (it reaches the
  caller as its own class, also a :class:`~flyte_ray.errors.NonRecoverableError`). Losing a node
  (a preemption) is a system retry as everywhere in flyte-ray -- never one of ``retries``. OOM
  kills and timeouts, which the platform observes rather than the task raising, use ``retries``.
* ``@workflow`` and ``@dynamic`` bodies run as a task too (a workflow: on on-demand capacity,
  with no CPU reserved, as Flyte's control plane would), so their task calls are children of
  one run with one history. Called from the driver they block and return the outputs, as
  flytekit's local execution does -- the tasks run on Ray. A workflow body is ordinary Python
  executed eagerly (flytekit compiles it into a graph of promises): values are real values.
* flytekit settings with no meaning on Ray (images, pod templates, plugin configs, labels...)
  are accepted and ignored; an unknown keyword is a ``TypeError`` naming the accepted ones.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

from ..cache_policy import Cache as _FlyteCache
from ..compat import map as _map
from ..environment import TaskEnvironment
from ..errors import (
    NonRecoverableError,
    RuntimeSystemError,
    TaskInterruptedError,
    as_non_recoverable,
)
from ..resources import Resources as _FlyteResources
from ..task import TaskTemplate
from .exceptions.user import FlyteRecoverableException

__all__ = ["Cache", "Resources", "dynamic", "map_task", "task", "workflow"]

#: flytekit task keywords accepted and ignored on Ray (no images, pods or plugins here).
IGNORED_TASK_ARGS = (
    "task_config",
    "container_image",
    "secret_requests",
    "execution_mode",
    "node_dependency_hints",
    "task_resolver",
    "docs",
    "disable_deck",
    "deck_fields",
    "pod_template",
    "pod_template_name",
    "pickle_untyped",
    "labels",
    "annotations",
    "deprecated",
    "enable_cache_rrs",
)
#: flytekit workflow keywords accepted and ignored.
IGNORED_WORKFLOW_ARGS = ("failure_policy", "on_failure", "docs", "pickle_untyped", "default_options")

#: flytekit accelerator device names (``flytekit.extras.accelerators``) -> flyte-ray GPU types.
_ACCELERATORS = {
    "a10g": "A10G",
    "a100": "A100",
    "a100-80gb": "A100 80G",
    "h100": "H100",
    "h200": "H200",
    "b200": "B200",
    "l4": "L4",
    "l40s": "L40s",
    "t4": "T4",
    "v100": "V100",
}


@dataclass(frozen=True)
class Resources:
    """flytekit's ``Resources``: ``cpu``, ``mem``, ``gpu``, ``ephemeral_storage``
    (``shared_memory`` recorded only); each a string or number, or a (request, limit) tuple."""

    cpu: Any = None
    mem: Any = None
    gpu: Any = None
    ephemeral_storage: Any = None


@dataclass(frozen=True)
class Cache:
    """flytekit's ``Cache(version=, serialize=, ignored_inputs=, salt=, policies=)``."""

    version: Optional[str] = None
    serialize: bool = False
    ignored_inputs: Union[Tuple[str, ...], str] = ()
    salt: str = ""
    policies: Any = None


def _env_name(module: str) -> str:
    """An environment name (lowercase words joined by ``-``) from a module's name."""
    words = re.findall(r"[a-z0-9]+", module.lower())
    return "-".join(words) or "flytekit"


def _pair(req: Any, lim: Any) -> Any:
    if req is None:
        return lim
    if lim is None or lim == req:
        return req
    return (req, lim)


def _resources(where: str, requests: Any, limits: Any, resources: Any, accelerator: Any, shm: Any) -> Optional[Any]:
    """flyte-ray Resources from flytekit's requests/limits/resources/accelerator, or None."""
    for name, v in (("requests", requests), ("limits", limits), ("resources", resources)):
        if v is not None and not isinstance(v, Resources):
            raise TypeError(f"{where}.{name}: expected flyte_ray.flytekit.Resources(...), got {type(v).__name__}")
    if resources is not None:
        if requests is not None or limits is not None:
            raise ValueError(f"{where}: pass resources= or requests=/limits=, not both")
        req, lim = resources, None
    else:
        req, lim = requests, limits
    if req is None and lim is None and accelerator is None and shm is None:
        return None
    r = req or Resources()
    lm = lim or Resources()

    def get(field: str) -> Any:
        a, b = getattr(r, field), getattr(lm, field)
        if isinstance(a, tuple):  # flytekit's newer (request, limit) form
            return a
        return _pair(a, b)

    gpu = get("gpu")
    if isinstance(gpu, tuple):
        gpu = gpu[0]
    if isinstance(gpu, str):
        try:
            gpu = int(gpu)
        except ValueError:
            raise ValueError(f"{where}: gpu: expected a count such as '1', got {gpu!r}") from None
    if accelerator is not None:
        gpu_type = _accelerator(where, accelerator)
        gpu = f"{gpu_type}:{gpu or 1}"
    try:
        return _FlyteResources(cpu=get("cpu"), memory=get("mem"), gpu=gpu, disk=get("ephemeral_storage"), shm=shm)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: requests/limits: {e}") from None


def _accelerator(where: str, acc: Any) -> str:
    if getattr(acc, "_partition_size", None) or getattr(acc, "partition_size", None):
        raise ValueError(
            f"{where}.accelerator: GPU partitions are not mapped from flytekit accelerators; use "
            "flyte_ray.Resources(gpu=flyte_ray.GPU(device=..., quantity=1, partition=...)) in a TaskEnvironment"
        )
    device = acc if isinstance(acc, str) else getattr(acc, "_device", None) or getattr(acc, "device", None)
    if isinstance(device, str):
        key = device.lower().replace("nvidia-", "").replace("tesla-", "")
        if key in _ACCELERATORS:
            return _ACCELERATORS[key]
    raise ValueError(
        f"{where}.accelerator: unknown device {device!r}; accepted: flytekit accelerators for "
        f"{', '.join(sorted(_ACCELERATORS))} (or their device names, e.g. 'nvidia-tesla-a100')"
    )


def _cache(where: str, cache: Any, version: str, serialize: bool, ignored: Any) -> Optional[_FlyteCache]:
    if cache is False or cache is None:
        if version or serialize or ignored:
            raise ValueError(f"{where}: cache_version/cache_serialize/cache_ignore_input_vars need cache=True")
        return None
    if cache is True:
        return _FlyteCache("auto", version_override=version or None, serialize=serialize, ignored_inputs=ignored)
    if isinstance(cache, Cache):
        return _FlyteCache(
            "auto",
            version_override=cache.version,
            serialize=cache.serialize,
            ignored_inputs=cache.ignored_inputs,
            salt=cache.salt,
            policies=cache.policies,
        )
    raise TypeError(f"{where}.cache: expected True, False or flyte_ray.flytekit.Cache(...), got {type(cache).__name__}")


def _timeout(where: str, timeout: Any) -> Any:
    if timeout in (None, 0):
        return 0
    if isinstance(timeout, (int, datetime.timedelta)) and not isinstance(timeout, bool):
        return timeout
    raise TypeError(f"{where}.timeout: expected seconds (int) or datetime.timedelta, got {type(timeout).__name__}")


def _check_ignored(where: str, extra: Dict[str, Any], ignored: Tuple[str, ...], accepted: str) -> None:
    unknown = sorted(k for k in extra if k not in ignored)
    if unknown:
        raise TypeError(
            f"{where}: unknown argument(s) {', '.join(unknown)}; accepted: {accepted}; "
            f"accepted and ignored on Ray: {', '.join(ignored)}"
        )


#: Exceptions passed through as they are: the retryable one, flyte-ray's own decisions, and the
#: platform's failures (a lost node under a nested call is a system failure, not the user's).
_PASS = (FlyteRecoverableException, NonRecoverableError, TaskInterruptedError, RuntimeSystemError)


def _flytekit_rule(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with flytekit's retry rule (module docstring)."""

    def marked(e: Exception) -> BaseException:
        out = as_non_recoverable(e)
        out.__suppress_context__ = True  # the traceback shows the user's error once
        return out

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except _PASS:
                raise
            except Exception as e:
                raise marked(e)  # noqa: B904 -- context suppressed on purpose

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _PASS:
            raise
        except Exception as e:
            raise marked(e)  # noqa: B904 -- context suppressed on purpose

    return run


_TASK_ARGS = (
    "cache, cache_version, cache_serialize, cache_ignore_input_vars, retries, interruptible, timeout, "
    "requests, limits, resources, accelerator, shared_memory, environment, enable_deck"
)


def task(
    _task_function: Optional[Callable[..., Any]] = None,
    *,
    cache: Any = False,
    cache_version: str = "",
    cache_serialize: bool = False,
    cache_ignore_input_vars: Tuple[str, ...] = (),
    retries: int = 0,
    interruptible: Optional[bool] = None,
    timeout: Any = 0,
    requests: Optional[Resources] = None,
    limits: Optional[Resources] = None,
    resources: Optional[Resources] = None,
    accelerator: Any = None,
    shared_memory: Any = None,
    environment: Optional[Dict[str, str]] = None,
    enable_deck: bool = False,
    **ignored: Any,
) -> Any:
    """flytekit's ``@task`` / ``@task(retries=3, interruptible=True, cache=True, cache_version="1")``.

    Args map onto flyte-ray's: ``retries`` (only ``FlyteRecoverableException`` uses them; see
    the module docstring), ``interruptible`` (spot capacity; the final attempt runs on
    on-demand), ``cache``/``cache_version``/``cache_serialize``/``cache_ignore_input_vars`` or
    ``cache=Cache(...)``, ``timeout`` (seconds or timedelta: the attempt's max runtime),
    ``requests``/``limits``/``resources`` (flytekit ``Resources``; Ray schedules by the request),
    ``accelerator`` (a flytekit accelerator or device name: the GPU type), ``environment``
    (env vars), ``enable_deck`` (the task keeps an HTML report: ``flyte_ray.report`` / ``Deck``).
    """
    where = "flytekit.task"
    _check_ignored(where, ignored, IGNORED_TASK_ARGS, _TASK_ARGS)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"{where}.retries: expected an int >= 0, got {retries!r}")
    if interruptible is not None and not isinstance(interruptible, bool):
        raise TypeError(f"{where}.interruptible: expected True, False or None, got {type(interruptible).__name__}")
    policy = _cache(where, cache, cache_version, cache_serialize, cache_ignore_input_vars)
    limit = _timeout(where, timeout)
    res = _resources(where, requests, limits, resources, accelerator, shared_memory)

    def wrap(fn: Callable[..., Any]) -> TaskTemplate:
        if not inspect.isfunction(fn):
            raise TypeError(f"{where}: expected a function defined with def or async def, got {fn!r}")
        env = TaskEnvironment(
            name=_env_name(fn.__module__),
            resources=res,
            env_vars=dict(environment) if environment else None,
            cache=policy if policy is not None else "disable",
        )
        return env.task(retries=retries, timeout=limit, interruptible=bool(interruptible), report=bool(enable_deck))(
            _flytekit_rule(fn)
        )

    return wrap(_task_function) if _task_function is not None else wrap


#: flytekit's ``@dynamic``: a task whose body calls tasks at run time -- in flyte-ray every task
#: may, so it is :func:`task` itself.
dynamic = task


def workflow(
    _workflow_function: Optional[Callable[..., Any]] = None,
    *,
    interruptible: bool = False,
    **ignored: Any,
) -> Any:
    """flytekit's ``@workflow``: a function that calls tasks. It runs as an on-demand task with no
    CPU reserved; its tasks run on Ray as its children (see the module docstring).

    ``interruptible=True`` (flytekit: a default for the workflow's tasks that set none) is refused
    with a ``ValueError``: flyte-ray resolves ``interruptible`` per task (``@task(interruptible=
    True)``) or per run (``with_runcontext(interruptible=True)``, which overrides every task).
    """
    where = "flytekit.workflow"
    _check_ignored(where, ignored, IGNORED_WORKFLOW_ARGS, "interruptible")
    if interruptible is not False:
        raise ValueError(
            f"{where}.interruptible: a workflow-level default is not supported; set interruptible=True on its "
            "tasks (@task(interruptible=True)) or for the whole run (flyte_ray.with_runcontext(interruptible=True))"
        )

    def wrap(fn: Callable[..., Any]) -> TaskTemplate:
        if not inspect.isfunction(fn):
            raise TypeError(f"{where}: expected a function defined with def or async def, got {fn!r}")
        env = TaskEnvironment(name=_env_name(fn.__module__), resources=_FlyteResources(cpu=0))
        return env.task(retries=0, interruptible=False)(fn)

    return wrap(_workflow_function) if _workflow_function is not None else wrap


def map_task(
    task_function: Any, concurrency: Optional[int] = None, min_success_ratio: Optional[float] = None, **ignored: Any
) -> Callable[..., list]:
    """flytekit's ``map_task(t, concurrency=..., min_success_ratio=...)(x=[...], y=[...])``: one
    call of ``t`` per index of the keyword lists (equal lengths; ``functools.partial(t, k=v)``
    fixes an input for every call), results in order.

    With ``min_success_ratio`` < 1, a failed call's result is ``None`` and the map fails only
    when fewer than that fraction succeeded (flytekit's rule)."""
    where = "flytekit.map_task"
    _check_ignored(
        where, ignored, ("metadata", "rerun_on_failure", "container_image"), "concurrency, min_success_ratio"
    )
    fixed: Dict[str, Any] = {}
    t: Any = task_function
    if isinstance(t, functools.partial):
        if t.args:
            raise TypeError(f"{where}: functools.partial must fix inputs by keyword (flytekit's rule)")
        t, fixed = t.func, dict(t.keywords)
    if not isinstance(t, TaskTemplate):
        raise TypeError(f"{where}: expected a task made with @task (or functools.partial of one), got {t!r}")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 0
    ):
        raise ValueError(f"{where}.concurrency: expected an int >= 0 or None, got {concurrency!r}")
    ratio = 1.0 if min_success_ratio is None else float(min_success_ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{where}.min_success_ratio: expected a number from 0 to 1, got {min_success_ratio!r}")

    def mapped(**lists: Any) -> list:
        if not lists:
            raise TypeError(f"{where}({t.name}): pass the mapped inputs as keyword lists, e.g. x=[1, 2, 3]")
        for k, v in lists.items():
            if not isinstance(v, (list, tuple)):
                raise TypeError(f"{where}({t.name}).{k}: expected a list, got {type(v).__name__}")
        sizes = {len(v) for v in lists.values()}
        if len(sizes) != 1:
            raise ValueError(
                f"{where}({t.name}): the input lists differ in length: { {k: len(v) for k, v in lists.items()} }"
            )
        n = sizes.pop()
        calls = iter([((), {**fixed, **{k: v[i] for k, v in lists.items()}}) for i in range(n)])
        out = list(_map.bounded(t, calls, ratio < 1.0, concurrency or 0))
        if ratio >= 1.0:
            return out
        failed = [r for r in out if isinstance(r, Exception)]
        if n and (n - len(failed)) / n < ratio:
            raise failed[0]
        return [None if isinstance(r, Exception) else r for r in out]

    mapped.__name__ = f"map_{t.short_name}"
    return mapped
