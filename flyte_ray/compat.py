"""Flyte 2 names that have no Ray machinery of their own: stand-ins, so that Flyte's documented
task examples run after ``import flyte_ray as flyte``.

Every name here says in its docstring exactly what it does on Ray. In short:

=====================  ==========================================================================
``Image``              records the build you asked for; builds nothing. On Ray the cluster's
                       image (or ``init(runtime_env=...)``) provides the code and packages;
                       ``Image.runtime_env()`` turns the recorded pip packages and env vars into
                       such a runtime_env if you want to apply them.
``group(name)``        a context manager that names a block of calls; kept in a ContextVar
                       (``current_group()``, a flyte-ray addition), not sent to Ray or shown
                       anywhere else.
``trace``              records each call's result with the task call; a retried attempt replays
                       it instead of running the function again (:mod:`flyte_ray.replay`).
``logger``             the ``logging.Logger`` named ``"flyte_ray.user"``: INFO by default, one
                       stream handler that prefixes each line with the task's action.
``Secret``             recorded only; flyte-ray injects no secrets.
``Link``               a base class for log links; recorded only, no UI shows them.
``PodTemplate``        recorded only; Ray has no pods.
``map``                ``flyte_ray.run.map`` plus ``map.aio(...)`` (an async iterator), the
                       ``concurrency`` / ``group_name`` keywords of Flyte's ``flyte.map`` and
                       ``functools.partial`` of a task. ``return_exceptions`` still defaults to
                       ``False`` (Flyte: ``True``).
``version()``          ``flyte_ray.__version__``.
=====================  ==========================================================================
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar, Union

from ._core.validation import secret_repr
from ._version import __version__

__all__ = [
    "Image",
    "Link",
    "PodTemplate",
    "Secret",
    "SecretRequest",
    "current_group",
    "group",
    "logger",
    "map",
    "trace",
    "version",
]

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------------------------------- version
def version() -> str:
    """The flyte-ray version (``flyte_ray.__version__``); Flyte's ``flyte.version()`` returns the SDK's."""
    return __version__


# ---------------------------------------------------------------------------------------- Image
@dataclass(frozen=True)
class ImageLayer:
    """One recorded builder call of an :class:`Image`: the method's name and its arguments."""

    op: str
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.op}({', '.join(parts)})"


def _builder(op: str, doc: str) -> Callable[..., "Image"]:
    def method(self: "Image", *args: Any, **kwargs: Any) -> "Image":
        return self._with(ImageLayer(op, args, kwargs))

    method.__name__ = method.__qualname__ = op
    method.__doc__ = f"{doc}\n\nOn Ray: recorded on the returned copy only; nothing is built or installed."
    return method


def _constructor(op: str, doc: str) -> Any:
    def make(cls: type, *args: Any, **kwargs: Any) -> "Image":
        name = kwargs.get("name")
        return cls(base=ImageLayer(op, args, kwargs), name=name if isinstance(name, str) else None)

    make.__name__ = make.__qualname__ = op
    make.__doc__ = f"{doc}\n\nOn Ray: returns a recording Image; nothing is pulled or built."
    return classmethod(make)


@dataclass(frozen=True)
class Image:
    """A *recording* stand-in for Flyte's container image builder.

    On Ray nothing is built, pulled or pushed, and a task environment's ``image`` is not sent to
    Ray: every attempt runs in the worker processes of the cluster you connected to, so the
    cluster's own image (or a Ray ``runtime_env`` given to ``flyte_ray.init(runtime_env=...)``)
    must already provide your code and packages. Each builder method (``from_debian_base``,
    ``from_base``, ``from_ref_name``, ``from_uv_script``, ``from_pixi_script``,
    ``from_dockerfile``, ``clone``, ``with_pip_packages``, ``with_requirements``,
    ``with_apt_packages``, ``with_commands``, ``with_env_vars``, ``with_source_folder``,
    ``with_source_file``, ``with_workdir``, ``with_uv_project``, ``with_poetry_project``,
    ``with_pixi_project``, ``with_code_bundle``, ``with_dockerignore``, ``with_local_v2``, ...)
    returns a new ``Image`` that records what was asked (``base`` and ``layers``), so an
    environment's definition stays readable and comparable.

    :meth:`runtime_env` translates the parts Ray can apply (pip packages, requirements files,
    env vars, working dir) into a ``runtime_env`` dict you may pass to ``flyte_ray.init``;
    apt packages, commands and Dockerfiles have no Ray equivalent and are left out.
    """

    base: Optional[ImageLayer] = None
    layers: Tuple[ImageLayer, ...] = ()
    name: Optional[str] = None

    def _with(self, layer: ImageLayer) -> "Image":
        return Image(base=self.base, layers=self.layers + (layer,), name=self.name)

    def __repr__(self) -> str:
        chain = ".".join(repr(x) for x in ((self.base,) if self.base else ()) + self.layers)
        return f"Image({chain or 'default'})"

    # --- constructors (classmethods in Flyte)
    from_debian_base = _constructor("from_debian_base", "Flyte's default Debian-based image.")
    from_base = _constructor("from_base", "An existing image by URI.")
    from_ref_name = _constructor("from_ref_name", "An image named in Flyte's configuration.")
    from_uv_script = _constructor("from_uv_script", "An image built from a uv script's inline dependencies.")
    from_pixi_script = _constructor("from_pixi_script", "An image built from a pixi script.")
    from_dockerfile = _constructor("from_dockerfile", "An image built from a Dockerfile.")

    # --- layers
    with_pip_packages = _builder("with_pip_packages", "Add pip packages.")
    with_requirements = _builder("with_requirements", "Add a requirements file.")
    with_apt_packages = _builder("with_apt_packages", "Add apt packages.")
    with_commands = _builder("with_commands", "Run shell commands while building.")
    with_env_vars = _builder("with_env_vars", "Set environment variables.")
    with_source_folder = _builder("with_source_folder", "Copy a source folder into the image.")
    with_source_file = _builder("with_source_file", "Copy source files into the image.")
    with_workdir = _builder("with_workdir", "Set the working directory.")
    with_uv_project = _builder("with_uv_project", "Install a uv project.")
    with_poetry_project = _builder("with_poetry_project", "Install a poetry project.")
    with_pixi_project = _builder("with_pixi_project", "Install a pixi project.")
    with_code_bundle = _builder("with_code_bundle", "Bundle code into the image.")
    with_dockerignore = _builder("with_dockerignore", "Use a .dockerignore file.")
    with_local_v2 = _builder("with_local_v2", "Install the local flyte SDK build.")
    with_local_v2_plugins = _builder("with_local_v2_plugins", "Install local flyte plugin builds.")
    with_local_rs_controller = _builder("with_local_rs_controller", "Install the local Rust controller build.")

    def clone(self, **changes: Any) -> "Image":
        """A copy with a new ``name`` (and whatever else Flyte's ``clone`` takes, e.g. ``addl_layer``).

        On Ray: recorded only (the changes become a ``clone`` layer; ``name`` renames the copy).
        """
        name = changes.get("name")
        img = self._with(ImageLayer("clone", (), changes))
        return Image(base=img.base, layers=img.layers, name=name if isinstance(name, str) else self.name)

    @property
    def uri(self) -> Optional[str]:
        """The image reference for ``from_base(uri)`` / ``from_ref_name(name)``; otherwise ``None``
        (nothing is built, so there is no tag)."""
        if self.base is not None and self.base.op in ("from_base", "from_ref_name") and self.base.args:
            return str(self.base.args[0])
        return None

    def runtime_env(self) -> Dict[str, Any]:
        """The parts of this recording Ray can apply, as a Ray ``runtime_env`` dict.

        ``with_pip_packages`` / ``with_requirements`` → ``"pip"``, ``with_env_vars`` →
        ``"env_vars"``, ``with_source_folder`` / ``with_workdir`` → ``"working_dir"`` (the last
        one). Nothing is applied unless you pass the result to ``flyte_ray.init(runtime_env=...)``.
        """
        pip: List[str] = []
        env: Dict[str, str] = {}
        out: Dict[str, Any] = {}
        for layer in self.layers:
            if layer.op == "with_pip_packages":
                pip.extend(str(p) for p in layer.args)
            elif layer.op == "with_requirements":
                path = layer.args[0] if layer.args else layer.kwargs.get("file")
                if path is not None:
                    pip.extend(
                        line.strip()
                        for line in open(path).read().splitlines()
                        if line.strip() and not line.strip().startswith("#")
                    )
            elif layer.op == "with_env_vars":
                env.update({str(k): str(v) for k, v in dict(*layer.args, **layer.kwargs).items()})
            elif layer.op in ("with_source_folder", "with_workdir"):
                src = layer.args[0] if layer.args else layer.kwargs.get("src", layer.kwargs.get("workdir"))
                if src is not None:
                    out["working_dir"] = os.fspath(src)
        if pip:
            out["pip"] = pip
        if env:
            out["env_vars"] = env
        return out


# ---------------------------------------------------------------------------------------- Secret, Link, PodTemplate
@dataclass(frozen=True)
class Secret:
    """Flyte's secret request, *recorded only*: flyte-ray does not fetch or inject secrets (no
    environment variable, no file is created). Give attempts their credentials the way your Ray
    cluster does (node instance roles, env vars in the cluster's image or a runtime_env).

    Attributes mirror Flyte's: ``key``, ``group``, ``mount``, ``as_env_var``. A ``Secret`` names
    a secret and never holds its value; its ``repr`` shows the names (and ``mount`` only when it is
    a path), never an arbitrary object. Environments check their secrets when defined (a
    non-empty key, ``as_env_var`` a valid variable name).
    """

    key: str
    group: Optional[str] = None
    mount: Any = None
    as_env_var: Optional[str] = None

    def __repr__(self) -> str:
        return secret_repr(self)


#: Flyte's accepted forms of a secrets argument: a key, a ``Secret``, or a list of them.
SecretRequest = Union[str, Secret, List[Union[str, Secret]]]


class Link:
    """Base class of Flyte's task log links, *recorded only*: on Ray there is no Flyte UI to show them.

    Subclasses set ``name`` (and optionally ``icon_uri``) and implement ``get_link``; flyte-ray
    never calls it.
    """

    name: str = ""
    icon_uri: Optional[str] = ""

    def get_link(
        self,
        run_name: str,
        project: str,
        domain: str,
        context: Dict[str, str],
        parent_action_name: str,
        action_name: str,
        pod_name: str,
        **kwargs: Any,
    ) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class PodTemplate:
    """Flyte's Kubernetes pod template, *recorded only*: Ray schedules tasks onto its own worker
    processes, so there is no pod to customise. flyte-ray's ``TaskEnvironment`` does not take a
    ``pod_template`` argument; this class exists so that modules defining one still import."""

    pod_spec: Any = None
    primary_container_name: str = "primary"
    labels: Optional[Dict[str, str]] = None
    annotations: Optional[Dict[str, str]] = None


# ---------------------------------------------------------------------------------------- group
_GROUP: contextvars.ContextVar[Tuple[str, ...]] = contextvars.ContextVar("flyte_ray_group", default=())


@contextlib.contextmanager
def group(name: str) -> Iterator[None]:
    """Name a block of task calls, as Flyte's ``with flyte.group("name"):`` does.

    On Ray this only records the name, nested blocks as a path, in a ContextVar of the current
    process (read it with :func:`current_group`); calls made inside the block run exactly as
    outside it, and the group is not sent to Ray, stored with the run, or shown anywhere.
    Works inside and outside tasks, in sync and async code.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"group: expected a non-empty string, got {name!r}")
    token = _GROUP.set(_GROUP.get() + (name,))
    try:
        yield
    finally:
        _GROUP.reset(token)


def current_group() -> Optional[str]:
    """The enclosing :func:`group` names joined by ``"/"``, or ``None``: a flyte-ray addition (Flyte
    has no such call). Per process and context: a task running in another Ray worker does not see
    the caller's groups."""
    names = _GROUP.get()
    return "/".join(names) if names else None


# ---------------------------------------------------------------------------------------- trace
def trace(func: F) -> F:
    """Flyte's ``@flyte.trace``: inside a task, each call's result is recorded with the task call
    and a retried attempt gets it back instead of running the function again, so a task resumes
    after its last finished traced step (flyte-sdk's behaviour; the rules, storage and trust are
    in :mod:`flyte_ray.replay`). Outside a task the function just runs. Sync and ``async``
    functions are recorded; (async) generators run unchanged. The wrapper keeps the function's
    name, signature and kind (``inspect.iscoroutinefunction`` etc.).
    """
    from .replay import replayed

    if not callable(func):
        raise TypeError(f"trace: expected a function, got {func!r}")
    wrapper: Any = replayed(func)
    if wrapper is func:  # a generator: run unchanged, but marked as traced
        if inspect.isasyncgenfunction(func):

            @functools.wraps(func)
            async def agen(*args: Any, **kwargs: Any) -> Any:
                async for item in func(*args, **kwargs):
                    yield item

            wrapper = agen
        else:

            @functools.wraps(func)
            def gen(*args: Any, **kwargs: Any) -> Any:
                return (yield from func(*args, **kwargs))

            wrapper = gen
    wrapper.__flyte_ray_trace__ = True
    return wrapper


# ---------------------------------------------------------------------------------------- logger
class _ActionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from .context import ctx

        c = ctx()
        record.flyte_action = c.action if c is not None else "-"
        return True


def _user_logger() -> logging.Logger:
    lg = logging.getLogger("flyte_ray.user")
    if not getattr(lg, "_flyte_ray_configured", False):
        level = os.environ.get("FLYTE_RAY_USER_LOG_LEVEL", "INFO").upper()
        lg.setLevel(int(level) if level.isdigit() else logging.getLevelName(level))
        h = logging.StreamHandler()
        h.addFilter(_ActionFilter())
        h.setFormatter(logging.Formatter("[%(flyte_action)s] %(levelname)s %(message)s"))
        lg.addHandler(h)
        lg.propagate = False
        lg._flyte_ray_configured = True  # type: ignore[attr-defined]
    return lg


#: Flyte's ``flyte.logger`` (the user logger): ``logging.getLogger("flyte_ray.user")``. Level INFO
#: (``$FLYTE_RAY_USER_LOG_LEVEL`` changes it); one stream handler on stderr whose lines start with
#: ``[<task action>]`` (``-`` outside tasks); not propagated to the root logger. Inside a task it
#: runs in the Ray worker, and Ray forwards worker output to the driver's console.
logger: logging.Logger = _user_logger()


# ---------------------------------------------------------------------------------------- map
class _Map:
    """``flyte_ray.map`` with Flyte's extras: ``map(task, *iterables, ...)`` and ``map.aio(...)``.

    ``map(task, xs, ...)`` runs ``task`` over the zipped iterables on Ray and yields the results
    in input order (from sync code: a driver, a sync task). ``map.aio(task, xs, ...)`` is the same
    as an async iterator for ``async for`` inside async tasks (or any event loop).

    ``task`` may be a ``functools.partial`` of a task: its fixed arguments go to every call.

    Keywords:
        return_exceptions: yield a failed call's exception instead of raising it. The default is
            ``False`` (as ``flyte_ray.map`` always was); Flyte's default is ``True``.
        concurrency: at most this many calls in flight (0: all at once, as in Flyte).
        group_name: the :func:`group` the calls are made in (default: none).
    """

    def __call__(
        self,
        task: Any,
        *iterables: Iterable[Any],
        return_exceptions: bool = False,
        concurrency: int = 0,
        group_name: Optional[str] = None,
    ) -> Iterator[Any]:
        from .run import map as run_map

        _check_concurrency(concurrency)
        if not concurrency and group_name is None and not isinstance(task, functools.partial):
            return run_map(task, *iterables, return_exceptions=return_exceptions)
        task, pargs, pkw = _unpartial(task, "map")
        calls = ((pargs + tuple(a), dict(pkw)) for a in zip(*iterables))
        return self.bounded(task, calls, return_exceptions, concurrency, group_name)

    @staticmethod
    def bounded(
        task: Any,
        calls: Iterator[Tuple[tuple, dict]],
        return_exceptions: bool,
        concurrency: int,
        group_name: Optional[str] = None,
    ) -> Iterator[Any]:
        """``task(*args, **kwargs)`` for each ``(args, kwargs)`` of ``calls``, at most
        ``concurrency`` in flight (0: all), results in input order (also flytekit's map_task)."""
        from .run import _result, _submit

        scope = group(group_name) if group_name else contextlib.nullcontext()
        window: collections.deque = collections.deque()

        def submit() -> bool:
            nxt = next(calls, None)
            if nxt is None:
                return False
            with scope:
                window.append(_submit(task._make_call(nxt[0], nxt[1], None)))
            return True

        try:
            while (not concurrency or len(window) < concurrency) and submit():
                pass
            while window:
                f = window.popleft()
                try:
                    value = _result(f)
                except Exception as e:  # noqa: BLE001
                    if not return_exceptions:
                        raise
                    value = e
                submit()
                yield value
        finally:
            for f in window:
                f.cancel()

    async def aio(
        self,
        task: Any,
        *iterables: Iterable[Any],
        return_exceptions: bool = False,
        concurrency: int = 0,
        group_name: Optional[str] = None,
    ) -> AsyncIterator[Any]:
        """``async for r in flyte_ray.map.aio(task, xs, concurrency=3): ...``: results in input order.

        Calls run on Ray as ``task.aio(...)`` would run them (their identities are fixed in input
        order); with ``concurrency`` > 0 at most that many are in flight. Leaving the loop early
        cancels the calls still running.
        """
        task, pargs, pkw = _unpartial(task, "map.aio")
        _check_concurrency(concurrency)
        sem = asyncio.Semaphore(concurrency) if concurrency else None

        async def bounded(coro: Any) -> Any:
            if sem is None:
                return await coro
            async with sem:
                return await coro

        with group(group_name) if group_name else contextlib.nullcontext():
            # task.aio fixes each call's identity now, in input order; the semaphore only
            # delays when a call starts.
            coros = [task.aio(*pargs, *a, **pkw) for a in zip(*iterables)]
            futures = [asyncio.ensure_future(bounded(c)) for c in coros]
        try:
            for f in futures:
                try:
                    value = await f
                except Exception as e:  # noqa: BLE001
                    if not return_exceptions:
                        raise
                    value = e
                yield value
        finally:
            pending = [f for f in futures if not f.done()]
            for f in pending:
                f.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            for c in coros:
                c.close()  # a call cancelled before it started: no "never awaited" warning

    def __repr__(self) -> str:
        return "<flyte_ray.map>"


def _unpartial(task: Any, where: str) -> Tuple[Any, tuple, dict]:
    """``(task, fixed positional args, fixed keyword args)`` from a task or a ``functools.partial`` of one."""
    from .task import TaskTemplate

    pargs: tuple = ()
    pkw: dict = {}
    if isinstance(task, functools.partial):
        task, pargs, pkw = task.func, tuple(task.args), dict(task.keywords)
    if not isinstance(task, TaskTemplate):
        raise TypeError(f"{where}: expected a task (made with @env.task) or functools.partial of one, got {task!r}")
    return task, pargs, pkw


def _check_concurrency(concurrency: Any) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 0:
        raise ValueError(f"map: concurrency must be an int >= 0 (0: all at once), got {concurrency!r}")


#: ``flyte_ray.map``: see :class:`_Map`.
map = _Map()
