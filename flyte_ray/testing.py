"""A real multi-node Ray cluster on one machine, with spot / on-demand / queue / GPU nodes and
real preemptions — for testing how your tasks behave when capacity disappears.

::

    from flyte_ray.testing import LocalCluster

    with LocalCluster() as cluster:                   # head + spot-1 + ondemand-1 (1 CPU each)
        cluster.add_node("gpu-spot", market="spot", gpus=1, accelerator="A100")
        ... call tasks ...
        cluster.preempt("spot-1", notice_s=2)         # drain (reason PREEMPTION), wait, remove

Each node is a real raylet (``ray.cluster_utils.Cluster``); a preemption drains the node through
the GCS with reason ``PREEMPTION`` — as a cloud's spot notice handler would — and then removes it,
so running work dies exactly as it does on a real spot fleet. GPUs are declared, not real: a
"GPU" node offers Ray's ``GPU`` and ``accelerator_type:<T>`` resources, enough to test placement.

Nodes follow either placement convention (see :mod:`flyte_ray._ray.placement`):
``placement="markers"`` (default) declares ``spot`` / ``ondemand`` and ``queue:<name>`` resources;
``placement="labels"`` declares Ray node labels instead — the market through Ray's own path (the
node starts with ``RAY_NODE_MARKET_TYPE`` = ``spot`` / ``on-demand``, so Ray sets
``ray.io/market-type``), ``flyte-ray.io/queue-<name>`` = ``true`` per queue, and on GPU nodes
``ray.io/accelerator-type`` next to the ``accelerator_type:<T>`` resource, as Ray does on a real
GPU node; ``"both"`` declares both. ``LocalCluster(node_placement="labels")`` sets it for the head
and every node that does not choose; ``labels={...}`` adds labels of your own.

In pytest, use the ``local_cluster`` fixture (add ``pytest_plugins = ["flyte_ray.testing"]`` to
your ``conftest.py``), or build a ``LocalCluster`` in your own fixture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Union

from ._ray.auth import ensure_token_auth
from .resources import GPU

__all__ = ["NodeSpec", "LocalCluster", "local_cluster", "DEFAULT_NODES"]

MARKER_COUNT = 1000  # nodes declare many markers; attempts request 0.001 of each
_CONVENTIONS = ("markers", "labels", "both")
_ENV_LOCK = threading.Lock()  # RAY_NODE_MARKET_TYPE is read from this process's environment


@dataclass(frozen=True)
class NodeSpec:
    """A node of a :class:`LocalCluster`.

    Args:
        name: your name for the node (``"spot-1"``).
        market: ``"spot"``, ``"ondemand"`` or ``None`` (declares neither).
        queues: queues it serves (``queue:<name>`` resources); ``()`` serves none.
        cpus: CPUs it offers.
        gpus: (fake) GPUs it offers.
        accelerator: flyte GPU type of those GPUs (``"A100"``, ``"T4"`` …).
        resources: extra custom resources (e.g. ``{"gpu-partition:A100:1g.5gb": 7}``).
        memory: bytes of Ray ``memory`` resource to declare (default: Ray's).
        env: environment variables for the node's raylet, e.g. ``{"RAY_memory_usage_threshold":
            "0.3"}`` to make Ray's OOM killer act early on this node only.
        placement: how it declares its market, queues and GPU type: ``"markers"`` (custom
            resources), ``"labels"`` (Ray node labels), ``"both"``; ``None``: the cluster's
            ``node_placement``.
        labels: extra Ray node labels.
    """

    name: str
    market: Optional[str] = "ondemand"
    queues: Sequence[str] = ("default",)
    cpus: float = 1
    gpus: int = 0
    accelerator: Optional[str] = None
    resources: Dict[str, float] = field(default_factory=dict)
    memory: Optional[int] = None
    env: Dict[str, str] = field(default_factory=dict)
    placement: Optional[str] = None
    labels: Dict[str, str] = field(default_factory=dict)

    def convention(self, default: str = "markers") -> str:
        p = self.placement or default
        if p not in _CONVENTIONS:
            raise ValueError(f"NodeSpec.placement: expected 'markers', 'labels', 'both' or None, got {p!r}")
        return p

    def ray_resources(self, default: str = "markers") -> Dict[str, float]:
        res: Dict[str, float] = {}
        if self.market is not None and self.market not in ("spot", "ondemand"):
            raise ValueError(f"NodeSpec.market: expected 'spot', 'ondemand' or None, got {self.market!r}")
        if self.convention(default) != "labels":
            if self.market is not None:
                res[self.market] = MARKER_COUNT
            for q in self.queues:
                res[f"queue:{q}"] = MARKER_COUNT
        if self.accelerator is not None:
            acc = GPU(self.accelerator).ray_accelerator_type
            res[f"accelerator_type:{acc}"] = 1
        res[f"flyte-ray-node:{self.name}"] = 1  # lets tests pin work to a named node
        res.update(self.resources)
        return res

    def ray_labels(self, default: str = "markers") -> Dict[str, str]:
        """Its node labels, but for ``ray.io/market-type``, which Ray sets from the environment
        variable :meth:`market_env` gives."""
        from ._ray import placement as pl

        labels: Dict[str, str] = {}
        if self.convention(default) != "markers":
            labels.update({pl.queue_label(q): "true" for q in self.queues})
            if self.accelerator is not None:
                labels[pl.ACCELERATOR_LABEL] = str(GPU(self.accelerator).ray_accelerator_type)
        labels.update(self.labels)
        return labels

    def market_env(self, default: str = "markers") -> Optional[str]:
        """The value of ``RAY_NODE_MARKET_TYPE`` to start it with (label conventions only)."""
        if self.market is None or self.convention(default) == "markers":
            return None
        from ._ray.placement import MARKET_LABEL_VALUES

        return MARKET_LABEL_VALUES[self.market]


DEFAULT_NODES = (NodeSpec("spot-1", market="spot"), NodeSpec("ondemand-1", market="ondemand"))


class LocalCluster:
    """A real local multi-node Ray cluster with named spot / on-demand / queue / GPU nodes.

    Args:
        nodes: the worker nodes to start (default: one spot and one on-demand node, 1 CPU each).
        head_cpus: CPUs of the head node. The head declares ``ondemand`` but no queue, so task
            attempts never land there; flyte-ray's supervising actors (0 CPU) may.
        connect: call ``flyte_ray.init(address=...)`` once the cluster is up.
        node_placement: the convention of the head and of nodes whose spec does not choose one:
            ``"markers"`` (the head declares the ``ondemand`` resource), ``"labels"`` (the head
            starts with ``RAY_NODE_MARKET_TYPE=on-demand``) or ``"both"``.
        temp_dir: Ray's temp dir for this cluster (default: a fresh one, removed on shutdown).
        notices: ``"aws"``, ``"gcp"`` or ``"azure"``: serve that cloud's metadata service for
            every worker node from a real HTTP server on loopback
            (:class:`~flyte_ray.preemption.emulator.MetadataEmulator`) and run flyte-ray's notice
            watcher (``flyte-ray watch-preemption``) for each node against it; then
            :meth:`notify` announces a preemption the way that cloud would. ``None``: neither.
        dashboard: start Ray's dashboard on the head (``cluster.dashboard_url``; ``Run.url``
            points at it): each attempt shows there as ``<task> #<attempt> (<market>)``.
        init_kwargs: extra ``flyte_ray.init`` settings (``system_retries``, ``storage``…).
    """

    def __init__(
        self,
        nodes: Optional[Iterable[Union[NodeSpec, Dict[str, Any]]]] = None,
        *,
        head_cpus: float = 0,
        connect: bool = True,
        node_placement: str = "markers",
        temp_dir: Optional[str] = None,
        notices: Optional[str] = None,
        dashboard: bool = False,
        **init_kwargs: Any,
    ) -> None:
        self._specs = [
            n if isinstance(n, NodeSpec) else NodeSpec(**n) for n in (nodes if nodes is not None else DEFAULT_NODES)
        ]
        self._head_cpus = head_cpus
        self._placement = NodeSpec("head", market="ondemand", queues=(), placement=node_placement).convention()
        self._connect = connect
        self._own_temp = temp_dir is None
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="frt-")
        self._init_kwargs = init_kwargs
        self._cluster: Any = None
        self._nodes: Dict[str, Any] = {}
        self._specs_by_name: Dict[str, NodeSpec] = {}
        self._removed: Dict[str, str] = {}
        self._lock = threading.Lock()
        if notices is not None and notices not in ("aws", "gcp", "azure"):
            raise ValueError(f"LocalCluster(notices=...): expected 'aws', 'gcp', 'azure' or None, got {notices!r}")
        self.notices = notices
        self._dashboard = bool(dashboard)
        self._metadata: Any = None  # the MetadataEmulator when notices is set
        self._watchers: Dict[str, Any] = {}  # node name -> (Popen, log path)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> "LocalCluster":
        """Start the head and the nodes, and (by default) connect flyte-ray to it."""
        from ray.cluster_utils import Cluster

        # Ray listens on every interface: token auth on with this process's token unless the user
        # chose a mode; clients get it from flyte_ray._ray.auth.client_env().
        ensure_token_auth()
        # Ray records the newest cluster's address in its *default* temp dir even when the
        # cluster uses another one, and fails if that dir does not exist yet.
        from ray._common.utils import get_ray_address_file

        os.makedirs(os.path.dirname(get_ray_address_file(None)), exist_ok=True)
        head = NodeSpec("head", market="ondemand", queues=(), placement=self._placement)
        resources = {"ondemand": MARKER_COUNT} if self._placement != "labels" else {}
        with _market_env(head.market_env()):
            self._cluster = Cluster(
                initialize_head=True,
                connect=False,
                head_node_args={
                    "num_cpus": self._head_cpus,
                    "resources": {**resources, "flyte-ray-node:head": 1},
                    "labels": head.ray_labels(),
                    "temp_dir": self.temp_dir,
                    "include_dashboard": self._dashboard,
                },
            )
        for spec in self._specs:
            self._start_node(spec)
        self._cluster.wait_for_nodes()
        for name in list(self._nodes):
            self._start_watcher(name)
        if self._connect:
            import flyte_ray

            flyte_ray.init(address=self.address, **self._init_kwargs)
        return self

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Disconnect (if connected by us) and stop every node this cluster started."""
        for name in list(self._watchers):
            self._stop_watcher(name)
        if self._metadata is not None:
            self._metadata.stop()
            self._metadata = None
        if self._connect:
            import flyte_ray

            flyte_ray.shutdown()
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None
        if self._own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    @property
    def dashboard_url(self) -> Optional[str]:
        """Ray's dashboard of this cluster (``LocalCluster(dashboard=True)``), else None."""
        if not self._dashboard or self._cluster is None:
            return None
        url = getattr(self._cluster, "webui_url", None) or getattr(self._cluster.head_node, "webui_url", None)
        if not url:
            return None
        return url if str(url).startswith("http") else f"http://{url}"

    @property
    def address(self) -> str:
        """The GCS address (``host:port``) to pass to ``flyte_ray.init`` / ``ray.init``."""
        return self._cluster.address

    # -------------------------------------------------------------- nodes
    def _start_node(self, spec: NodeSpec) -> Any:
        if spec.name in self._nodes or spec.name == "head":
            raise ValueError(f"LocalCluster: a node named {spec.name!r} exists already")
        p = self._placement
        kwargs: Dict[str, Any] = {
            "num_cpus": spec.cpus,
            "num_gpus": spec.gpus,
            "resources": spec.ray_resources(p),
            "labels": spec.ray_labels(p),
        }
        if spec.memory is not None:
            kwargs["memory"] = spec.memory
        if spec.env:
            kwargs["env_vars"] = dict(spec.env)
        with _market_env(spec.market_env(p)):
            node = self._cluster.add_node(**kwargs)
        self._nodes[spec.name] = node
        self._specs_by_name[spec.name] = spec
        return node

    def add_node(
        self,
        name: Union[str, NodeSpec],
        market: Optional[str] = "ondemand",
        queues: Sequence[str] = ("default",),
        cpus: float = 1,
        gpus: int = 0,
        accelerator: Optional[str] = None,
        resources: Optional[Dict[str, float]] = None,
        memory: Optional[int] = None,
        env: Optional[Dict[str, str]] = None,
        wait: bool = True,
        placement: Optional[str] = None,
        labels: Optional[Dict[str, str]] = None,
    ) -> str:
        """Start another node (arguments as in :class:`NodeSpec`, or one ``NodeSpec``); returns its
        Ray node id."""
        if isinstance(name, NodeSpec):
            return self._add(name, wait)
        if not isinstance(name, str) or not name:
            raise TypeError(f"LocalCluster.add_node: name must be a non-empty str or a NodeSpec, got {name!r}")
        spec = NodeSpec(
            name,
            market,
            tuple(queues),
            cpus,
            gpus,
            accelerator,
            dict(resources or {}),
            memory,
            dict(env or {}),
            placement,
            dict(labels or {}),
        )
        return self._add(spec, wait)

    def _add(self, spec: NodeSpec, wait: bool = True) -> str:
        with self._lock:
            node = self._start_node(spec)
        if wait:
            self.wait_for_node(node.node_id)
        self._start_watcher(spec.name)
        from ._ray.placement import cluster_view

        cluster_view().invalidate()
        return node.node_id

    def wait_for_node(self, node_id: str, timeout: float = 30.0) -> None:
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
                return
            time.sleep(0.1)
        raise TimeoutError(f"LocalCluster: node {node_id} did not join within {timeout}s")

    @property
    def nodes(self) -> Dict[str, str]:
        """Live nodes: name -> Ray node id."""
        return {name: n.node_id for name, n in self._nodes.items()}

    def node_id(self, name: str) -> str:
        if name == "head":
            return self._cluster.head_node.node_id
        if name in self._nodes:
            return self._nodes[name].node_id
        if name in self._removed:
            return self._removed[name]
        raise KeyError(f"LocalCluster: no node named {name!r}; nodes: {', '.join(self._nodes) or '(none)'}")

    def name_of(self, node_id: str) -> Optional[str]:
        """Your name for a Ray node id (``"head"`` for the head), including removed nodes."""
        if self._cluster is not None and node_id == self._cluster.head_node.node_id:
            return "head"
        for name, n in self._nodes.items():
            if n.node_id == node_id:
                return name
        for name, nid in self._removed.items():
            if nid == node_id:
                return name
        return None

    def market_of(self, node_id: str) -> Optional[str]:
        name = self.name_of(node_id)
        if name == "head":
            return "ondemand"
        spec = self._specs_by_name.get(name or "")
        return spec.market if spec else None

    def spec(self, name: str) -> NodeSpec:
        return self._specs_by_name[name]

    def preempt(
        self,
        node: str,
        *,
        graceful: bool = True,
        notice_s: float = 0.0,
        reason: str = "spot preemption",
        replace: bool = False,
        drain: bool = True,
    ) -> Optional[str]:
        """Preempt a node as a cloud would: drain it with reason PREEMPTION, wait ``notice_s``
        seconds (the spot notice; running work continues, new work stops landing there), then
        remove it (``graceful=False``: kill its processes at once, like a hard reclaim;
        ``drain=False``: no drain at all, the node just vanishes, as with no notice).

        ``node`` is a node name or a Ray node id. With ``replace=True`` a node of the same spec
        (named ``<name>-r<n>``) is started afterwards, as an autoscaler would; its id is returned.
        """
        name = node if node in self._nodes else self.name_of(node)
        if name is None or name not in self._nodes:
            raise KeyError(f"LocalCluster.preempt: no live node {node!r}; nodes: {', '.join(self._nodes)}")
        if drain:
            self.drain(name, reason=reason, deadline_s=max(notice_s, 0.0) + 30)
        if notice_s > 0:
            time.sleep(notice_s)
        self._remove(name, graceful)
        if replace:
            spec = self._specs_by_name[name]
            n = sum(1 for k in self._specs_by_name if k.startswith(f"{name}-r")) + 1
            return self._add(dataclasses.replace(spec, name=f"{name}-r{n}"))
        return None

    def _remove(self, name: str, graceful: bool = True) -> None:
        handle = self._nodes[name]
        self._stop_watcher(name)
        with self._lock:
            self._cluster.remove_node(handle, allow_graceful=graceful)
            del self._nodes[name]
            self._removed[name] = handle.node_id
        from ._ray.placement import cluster_view

        cluster_view().invalidate()

    # -------------------------------------------------------------- preemption notices
    def _start_watcher(self, name: str) -> None:
        if self.notices is None or name in self._watchers:
            return
        from .preemption.emulator import MetadataEmulator

        if self._metadata is None:
            self._metadata = MetadataEmulator()
        log_path = os.path.join(self.temp_dir, f"watch-preemption-{name}.log")
        log = open(log_path, "ab")
        # Run the package the way the cluster configs deploy it: as its own top-level package
        # (a link named flyte_ray_preemption), so the watcher imports neither flyte_ray nor its
        # dependencies (a fraction of the start-up cost of `python -m flyte_ray.preemption`).
        pkg_root = os.path.join(self.temp_dir, "watcher-pkg")
        link = os.path.join(pkg_root, "flyte_ray_preemption")
        if not os.path.exists(link):
            os.makedirs(pkg_root, exist_ok=True)
            os.symlink(os.path.join(os.path.dirname(os.path.abspath(__file__)), "preemption"), link)
        env = dict(os.environ, PYTHONPATH=pkg_root)
        cmd = [
            sys.executable,
            "-m",
            "flyte_ray_preemption",
            "--provider",
            self.notices,
            "--interval",
            "0.5",
            "--address",
            self.address,
            "--node-id",
            self.node_id(name),
            "--metadata-url",
            self._metadata.url(name),
        ]
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        finally:
            log.close()
        self._watchers[name] = (proc, log_path)

    def _stop_watcher(self, name: str) -> None:
        entry = self._watchers.pop(name, None)
        if entry is None:
            return
        proc = entry[0]
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def watcher_log(self, node: str) -> str:
        """What ``node``'s notice watcher has logged (``notices=`` clusters)."""
        entry = self._watchers.get(node)
        path = entry[1] if entry else os.path.join(self.temp_dir, f"watch-preemption-{node}.log")
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def notify(
        self,
        node: str,
        *,
        provider: Optional[str] = None,
        notice_s: float = 10.0,
        remove: bool = True,
        graceful: bool = True,
        timeout: float = 30.0,
    ) -> float:
        """Announce ``node``'s preemption through its metadata service, as the cloud would: the
        node's watcher sees it and drains the node (this waits until Ray reports the node
        draining, or gone); with ``remove`` the node is removed once ``notice_s`` seconds have
        passed since the notice. Returns the notice's deadline (epoch seconds).

        Needs ``LocalCluster(notices=...)``; ``provider`` defaults to that cloud.
        """
        if self.notices is None or self._metadata is None:
            raise RuntimeError("LocalCluster.notify needs LocalCluster(..., notices='aws'|'gcp'|'azure')")
        if provider is not None and provider != self.notices:
            # each node's watcher polls the cloud the cluster was started with: another cloud's
            # notice would never be seen (and this would wait out its timeout)
            raise ValueError(
                f"LocalCluster.notify: provider={provider!r}, but the nodes' watchers poll {self.notices!r} "
                f"(LocalCluster(notices={provider!r}) for that cloud)"
            )
        name = node if node in self._nodes else self.name_of(node)
        if name is None or name not in self._nodes:
            raise KeyError(f"LocalCluster.notify: no live node {node!r}; nodes: {', '.join(self._nodes)}")
        from .preemption.gcs import node_states

        node_id = self.node_id(name)
        t0 = time.time()
        deadline = self._metadata.notify(name, provider or self.notices, notice_s)
        end = time.monotonic() + timeout
        while node_states(self.address).get(node_id, ("DEAD", ""))[0] == "ALIVE":
            if time.monotonic() > end:
                raise TimeoutError(
                    f"LocalCluster.notify({name!r}): the node's watcher did not drain it within {timeout:g}s; "
                    f"its log:\n{self.watcher_log(name)[-2000:]}"
                )
            time.sleep(0.05)
        if remove:
            time.sleep(max(0.0, t0 + notice_s - time.time()))
            if name in self._nodes:
                self._remove(name, graceful)
        return deadline

    def drain(self, node: str, *, reason: str = "spot preemption", deadline_s: float = 30.0) -> None:
        """Drain a node with reason PREEMPTION (new work stops landing there; running work goes on)."""
        from .preemption.gcs import drain_node

        node_id = self.node_id(node) if node in self._nodes or node == "head" else node
        ok, msg = drain_node(self.address, node_id, time.time() + deadline_s, reason)
        if not ok:
            raise RuntimeError(f"LocalCluster.drain({node!r}) was refused: {msg}")


@contextlib.contextmanager
def _market_env(value: Optional[str]) -> Iterator[None]:
    """``RAY_NODE_MARKET_TYPE`` set in this process while a node starts (``None``: unset), as
    ``ray start`` reads it: Ray resolves a node's default labels in the process that starts it."""
    with _ENV_LOCK:
        old = os.environ.pop("RAY_NODE_MARKET_TYPE", None)
        if value is not None:
            os.environ["RAY_NODE_MARKET_TYPE"] = value
        try:
            yield
        finally:
            os.environ.pop("RAY_NODE_MARKET_TYPE", None)
            if old is not None:
                os.environ["RAY_NODE_MARKET_TYPE"] = old


def local_cluster_fixture(request: Any) -> Any:
    nodes = getattr(request, "param", None)
    with LocalCluster(nodes) as cluster:
        yield cluster


try:  # a pytest fixture, when pytest is present (pytest_plugins = ["flyte_ray.testing"])
    import pytest

    local_cluster = pytest.fixture(local_cluster_fixture, name="local_cluster")
except ImportError:  # pragma: no cover
    local_cluster = None  # type: ignore[assignment]
