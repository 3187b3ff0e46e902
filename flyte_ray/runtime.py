"""Connecting to Ray: ``init``, ``init_from_config``, ``shutdown`` and the settings they hold.

``init()`` with no address starts an *embedded* local Ray (its own temp dir, no dashboard, quiet
logs, Ray token auth on with a token made for this process: see :mod:`flyte_ray._ray.auth`);
``"auto"``, a GCS address ``host:port`` or ``"ray://host:port"`` connects
to an existing cluster. Calling a task before any ``init`` starts the embedded cluster, as Ray
does on first use, with one log line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional, Union

import ray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._controller.controller import ensure_supervisor
from ._core.process import PROCESS
from ._core.settings import DriverSettings, Settings
from ._core.validation import check_init_args
from ._ray import ship
from ._ray.auth import ensure_token_auth
from ._ray.hosts import local_storage_error
from ._ray.node_types import AUTOSCALED_UNKNOWN, BOOTSTRAP_CONFIG, autoscaler_facts, discover, read_node_types
from ._ray.placement import cluster_view, offers
from .checkpoint import Storage
from .checkpoint.syncaio import with_aio
from .context import current_settings
from .progressbar import set_mode as set_progress_mode

__all__ = ["Settings", "init", "init_from_config", "shutdown", "current_settings", "is_initialized"]

logger = logging.getLogger("flyte_ray")
if not logger.handlers:
    _h = logging.StreamHandler()
    _h.setFormatter(logging.Formatter("[flyte-ray] %(levelname)s %(message)s"))
    logger.addHandler(_h)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class _ConfigFile(BaseModel):
    """Schema of ``init_from_config`` files (YAML or JSON), validated by pydantic."""

    model_config = ConfigDict(extra="forbid")
    address: Optional[str] = None
    storage: Optional[str] = None
    storage_options: Optional[dict[str, Any]] = None
    system_retries: int = Field(3, ge=-1)
    interruptible_failure_threshold: Optional[int] = Field(None, ge=0)
    checkpoint_keep: int = Field(2, ge=1)
    num_cpus: Optional[float] = Field(None, ge=0)
    include_dashboard: bool = False
    namespace: Optional[str] = None
    runtime_env: Optional[dict[str, Any]] = None
    supervisor: str = "auto"
    inline_under: float = Field(0.1, ge=0)
    supervisor_shards: int = Field(4, ge=1, le=64)
    storage_timeout: Optional[float] = Field(None, gt=0)
    spot_wait: Optional[float] = Field(300.0, ge=0)
    cluster_config: Optional[str] = None
    placement: str = "auto"
    ship_package: Union[bool, str] = "auto"
    allow_local_storage: bool = False
    record: Union[bool, str] = "runs"
    progress: Union[bool, str] = "auto"
    log_level: Union[int, str] = logging.WARNING

    @field_validator("supervisor")
    @classmethod
    def _sup(cls, v: str) -> str:
        if v not in ("auto", "inline"):
            raise ValueError("expected 'auto' or 'inline'")
        return v


class Session:
    """This process's connection to Ray as ``init`` made it (a process part): embedded or not,
    the address, the dashboard, the embedded cluster's temp dir."""

    reset_order = 90

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.embedded = False
        self.dashboard_url: Optional[str] = None
        self.address: Optional[str] = None
        self.temp_dir: Optional[str] = None
        self.prices: Any = None  # the PriceTable init(prices=..., cluster_config=...) made, or None

    def reset(self) -> None:
        self.embedded = False
        self.dashboard_url = self.address = self.temp_dir = None
        self.prices = None


def _session() -> Session:
    return PROCESS.part(Session)


def is_initialized() -> bool:
    """True when this process is connected to Ray."""
    return ray.is_initialized()


def is_embedded() -> bool:
    """True when flyte-ray started the Ray cluster in this process (``init()`` with no address)."""
    return _session().embedded


def dashboard_url() -> Optional[str]:
    return _session().dashboard_url


def connected_address() -> Optional[str]:
    """The address ``init`` connected to (None before ``init``)."""
    return _session().address


def init(
    address: Optional[str] = None,
    *,
    storage: Union[str, Storage, None] = None,
    storage_options: Optional[dict[str, Any]] = None,
    system_retries: int = 3,
    interruptible_failure_threshold: Optional[int] = None,
    checkpoint_keep: int = 2,
    num_cpus: Optional[float] = None,
    include_dashboard: bool = False,
    namespace: Optional[str] = None,
    runtime_env: Optional[dict[str, Any]] = None,
    supervisor: str = "auto",
    inline_under: float = 0.1,
    supervisor_shards: int = 4,
    log_level: Union[int, str] = logging.WARNING,
    storage_timeout: Optional[float] = None,
    spot_wait: Optional[float] = 300.0,
    cluster_config: Optional[str] = None,
    placement: str = "auto",
    ship_package: Union[bool, str] = "auto",
    allow_local_storage: bool = False,
    record: Union[bool, str] = "runs",
    prices: Any = None,
    progress: Union[bool, str] = "auto",
) -> Settings:
    """Connect flyte-ray to Ray and set its options.

    Args:
        address: ``None`` starts an embedded local Ray in this process; ``"auto"`` joins the
            cluster this machine belongs to; ``"host:port"`` (a GCS address) or
            ``"ray://host:port"`` (Ray client) connects to that cluster.
        storage: fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``memory://…``, a local folder)
            for checkpoints. Default: ``$FLYTE_RAY_STORAGE`` or ``~/.flyte-ray/storage``.
        storage_options: fsspec options for ``storage`` (credentials, ``endpoint_url``…).
        system_retries: system failures a call may absorb (default 3; -1 unlimited).
        interruptible_failure_threshold: system failures after which interruptible attempts
            run on on-demand capacity (default: the last allowed system attempt).
        checkpoint_keep: complete checkpoints kept per call (default 2).
        num_cpus: CPUs of the embedded cluster (default: all).
        include_dashboard: start the Ray dashboard with the embedded cluster.
        namespace, runtime_env: passed to ``ray.init``.
        supervisor: ``"auto"`` or ``"inline"`` (see :class:`Settings`).
        inline_under: seconds; short calls from spot attempts stay in their caller (see :class:`Settings`).
        supervisor_shards: the most supervising actors calls from spot attempts are spread over,
            by parent (default 4; see :class:`Settings`).
        log_level: Ray's own log level for the embedded cluster.
        storage_timeout: the time limit of each storage operation in seconds (checkpoints, the
            cache), on top of the time to move its bytes; a stalled store fails the operation with
            ``StorageTimeoutError`` naming the URL (never its credentials). Default:
            ``$FLYTE_RAY_STORAGE_TIMEOUT``, else 60. Storage clients also get connect/read
            timeouts and bounded retries (see :mod:`flyte_ray.storage`).
        spot_wait: seconds a spot attempt may wait for spot capacity before it moves to on-demand
            (recorded as ``spot_unavailable``); default 300; ``None`` waits for ever. A task's
            ``Timeout(max_queued_time=...)`` wins when set.
        cluster_config: the cluster's ``ray up`` YAML or KubeRay manifest: the node types it can
            launch. An attempt that no live node can run then waits only if one of them could
            (the log says which), and otherwise fails at once (on-demand, ``PlacementError``) or
            moves to on-demand (spot). Without it only live nodes count.
        placement: ``"auto"`` (default) places attempts by custom-resource markers or by Ray node
            labels, whichever the cluster's nodes declare; ``"markers"`` or ``"labels"`` forces one
            (see :mod:`flyte_ray._ray.placement` and ``cluster-configs/README.md``).
        ship_package: how the cluster's workers get flyte-ray (applies when ``init`` connects).
            ``"auto"``: this driver's own ``flyte_ray`` package goes to an existing cluster in the
            job's ``runtime_env`` ``py_modules`` (merged with ``runtime_env``; not when the job
            already delivers it), so the nodes need only Ray and flyte-ray's dependencies;
            ``True``: also to the embedded cluster; ``False``: never (the nodes have flyte-ray
            installed at this version). See :mod:`flyte_ray._ray.ship`.
        allow_local_storage: a local ``storage`` path on a cluster whose live nodes span more
            than one host raises ``ValueError`` (the hosts cannot see each other's files);
            ``True`` says the path is a filesystem mounted on every node.
        record: which runs keep every attempt of every call in storage (``runs/<run>/events``),
            read by ``Run.tree()``, ``flyte-ray runs`` / ``show`` / ``report``; batched off the
            call path. ``"runs"`` (default): runs started with ``flyte.run`` /
            ``with_runcontext(...).run``; ``"all"``: also every plain ``task(x)`` call made
            outside a task (each is a run of its own); ``"off"`` (or ``False``): none.
        prices: the price table for ``Run.cost()`` (a YAML path, a mapping or a ``PriceTable``;
            format: ``examples/prices.example.yaml``; default ``$FLYTE_RAY_PRICES``), merged over
            the node type → instance type map of a ``ray up`` ``cluster_config``. flyte-ray ships
            no prices: a report says which node time it could not price.
        progress: progress bars for ``map`` and ``Run.wait()``: ``"auto"`` (only where stderr is
            a terminal or in Jupyter), ``True`` or ``False``.

    If Ray is already initialized in this process (by an earlier ``init`` or by the user's own
    ``ray.init``), flyte-ray keeps that connection, applies the new settings and logs that it did;
    asking for a *different* address then raises ``RuntimeError`` (call ``shutdown()`` first), and
    passing ``num_cpus``, ``include_dashboard=True``, ``namespace`` or ``runtime_env``, which only
    apply when Ray starts, raises ``ValueError``.

    Every argument is checked first, before Ray is touched (:func:`check_init_args`).
    """
    ship_mode = ship.check_ship_package(ship_package)
    price_table = _price_table(prices, cluster_config)
    set_progress_mode(progress)
    if not isinstance(allow_local_storage, bool):
        raise TypeError(f"allow_local_storage: expected True or False, got {type(allow_local_storage).__name__}")
    args = check_init_args(
        address,
        storage=storage,
        storage_options=storage_options,
        system_retries=system_retries,
        interruptible_failure_threshold=interruptible_failure_threshold,
        checkpoint_keep=checkpoint_keep,
        num_cpus=num_cpus,
        include_dashboard=include_dashboard,
        namespace=namespace,
        runtime_env=runtime_env,
        supervisor=supervisor,
        inline_under=inline_under,
        supervisor_shards=supervisor_shards,
        log_level=log_level,
        storage_timeout=storage_timeout,
        spot_wait=spot_wait,
        node_types=_launchable(cluster_config),
        placement=placement,
        record=record,
    )
    settings, store = args.settings, args.settings.storage
    session = _session()
    with session.lock:
        connecting = not ray.is_initialized()
        if not connecting:
            current = session.address
            if address is not None and current is not None and address != current and address != "auto":
                raise RuntimeError(
                    f"init(address={address!r}): this process is already connected to Ray at {current!r}; "
                    "call flyte_ray.shutdown() first to connect elsewhere."
                )
            fixed = [
                name
                for name, given in (
                    ("num_cpus", args.num_cpus is not None),
                    ("include_dashboard", args.include_dashboard),
                    ("namespace", args.namespace is not None),
                    ("runtime_env", args.runtime_env is not None),
                )
                if given
            ]
            if fixed:
                raise ValueError(
                    f"init: {', '.join(fixed)} cannot apply: Ray is already connected in this process and "
                    "these are fixed when Ray starts; call flyte_ray.shutdown() first, or leave them out "
                    "to change only flyte-ray's settings."
                )
            logger.info(
                "Ray is already initialized%s; flyte-ray uses that connection with the new settings.",
                f" ({current})" if current else "",
            )
            if session.address is None:
                session.address = _connected_address()
        else:
            _connect(
                session,
                address,
                num_cpus=args.num_cpus,
                include_dashboard=include_dashboard,
                namespace=namespace,
                runtime_env=args.runtime_env,
                log_level=log_level,
                ship_package=ship_mode,
            )
        if store.is_local and not session.embedded and not allow_local_storage:
            _refuse_local_storage(store, disconnect=connecting)
        if cluster_config is None and not session.embedded:
            settings = dataclasses.replace(settings, node_types=_discovered_node_types())
        PROCESS.part(DriverSettings).value = settings
        session.prices = price_table
        cluster_view().embedded = session.embedded
        cluster_view().clear_warnings()
        if supervisor == "auto":
            ensure_supervisor(settings.placement, settings.supervisor_shards)
        if store.url.startswith("memory://"):
            logger.warning(
                "storage %r: memory:// lives inside one process, and every attempt runs in its own Ray "
                "worker process, so attempts will not see each other's checkpoints. Use a folder, "
                "s3:// or gs:// for tasks; memory:// suits flyte_ray.Checkpoint used in one process.",
                store.url,
            )
    return settings


CLIENT_CONNECT_TRIES = 3


def _init_remote(address: str, kwargs: dict[str, Any]) -> Any:
    """``ray.init(address=...)``; a ``ray://`` connection whose server-side start fails (Ray
    2.60's client server often fails a connection's first start: ray-project/ray#63202, and
    "Initialization failure from server") is tried again, up to :data:`CLIENT_CONNECT_TRIES`
    times, 1 s apart, with a log line each time."""
    for attempt in range(1, CLIENT_CONNECT_TRIES + 1):
        try:
            return ray.init(address=address, **kwargs)
        except ConnectionAbortedError as e:
            if not address.startswith("ray://") or attempt == CLIENT_CONNECT_TRIES:
                raise
            logger.warning("Ray client connection to %s failed at its server (%s); trying again", address, e)
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001 - nothing was connected
                pass
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _price_table(prices: Any, cluster_config: Optional[str]) -> Any:
    """The driver's price table: ``prices`` (or ``$FLYTE_RAY_PRICES``) over the node type →
    instance type map of a ``ray up`` ``cluster_config``; None when neither gives anything.
    Raises ``ValueError`` naming the field of a bad table, before Ray is touched."""
    from .report.prices import PriceTable, load_prices

    if prices is None and os.environ.get("FLYTE_RAY_PRICES"):
        prices = os.environ["FLYTE_RAY_PRICES"]
    table = load_prices(prices) if prices is not None else None
    if cluster_config is not None and isinstance(cluster_config, (str, os.PathLike)) and os.path.exists(cluster_config):
        try:
            base = PriceTable.from_cluster_config(cluster_config)
        except ValueError:  # a KubeRay manifest names no instance types
            base = None
        if base is not None:
            table = base.merged(table) if table is not None else base
    return table


def current_prices() -> Any:
    """The price table ``init`` set up (None when none)."""
    return _session().prices


def _launchable(cluster_config: Optional[str]) -> tuple:
    """``(name, what it offers)`` of each node type the config can launch (empty without a config):
    its resources, and its labels as ``key=value`` entries (:func:`~flyte_ray._ray.placement.offers`)."""
    if cluster_config is None:
        return ()
    if not isinstance(cluster_config, (str, os.PathLike)):
        raise TypeError(
            f"cluster_config: expected the path of a ray up YAML or KubeRay manifest, got "
            f"{type(cluster_config).__name__}"
        )
    if not os.path.exists(cluster_config):
        raise FileNotFoundError(f"cluster_config: no file at {os.fspath(cluster_config)!r}")
    types, _head = read_node_types(os.fspath(cluster_config))
    return _launchable_offers(types)


def _launchable_offers(types: list) -> tuple:
    """``Settings.node_types`` of node types as :func:`read_node_types` lists them."""
    return tuple((name, offers(res, labels)) for name, res, launchable, labels in types if launchable)


def _discovered_node_types() -> tuple:
    """The launchable node types of the cluster just connected to, without ``cluster_config``
    (see :mod:`flyte_ray._ray.node_types`: ``$FLYTE_RAY_CLUSTER_CONFIG``, then what the cluster's
    autoscaler says or ``ray up``'s bootstrap config; ``()`` for a cluster without autoscaler)."""
    autoscaled, groups = autoscaler_facts()
    bootstrap = os.path.expanduser(BOOTSTRAP_CONFIG)
    where, types = discover(
        os.environ.get("FLYTE_RAY_CLUSTER_CONFIG") or None,
        autoscaled,
        groups,
        bootstrap if os.path.exists(bootstrap) else None,
    )
    logger.info("flyte-ray: launchable node types from %s", where)
    if types == AUTOSCALED_UNKNOWN:
        logger.warning(
            "flyte-ray: this cluster has an autoscaler but flyte-ray cannot see its node types, so work that "
            "no live node offers waits for it (spot attempts move to on-demand after spot_wait). Pass "
            "init(cluster_config=...) or set FLYTE_RAY_CLUSTER_CONFIG to the cluster's config so that work no "
            "node type offers fails at once."
        )
        return AUTOSCALED_UNKNOWN
    return _launchable_offers(types)


def _connected_address() -> Optional[str]:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # Ray client mode has no gcs_address
        return None


def _connect(
    session: Session,
    address: Optional[str],
    *,
    num_cpus,
    include_dashboard,
    namespace,
    runtime_env,
    log_level,
    ship_package: ship.ShipMode = "auto",
) -> None:
    kwargs: dict[str, Any] = {"namespace": namespace, "logging_level": log_level}
    # flyte-ray travels to the cluster's workers in the job's runtime_env (py_modules) unless the
    # nodes are asked to have it: see flyte_ray._ray.ship.
    with ship.prepared(ship_package, embedded=address is None, runtime_env=runtime_env) as plan:
        kwargs["runtime_env"] = plan.runtime_env
        if address is None:
            # Embedded: a private temp dir (Ray's default one is shared by every cluster on the
            # machine), no dashboard unless asked (it costs ~1 GiB), and token auth on with a token
            # made for this process unless the user chose a mode (Ray listens on every interface:
            # see flyte_ray._ray.auth).
            ensure_token_auth()
            temp_dir = tempfile.mkdtemp(prefix="flyte-ray-")
            ctx = ray.init(num_cpus=num_cpus, include_dashboard=include_dashboard, _temp_dir=temp_dir, **kwargs)
            session.embedded, session.temp_dir = True, temp_dir
            session.address = ctx.address_info.get("gcs_address")  # type: ignore[attr-defined]  # RayContext
        else:
            ctx = _init_remote(address, kwargs)
            session.embedded, session.address = False, address
    if plan.shipped:
        logger.debug("flyte_ray %s ships to the cluster's workers (runtime_env py_modules)", ship.package_dir())
    url = getattr(ctx, "dashboard_url", None)
    session.dashboard_url = (url if url.startswith("http") else f"http://{url}") if url else None


def _refuse_local_storage(store: Storage, *, disconnect: bool) -> None:
    """A local folder on a cluster whose live nodes span several hosts raises ``ValueError`` (see
    :mod:`flyte_ray._ray.hosts`), after disconnecting when this ``init`` call connected, so that
    calling ``init`` again with shared storage starts afresh."""
    try:
        nodes = ray.nodes()
    except Exception:  # the cluster view is best-effort here: Ray reports its own errors later
        return
    problem = local_storage_error(store.url, nodes)
    if problem is not None:
        if disconnect:
            shutdown()
        raise ValueError(problem)


def ensure_init() -> None:
    """Start the embedded cluster on first use, as Ray does, saying so once."""
    if ray.is_initialized():
        return
    with _session().lock:
        if not ray.is_initialized():
            logger.info(
                "No flyte_ray.init() call: starting an embedded local Ray cluster "
                "(call flyte_ray.init(address=...) to use an existing one)."
            )
            init()


def shutdown() -> None:
    """Disconnect from Ray; stops the embedded cluster if flyte-ray started it."""
    session = _session()
    with session.lock:
        temp_dir = session.temp_dir if session.embedded else None
        try:
            PROCESS.reset()  # every part: replica pools first, while Ray is still connected
        finally:
            if ray.is_initialized():
                ray.shutdown()
            if temp_dir:
                shutil.rmtree(temp_dir, ignore_errors=True)


def _find_config(path: Union[str, os.PathLike, None]) -> Optional[Path]:
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"init_from_config: no config file at {str(p)!r}")
        return p
    env = os.environ.get("FLYTE_RAY_CONFIG")
    candidates = [Path(env)] if env else []
    candidates += [
        Path.cwd() / "flyte-ray.yaml",
        Path.cwd() / ".flyte-ray.yaml",
        Path.home() / ".flyte-ray" / "config.yaml",
    ]
    return next((c for c in candidates if c.exists()), None)


#: flyte-sdk's ``init_from_config`` arguments that mean nothing on Ray: accepted (so flyte-sdk
#: code runs unchanged) and ignored, with one debug line.
SDK_IGNORED = ("images", "sync_local_sys_paths")


def init_from_config(
    path_or_config: Union[str, os.PathLike, None] = None,
    root_dir: Union[str, os.PathLike, None] = None,
    log_level: Union[int, str, None] = None,
    **overrides: Any,
) -> Settings:
    """``init`` with settings read from a YAML or JSON file (keys: the ``init`` arguments).

    With no path: ``$FLYTE_RAY_CONFIG``, ``./flyte-ray.yaml``, ``./.flyte-ray.yaml``,
    ``~/.flyte-ray/config.yaml``; when none exists it behaves like ``init()``. Keyword
    arguments override the file. ``await init_from_config.aio(...)`` from async code.

    flyte-sdk's arguments: ``log_level`` is applied (Ray's log level, as ``init``);
    ``root_dir`` (the project's root) goes on this driver's ``sys.path`` so its task modules
    import, and Ray's workers import them the same way (run from that folder, or ship it with
    ``runtime_env={"working_dir": ...}``); ``images`` and ``sync_local_sys_paths`` are accepted
    and ignored (container images are not how Ray ships code). A flyte-sdk ``Config`` object is
    refused with a ``TypeError``: pass a file path.
    """
    path = overrides.pop("path", path_or_config)  # the keyword of earlier flyte-ray versions
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"init_from_config: expected the path of a YAML or JSON file of init settings, got "
            f"{type(path).__name__} (a flyte-sdk Config object does not apply on Ray)"
        )
    for name in SDK_IGNORED:
        if name in overrides:
            overrides.pop(name)
            logger.debug("init_from_config(%s=...): accepted for flyte-sdk code, ignored on Ray", name)
    if log_level is not None:
        overrides["log_level"] = log_level
    if root_dir is not None:
        root = os.fspath(root_dir)
        if not os.path.isdir(root):
            raise ValueError(f"init_from_config.root_dir: expected an existing folder, got {root!r}")
        root = os.path.abspath(root)
        if root not in sys.path:
            sys.path.insert(0, root)
    p = _find_config(path)
    data: dict[str, Any] = {}
    if p is not None:
        text = p.read_text()
        if p.suffix == ".json":
            data = json.loads(text or "{}")
        else:
            import yaml

            data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"init_from_config: {p} must hold a mapping of init settings, got {type(data).__name__}")
    data.update(overrides)
    try:
        cfg = _ConfigFile(**data)
    except ValidationError as e:
        # Field names and pydantic's messages only: str(e) would repeat each bad value, and a
        # value here may be a secret (storage_options, runtime_env).
        problems = "\n".join(
            f"  {'.'.join(map(str, err['loc'])) or '(file)'}: {err['msg']}"
            for err in e.errors(include_input=False, include_url=False, include_context=False)
        )
        raise ValueError(f"init_from_config: invalid settings in {p or 'arguments'}:\n{problems}") from None
    return init(**cfg.model_dump())


with_aio(init)
with_aio(init_from_config)
