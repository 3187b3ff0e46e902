"""``flyte-ray doctor``: what a live cluster offers, and whether your tasks can run on it.

::

    flyte-ray doctor --address ray://head:10001                  # markets, queues, GPUs of live nodes
    flyte-ray doctor --address auto my_project.workflows         # + can every task be placed?
    flyte-ray doctor --cluster-config cluster-configs/aws-spot.yaml path/to/tasks.py

It says which placement mode the cluster is in (custom-resource markers, node labels, or mixed)
and why. For each task (module globals, and the tasks of every ``TaskEnvironment`` found there)
it computes the request of its attempts on every market the supervisor may use
(non-interruptible tasks: on-demand only; interruptible ones: spot, and on-demand for the final
attempt) exactly as :func:`flyte_ray._ray.placement.attempt_options` builds it (resources, and
label-selector entries as ``key=value``), and checks it against every live node's totals and
labels. A request no live node can satisfy pends forever in Ray (no error), so the doctor names
the resources or labels that are missing; with ``--cluster-config`` (a ``ray up`` YAML, or
a KubeRay ``RayCluster`` manifest) it also says whether some node type of that config could be
launched by the autoscaler to place it.

Exit status: 0 when every task can be placed (now, or by the autoscaler of the given config),
1 when some task can never be placed, 2 when the doctor itself could not run (no cluster, the
module failed to import, unreadable config).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, TextIO, Tuple

from ._core.call import CallState
from ._core.policy import AttemptPolicy
from ._ray import placement as pl
from ._ray.node_types import read_node_types

__all__ = ["doctor", "main", "NodeInfo", "node_infos", "find_tasks", "task_markets", "load_node_types"]

_EPS = 1e-9
_QUEUE = "queue:"
_ACC = "accelerator_type:"
_PART = "gpu-partition:"
_TPU = "tpu:"
_STANDARD = ("CPU", "GPU", "memory")


# ----------------------------------------------------------------------------------- nodes


@dataclass
class NodeInfo:
    """One live node (or one node type of a cluster config) and what it offers."""

    name: str
    resources: Dict[str, float]
    alive: bool = True
    labels: Dict[str, str] = field(default_factory=dict)

    @property
    def offers(self) -> Dict[str, float]:
        """Resources, and labels as ``key=value`` entries (how requests name them)."""
        return pl.offers(self.resources, self.labels)

    @property
    def markets(self) -> List[str]:
        return pl.node_market(self.resources, self.labels)

    @property
    def convention(self) -> str:
        """How it declares its market: ``markers``, ``labels``, ``both`` or ``none``."""
        return pl.node_convention(self.resources, self.labels)

    @property
    def market(self) -> str:
        ms = self.markets
        if len(ms) == 1:
            return ms[0]
        return "spot+ondemand (!)" if ms else "(no market)"

    @property
    def queues(self) -> List[str]:
        qs = {k[len(_QUEUE) :] for k, v in self.resources.items() if k.startswith(_QUEUE) and v > 0}
        ql = pl.QUEUE_LABEL_PREFIX
        return sorted(qs | {k[len(ql) :] for k, v in self.labels.items() if k.startswith(ql) and v == pl.LABEL_TRUE})

    @property
    def accelerators(self) -> List[str]:
        accs = {k[len(_ACC) :] for k, v in self.resources.items() if k.startswith(_ACC) and v > 0}
        return sorted(accs | {v for k, v in self.labels.items() if k == pl.ACCELERATOR_LABEL})

    @property
    def partitions(self) -> List[str]:
        return sorted(k for k, v in self.resources.items() if (k.startswith(_PART) or k.startswith(_TPU)) and v > 0)

    @property
    def cpus(self) -> float:
        return float(self.resources.get("CPU", 0))

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0))

    def lacks(self, request: Mapping[str, float], unknown_ok: Iterable[str] = ()) -> List[str]:
        """Resources of ``request`` this node cannot offer (by totals). Names in ``unknown_ok``
        that the node does not declare at all count as available (a config's instance type may
        provide them)."""
        ok = set(unknown_ok)
        have = self.offers
        out = []
        for k, v in request.items():
            if v <= 0:
                continue
            if k in ok and k not in self.resources:
                continue
            if float(have.get(k, 0.0)) + _EPS < v:
                out.append(k)
        return out


def node_infos() -> List[NodeInfo]:
    """The live nodes of the connected cluster."""
    import ray

    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = {k: float(v) for k, v in (n.get("Resources") or {}).items()}
        labels = {str(k): str(v) for k, v in (n.get("Labels") or {}).items()}
        nid = str(n.get("NodeID", ""))[:12]
        addr = n.get("NodeManagerAddress", "")
        out.append(NodeInfo(name=f"{nid}@{addr}" if addr else nid, resources=res, labels=labels))
    return out


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _describe_cluster(nodes: List[NodeInfo], p, view: Any = None, override: str = "auto") -> List[str]:
    """Print the cluster summary; return warnings about the convention."""
    warnings: List[str] = []
    p(f"Live nodes: {len(nodes)}")
    if view is not None:
        mode, why = view.explain(override)
        by = [f"{c}: {sum(1 for n in nodes if n.convention == c)}" for c in ("markers", "labels", "both", "none")]
        p("")
        p(f"Placement: {mode} ({why})")
        p(f"  nodes declaring their market by {', '.join(by)}")
        for n in nodes:
            warnings += view.node_warnings(n.name, n.resources, n.labels, override)
    p("")
    p("Markets:")
    by_market: Dict[str, List[NodeInfo]] = {}
    for n in nodes:
        by_market.setdefault(n.market, []).append(n)
    for m in sorted(by_market, key=lambda k: ("spot", "ondemand").index(k) if k in ("spot", "ondemand") else 9):
        ns = by_market[m]
        cpu = sum(n.cpus for n in ns)
        gpu = sum(n.gpus for n in ns)
        zero = sum(1 for n in ns if n.cpus == 0)
        extra = f"  ({zero} with 0 CPU: supervising actors / drivers only)" if zero else ""
        p(f"  {m:<18} {_plural(len(ns), 'node'):<9} CPU {_fmt_num(cpu):<5} GPU {_fmt_num(gpu):<4}{extra}")
    if not any(n.markets for n in nodes):
        warnings.append(
            "no node declares a market ('spot' / 'ondemand' resources, or the ray.io/market-type label): "
            "flyte-ray places attempts without a market constraint (fine for a single-node dev cluster only)"
        )
    for n in nodes:
        if len(n.markets) > 1:
            warnings.append(f"node {n.name} declares both 'spot' and 'ondemand' (declare exactly one)")

    p("")
    p("Queues:")
    queues: Dict[str, Dict[str, List[NodeInfo]]] = {}
    for n in nodes:
        for q in n.queues:
            queues.setdefault(q, {}).setdefault(n.market, []).append(n)
    if not queues:
        p("  (none)")
        warnings.append(
            "no node declares a queue ('queue:<name>' or the label 'flyte-ray.io/queue-<name>'): "
            "flyte-ray places attempts without a queue constraint"
        )
    for q in sorted(queues):
        parts = [
            f"{m}: {_plural(len(ns), 'node')} ({_fmt_num(sum(x.cpus for x in ns))} CPU)"
            for m, ns in sorted(queues[q].items())
        ]
        p(f"  {q:<12} " + ", ".join(parts))
        if "spot" in queues[q] and "ondemand" not in queues[q]:
            warnings.append(
                f"queue {q!r} is served on spot only: the final (on-demand) attempt of its "
                "interruptible tasks, and every attempt of non-interruptible ones, cannot run"
            )
    if queues:
        for n in nodes:
            if not n.queues and n.cpus > 0:
                warnings.append(
                    f"node {n.name} ({_fmt_num(n.cpus)} CPU) serves no queue: no task attempt will ever land there"
                )

    p("")
    p("Accelerators:")
    accs: Dict[str, Dict[str, List[NodeInfo]]] = {}
    for n in nodes:
        for a in n.accelerators:
            accs.setdefault(a, {}).setdefault(n.market, []).append(n)
    if not accs:
        p("  (none)")
    for a in sorted(accs):
        parts = [
            f"{m}: {_plural(len(ns), 'node')} ({_fmt_num(sum(x.gpus for x in ns))} GPU)"
            for m, ns in sorted(accs[a].items())
        ]
        p(f"  {a:<12} " + ", ".join(parts))
    parts_seen: Dict[str, Dict[str, float]] = {}
    for n in nodes:
        for r in n.partitions:
            d = parts_seen.setdefault(r, {})
            d[n.market] = d.get(n.market, 0.0) + n.resources[r]
    if parts_seen:
        p("")
        p("GPU partitions / TPU slices:")
        for r in sorted(parts_seen):
            p(f"  {r:<28} " + ", ".join(f"{m}: {_fmt_num(c)}" for m, c in sorted(parts_seen[r].items())))
    return warnings


# ----------------------------------------------------------------------------------- tasks


def _import_module(module: str) -> Any:
    """Import a dotted module name, or a ``.py`` file (its folder goes on ``sys.path``)."""
    path = Path(module)
    if module.endswith(".py") or path.is_file():
        path = path.resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {module}")
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        name = path.stem
        existing = sys.modules.get(name)
        if existing is not None:
            file = getattr(existing, "__file__", None)
            if file and Path(file).resolve() == path:
                return existing
            name = f"_flyte_ray_doctor_{name}"  # never shadow another module of that name
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {module}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # so its tasks pickle by reference, as when imported normally
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return mod
    return importlib.import_module(module)


def find_tasks(mod: Any) -> List[Any]:
    """Every TaskTemplate in ``mod``: its globals, and the tasks of its TaskEnvironments."""
    from .environment import TaskEnvironment
    from .task import TaskTemplate

    found: Dict[str, Any] = {}
    for value in list(vars(mod).values()):
        if isinstance(value, TaskTemplate):
            found.setdefault(value.name, value)
        elif isinstance(value, TaskEnvironment):
            for t in value.tasks.values():
                found.setdefault(t.name, t)
    return [found[k] for k in sorted(found)]


def task_markets(spec: Any, threshold: int) -> List[str]:
    """The markets the supervisor may place this call's attempts on (its own rule, enumerated)."""
    retries = spec.retries.count if spec.retries else 0
    seen: List[str] = []
    # The market rule only compares the counts with retries / threshold: their extremes cover it.
    for user in sorted({0, retries}):
        for system in sorted({0, max(threshold, 0)}):
            for forced in (False, True):
                policy = AttemptPolicy(
                    spec.fqn,
                    interruptible=spec.interruptible,
                    retries=spec.retries,
                    system_retries=-1,
                    failure_threshold=threshold,
                )
                state = CallState(user_failures=user, system_failures=system, forced_ondemand=forced)
                m = str(policy.market(state))
                if m not in seen:
                    seen.append(m)
    order = ("spot", "ondemand")
    return sorted(seen, key=order.index)


def _request(spec: Any, market: str, override: str = "auto") -> Tuple[Dict[str, float], str]:
    """The request of an attempt on ``market`` and the placement mode it uses."""
    mode = pl.cluster_view().mode(override, market, spec.queue or pl.DEFAULT_QUEUE)
    return pl.request_of(pl.attempt_options(dict(spec.ray_options), market, spec.queue, override)), mode


def _convention_request(spec: Any, market: str, live: Dict[str, float], mode: str) -> Dict[str, float]:
    """The request once nodes following the convention (of ``mode``) exist: market and queue
    constraints always present."""
    return {**pl.constraint(mode, market, spec.queue or pl.DEFAULT_QUEUE), **live}


def _fmt_request(req: Mapping[str, float]) -> str:
    parts = []
    for k in sorted(req, key=lambda k: (k not in _STANDARD, k)):
        v = req[k]
        if k == "memory":
            parts.append(f"memory={v / 2**30:.3g}Gi")
        elif v <= 0.01 and k not in _STANDARD:
            parts.append(k)  # a marker
        else:
            parts.append(f"{k}={_fmt_num(v)}")
    return ", ".join(parts)


def _why(request: Mapping[str, float], nodes: Sequence[NodeInfo], unknown_ok: Iterable[str] = ()) -> Tuple[bool, str]:
    """(placeable, reason). ``reason`` names the missing resources when not placeable."""
    if not nodes:
        return False, "there are no nodes"
    lacks = [(n, n.lacks(request, unknown_ok)) for n in nodes]
    if any(not lk for _, lk in lacks):
        return True, ""
    nowhere = [k for k in request if all(k in lk for _, lk in lacks)]
    if nowhere:
        declared = [k for k in nowhere if any(n.offers.get(k, 0) > 0 for n in nodes)]
        absent = [k for k in nowhere if k not in declared]
        bits = []
        if absent:
            bits.append("no node declares " + ", ".join(sorted(absent)))
        if declared:
            bits.append("no node has enough " + ", ".join(f"{k} (needs {_fmt_num(request[k])})" for k in declared))
        return False, "; ".join(bits)
    best_node, best = min(lacks, key=lambda x: len(x[1]))
    return False, (
        f"no single node offers all of it together (closest: {best_node.name}, which lacks {', '.join(sorted(best))})"
    )


# ----------------------------------------------------------------------------------- configs


def load_node_types(path: str) -> Tuple[List[NodeInfo], str]:
    """The launchable node types of a ``ray up`` YAML (or KubeRay RayCluster manifest), and the head type."""
    types, head = read_node_types(path)
    return [NodeInfo(name, res, launchable, labels) for name, res, launchable, labels in types], head


# ----------------------------------------------------------------------------------- main


@dataclass
class _Verdict:
    task: Any
    markets: List[str]
    requests: Dict[str, Dict[str, float]] = field(default_factory=dict)
    modes: Dict[str, str] = field(default_factory=dict)
    live: Dict[str, Tuple[bool, str]] = field(default_factory=dict)
    config: Dict[str, Tuple[bool, str]] = field(default_factory=dict)


def doctor(
    address: Optional[str] = None,
    module: Optional[str] = None,
    cluster_config: Optional[str] = None,
    out: Optional[TextIO] = None,
) -> int:
    """Check what the cluster offers and whether the tasks of ``module`` can be placed on it.

    Args:
        address: the cluster (``"auto"``, ``"host:port"``, ``"ray://host:port"``); ``None`` means
            ``"auto"``. When this process is already connected (e.g. by ``flyte_ray.init``), that
            connection and its settings are used.
        module: a dotted module name or a path to a ``.py`` file holding tasks.
        cluster_config: a ``ray up`` YAML (or KubeRay manifest) whose node types the autoscaler
            could launch.
        out: where the report goes (default: ``sys.stdout`` at call time).

    Returns:
        0 if every task can be placed, 1 if some task can never be placed, 2 on setup errors.
    """
    from . import runtime
    from ._ray import placement

    stream = out if out is not None else sys.stdout

    def p(line: str = "") -> None:
        print(line.rstrip(), file=stream)

    # Connect (keeping an existing connection and its settings).
    import ray

    connected_here = False
    try:
        if ray.is_initialized():
            current = runtime.connected_address()
            if address not in (None, "auto") and current not in (None, address):
                p(f"error: this process is already connected to Ray at {current!r}, not {address!r}")
                return 2
        else:
            runtime.init(address=address or "auto")
            connected_here = True
    except Exception as e:  # noqa: BLE001 - report, do not crash the CLI
        p(f"error: cannot connect to Ray at {address or 'auto'!r}: {type(e).__name__}: {e}")
        return 2

    try:
        return _report(address, module, cluster_config, p, placement, runtime)
    finally:
        if connected_here:
            runtime.shutdown()


def _report(address, module, cluster_config, p, placement, runtime) -> int:
    where = runtime.connected_address() or address or "auto"
    p(f"flyte-ray doctor: cluster at {where}")
    view = placement.cluster_view()
    view.refresh()
    override = runtime.current_settings().placement
    nodes = node_infos()
    warnings = _describe_cluster(nodes, p, view, override)

    config_nodes: Optional[List[NodeInfo]] = None
    if cluster_config is not None:
        try:
            config_nodes, _head = load_node_types(cluster_config)
        except Exception as e:  # noqa: BLE001
            p("")
            p(f"error: cannot read cluster config {cluster_config}: {type(e).__name__}: {e}")
            return 2
        p("")
        p(f"Cluster config {cluster_config}: {_plural(len(config_nodes), 'node type')}")
        for nt in config_nodes:
            launch = "" if nt.alive else "  (max_workers 0: never launched)"
            p(
                f"  {nt.name:<16} {nt.market:<9} queues={','.join(nt.queues) or '-'} "
                f"CPU={_fmt_num(nt.cpus) if 'CPU' in nt.resources else '?'} "
                f"GPU={_fmt_num(nt.gpus)}{' ' + ','.join(nt.accelerators) if nt.accelerators else ''}{launch}"
            )

    verdicts: List[_Verdict] = []
    if module is not None:
        try:
            mod = _import_module(module)
        except BaseException as e:  # noqa: BLE001 - SystemExit from a script too
            p("")
            p(f"error: cannot import {module}: {type(e).__name__}: {e}")
            return 2
        tasks = find_tasks(mod)
        threshold = runtime.current_settings().failure_threshold
        log = logging.getLogger("flyte_ray")
        level = log.level
        log.setLevel(logging.ERROR)  # attempt_options warns about missing markers; we report them ourselves
        try:
            for t in tasks:
                spec = t.spec
                v = _Verdict(t, task_markets(spec, threshold))
                for m in v.markets:
                    try:
                        req, v.modes[m] = _request(spec, m, override)
                    except ValueError as e:  # a queue name that cannot be a node label
                        v.requests[m], v.modes[m], v.live[m] = {}, pl.LABELS, (False, str(e))
                        continue
                    v.requests[m] = req
                    v.live[m] = _why(req, nodes)
                    if config_nodes is not None:
                        launchable = [n for n in config_nodes if n.alive]
                        # CPU / GPU / memory a node type leaves out come from its instance type.
                        conv = _convention_request(spec, m, req, v.modes[m])
                        v.config[m] = _why(conv, launchable, unknown_ok=_STANDARD)
                verdicts.append(v)
        finally:
            log.setLevel(level)
        p("")
        p(f"Tasks in {module}: {len(tasks)}")
        if not tasks:
            p("  (no flyte_ray tasks found)")

    failing: List[str] = []
    for v in verdicts:
        t = v.task
        spec = t.spec
        desc = []
        desc.append("interruptible" if spec.interruptible else "not interruptible")
        desc.append(f"queue={spec.queue or 'default'}")
        retries = spec.retries.count if spec.retries else 0
        desc.append(f"retries={retries}")
        queued = bool(spec.timeout and spec.timeout.max_queued_time)
        ok_live = all(v.live[m][0] for m in v.markets)
        ok_config = bool(v.config) and all(v.live[m][0] or v.config[m][0] for m in v.markets)
        status = "OK" if ok_live else ("OK after scale-up" if ok_config else "CANNOT BE PLACED")
        p(f"  {t.name} ({', '.join(desc)}): {status}")
        if spec.interruptible and v.markets == ["ondemand"]:
            p("      note: interruptible, but with retries=0 its only attempt is the final one, which runs on-demand")
        for m in v.markets:
            live_ok, live_why = v.live[m]
            p(f"    {m:<9} requests {_fmt_request(v.requests[m])}  (by {v.modes[m]})")
            if live_ok:
                p("              live nodes: can place it")
            else:
                p(f"              live nodes: CANNOT place it: {live_why}")
                if m == "spot" and queued:
                    p("              (its spot attempts move to on-demand after max_queued_time)")
            if v.config:
                c_ok, c_why = v.config[m]
                if c_ok:
                    fits = [
                        n.name
                        for n in config_nodes or []
                        if n.alive and not n.lacks(_convention_request(spec, m, v.requests[m], v.modes[m]), _STANDARD)
                    ]
                    p(f"              autoscaler ({os.path.basename(cluster_config)}): can launch {', '.join(fits)}")
                else:
                    p(f"              autoscaler ({os.path.basename(cluster_config)}): no node type fits: {c_why}")
        if status == "CANNOT BE PLACED":
            failing.append(t.name)

    p("")
    if warnings:
        p("Warnings:")
        for w in warnings:
            p(f"  - {w}")
        p("")
    if failing:
        scope = "live nodes or the config's node types" if cluster_config else "live nodes"
        p(f"FAIL: {_plural(len(failing), 'task')} can never be placed on the {scope}: {', '.join(failing)}")
        p("      (Ray keeps such attempts pending forever, without an error.)")
        return 1
    if module is not None:
        p(f"OK: every task can be placed ({len(verdicts)} checked)")
    else:
        p("OK")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``flyte-ray doctor [--address ADDR] [--cluster-config YAML] [module]``; returns the exit code."""
    ap = argparse.ArgumentParser(
        prog="flyte-ray doctor",
        description="Show what the live Ray cluster offers (markets, queues, GPUs) and check that every "
        "task of a module can be placed on it.",
    )
    ap.add_argument("--address", default=None, help="Ray address: 'auto' (default), 'host:port' or 'ray://host:port'")
    ap.add_argument(
        "--cluster-config",
        default=None,
        metavar="YAML",
        help="a `ray up` cluster config (or KubeRay manifest): also check whether its node types "
        "could be launched to place each task",
    )
    ap.add_argument(
        "module", nargs="?", default=None, help="a dotted module name or a path to a .py file whose tasks to check"
    )
    args = ap.parse_args(list(argv) if argv is not None else None)
    return doctor(address=args.address, module=args.module, cluster_config=args.cluster_config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
