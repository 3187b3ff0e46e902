"""The cost report of a run: node time by market, what it cost, what the same useful work would
have cost on on-demand nodes only, and what preemptions threw away.

:func:`cost_report` is a pure function of a run's :class:`~flyte_ray._core.events.AttemptEvent`
list (a flat list; events of several runs may be mixed) and a
:class:`~flyte_ray.report.prices.PriceTable` (or None). Prices are per hour of one whole node
(:mod:`flyte_ray.report.prices`); **no price is ever guessed**: node time without a price is
reported as not priced and left out of every money total.

Rules, per event ``e`` (money in the table's currency, node-seconds in seconds of one whole node):

1. **Cache hits** (``outcome == "cached"``) count in ``cache_hits`` (calls saved) and nothing
   else: no node time, no cost, not an attempt. Every other event is an attempt (``attempts``).
2. **Node time** ``held_s``: 0 for an attempt that never ran on a node: outcomes
   ``spot_unavailable``, ``queued_timeout`` and ``infeasible`` (counted in ``unplaced``), a
   ``cancelled`` attempt whose ``started`` is None (cancelled while it waited), and an attempt
   whose ``ended`` is None. Otherwise ``held_s = e.seconds`` (start to end). An attempt that
   never reported its start (``started`` None: a plain Ray task lost with its node) counts from
   its submission, as :func:`~flyte_ray._core.events.with_lost_work` does; that span includes
   its wait for a node, so it is an upper bound, and the attempt counts in ``start_unknown``.
3. **Share** of the node: ``e.share`` (the larger of its CPU and GPU shares); when that is 0
   (unknown: the node's totals were not recorded) the whole node, 1.0, and the attempt counts in
   ``share_unknown`` (attempts with ``held_s > 0`` only).
4. ``node_s = held_s × share``. ``node_seconds`` is Σ ``node_s``; ``spot_node_seconds`` and
   ``ondemand_node_seconds`` the same over attempts with ``market`` ``"spot"`` / ``"ondemand"``.
5. **Lost work** ``lost_s``: :func:`~flyte_ray._core.events.with_lost_work` over the events of the
   attempt's call (grouped by ``(run, call_id)``): for a system failure (``failure_kind ==
   "system"``: ``preemption``, ``node_failure``) the seconds it ran after the checkpoint the next
   attempt resumed from; 0 otherwise (None, for an attempt with no run time at all, is 0). It is
   capped at ``held_s``. ``lost_work_s`` is Σ ``lost_s``; ``lost_node_s = lost_s × share`` and
   ``lost_node_seconds`` is Σ ``lost_node_s``.
6. **Useful node time** ``useful_s = (held_s − lost_s) × share``: everything but the lost part
   of system failures. User failures (``failed``, ``oom``, ``worker_crash``, ``timeout``) and
   cancelled attempts count in full: an all-on-demand run would have run them too. A system
   failure's time before its checkpoint counts (the next attempt did not redo it), and so does
   its time outside the user code (start-up, restoring a checkpoint).
7. **Prices**: ``p = table.price(e.node_type, e.instance_type, e.market)`` and ``p_od =
   table.ondemand_price(e.node_type, e.instance_type)`` (the same node type's on-demand price;
   for an on-demand attempt ``p_od == p``). An attempt with ``node_s > 0`` is *priced* when both
   are known; then

   * ``cost += node_s / 3600 × p`` (and ``spot_cost`` or ``ondemand_cost`` by market),
   * ``all_ondemand_cost += useful_s / 3600 × p_od``,
   * ``lost_cost += lost_node_s / 3600 × p`` (a part of ``cost``, not an addition to it).

   An attempt with ``node_s > 0`` that lacks either price is in none of the money totals: its
   ``node_s`` is added to the ``missing`` entry of its ``(node_type, instance_type, market,
   lacks)``, ``lacks`` naming the market(s) whose price is missing. So ``cost`` and
   ``all_ondemand_cost`` always cover the same attempts, and ``to_text()`` says that the totals
   exclude the ``missing`` node-seconds. The node-seconds totals (rules 4-6) include them.
8. ``savings = all_ondemand_cost − cost`` (negative when spot cost more, e.g. after much lost
   work); ``savings_pct = 100 × savings / all_ondemand_cost`` (None when that is 0).
9. **Without a price table** (``prices=None``) every money field is None and every attempt with
   node time is in ``missing``; node time, counts and lost work are reported as above.
10. **Counts**: ``calls`` (distinct ``(run, call_id)``, cache hits included), ``preemptions``
    (outcome ``preemption``), ``node_failures`` (outcome ``node_failure``), ``user_failures`` /
    ``system_failures`` (``failure_kind`` ``"user"`` / ``"system"``), ``unplaced`` (rule 2).
11. **Per task**: ``tasks`` holds the same figures for the events of each ``fqn`` (sorted by
    name); the totals are the sums over tasks.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional, Union

from .._core.events import AttemptEvent, with_lost_work
from .prices import PriceTable, load_prices

__all__ = ["CostReport", "TaskCost", "MissingPrice", "cost_report", "NO_NODE_OUTCOMES"]

#: Outcomes of attempts that never ran on a node (rule 2).
NO_NODE_OUTCOMES = frozenset({"spot_unavailable", "queued_timeout", "infeasible"})


@dataclass(frozen=True)
class MissingPrice:
    """Node time that could not be priced: attempts in ``market`` on ``node_type`` /
    ``instance_type`` for which the table has no price for the markets in ``lacks``."""

    node_type: str
    instance_type: str
    market: str
    lacks: tuple[str, ...]
    attempts: int
    node_seconds: float

    @property
    def label(self) -> str:
        if self.node_type and self.instance_type:
            return f"{self.node_type} ({self.instance_type})"
        return self.node_type or self.instance_type or "(node type unknown)"


@dataclass(frozen=True)
class TaskCost:
    """The figures of :class:`CostReport` for the events of one task (``fqn``); see the rules in
    the module docstring."""

    fqn: str
    calls: int = 0
    attempts: int = 0
    cache_hits: int = 0
    preemptions: int = 0
    node_failures: int = 0
    user_failures: int = 0
    system_failures: int = 0
    unplaced: int = 0
    node_seconds: float = 0.0
    spot_node_seconds: float = 0.0
    ondemand_node_seconds: float = 0.0
    useful_node_seconds: float = 0.0
    lost_work_s: float = 0.0
    lost_node_seconds: float = 0.0
    cost: Optional[float] = None
    spot_cost: Optional[float] = None
    ondemand_cost: Optional[float] = None
    all_ondemand_cost: Optional[float] = None
    lost_cost: Optional[float] = None
    savings: Optional[float] = None
    savings_pct: Optional[float] = None


@dataclass(frozen=True)
class CostReport(TaskCost):
    """A run's cost report (rules in the module docstring); ``fqn`` is ``""`` here."""

    currency: Optional[str] = None
    priced: bool = False  # a price table was given
    runs: tuple[str, ...] = ()
    share_unknown: int = 0
    start_unknown: int = 0
    missing: tuple[MissingPrice, ...] = ()
    tasks: tuple[TaskCost, ...] = ()
    prices_as_of: str = ""  # the table's as_of and source, as its author wrote them
    prices_source: str = ""

    @property
    def missing_node_seconds(self) -> float:
        """Node-seconds left out of the money totals for want of a price."""
        return sum(m.node_seconds for m in self.missing)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (tuples as lists, money None where not computed)."""
        d = asdict(self)
        d.pop("fqn")
        d["runs"] = list(self.runs)
        for m in d["missing"]:
            m["lacks"] = list(m["lacks"])
        d["missing_node_seconds"] = self.missing_node_seconds
        return d

    def to_text(self) -> str:
        """A readable, aligned report."""
        return _text(self)


# ---------------------------------------------------------------------------- computing
@dataclass
class _Acc:
    priced: bool
    calls: set[tuple[str, str]] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    secs: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    money: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def freeze(self, fqn: str) -> TaskCost:
        c, s, m = self.counts, self.secs, self.money
        money: dict[str, Optional[float]] = {
            k: (m[k] if self.priced else None)
            for k in ("cost", "spot_cost", "ondemand_cost", "all_ondemand_cost", "lost_cost")
        }
        savings = pct = None
        if self.priced:
            savings = m["all_ondemand_cost"] - m["cost"]
            pct = 100.0 * savings / m["all_ondemand_cost"] if m["all_ondemand_cost"] > 0 else None
        return TaskCost(
            fqn=fqn,
            calls=len(self.calls),
            attempts=c["attempts"],
            cache_hits=c["cache_hits"],
            preemptions=c["preemptions"],
            node_failures=c["node_failures"],
            user_failures=c["user_failures"],
            system_failures=c["system_failures"],
            unplaced=c["unplaced"],
            node_seconds=s["node"],
            spot_node_seconds=s["spot"],
            ondemand_node_seconds=s["ondemand"],
            useful_node_seconds=s["useful"],
            lost_work_s=s["lost_work"],
            lost_node_seconds=s["lost_node"],
            savings=savings,
            savings_pct=pct,
            **money,
        )


def _held(e: AttemptEvent) -> float:
    """Rule 2: seconds the attempt held its node."""
    if e.outcome in NO_NODE_OUTCOMES or e.ended is None:
        return 0.0
    if e.outcome == "cancelled" and e.started is None:
        return 0.0
    return e.seconds or 0.0


def cost_report(
    events: Iterable[AttemptEvent],
    prices: Union[PriceTable, Mapping[str, Any], str, "os.PathLike[str]", None] = None,
) -> CostReport:
    """The cost report of ``events`` (one run's, or several runs' mixed) priced with ``prices``
    (a :class:`PriceTable`, its dict form, a price file's path, or None for node time only).
    Rules: the module docstring."""
    table = load_prices(prices) if prices is not None else None
    evs = list(events)
    by_call: dict[tuple[str, str], list[AttemptEvent]] = defaultdict(list)
    for e in evs:
        by_call[(e.run, e.call_id)].append(e)
    lost_of: dict[int, float] = {}
    for call_events in by_call.values():
        for e, lost in with_lost_work(call_events):
            lost_of[id(e)] = lost or 0.0

    total = _Acc(priced=table is not None)
    per_task: dict[str, _Acc] = {}
    missing: dict[tuple[str, str, str, tuple[str, ...]], list[float]] = {}
    share_unknown = start_unknown = 0
    for e in evs:
        task = per_task.get(e.fqn)
        if task is None:
            task = per_task[e.fqn] = _Acc(priced=table is not None)
        accs = (total, task)
        for a in accs:
            a.calls.add((e.run, e.call_id))
        if e.outcome == "cached":
            for a in accs:
                a.counts["cache_hits"] += 1
            continue
        held = _held(e)
        share = e.share
        if held > 0 and share <= 0:
            share = 1.0
            share_unknown += 1
        if held > 0 and e.started is None:
            start_unknown += 1
        lost = min(max(lost_of.get(id(e), 0.0), 0.0), held)
        node_s = held * share
        useful_s = (held - lost) * share
        lost_node_s = lost * share
        for a in accs:
            c, s = a.counts, a.secs
            c["attempts"] += 1
            c["preemptions"] += e.outcome == "preemption"
            c["node_failures"] += e.outcome == "node_failure"
            c["user_failures"] += e.failure_kind == "user"
            c["system_failures"] += e.failure_kind == "system"
            c["unplaced"] += e.outcome in NO_NODE_OUTCOMES
            s["node"] += node_s
            if e.market in ("spot", "ondemand"):
                s[e.market] += node_s
            s["useful"] += useful_s
            s["lost_work"] += lost
            s["lost_node"] += lost_node_s
        if node_s <= 0:
            continue
        p = table.price(e.node_type, e.instance_type, e.market) if table is not None else None
        p_od = table.ondemand_price(e.node_type, e.instance_type) if table is not None else None
        if p is None or p_od is None:
            lacks = tuple(dict.fromkeys(m for m, v in ((e.market, p), ("ondemand", p_od)) if v is None))
            entry = missing.setdefault((e.node_type, e.instance_type, e.market, lacks), [0.0, 0.0])
            entry[0] += 1
            entry[1] += node_s
            continue
        for a in accs:
            m = a.money
            m["cost"] += node_s / 3600.0 * p
            if e.market in ("spot", "ondemand"):
                m[f"{e.market}_cost"] += node_s / 3600.0 * p
            m["all_ondemand_cost"] += useful_s / 3600.0 * p_od
            m["lost_cost"] += lost_node_s / 3600.0 * p

    t = total.freeze("")
    return CostReport(
        **asdict(t),
        currency=table.currency if table is not None else None,
        priced=table is not None,
        runs=tuple(sorted({e.run for e in evs})),
        share_unknown=share_unknown,
        start_unknown=start_unknown,
        missing=tuple(MissingPrice(*key, attempts=int(v[0]), node_seconds=v[1]) for key, v in sorted(missing.items())),
        tasks=tuple(per_task[f].freeze(f) for f in sorted(per_task)),
        prices_as_of=table.as_of if table is not None else "",
        prices_source=table.source if table is not None else "",
    )


# ---------------------------------------------------------------------------- text
def _money(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:,.2f}" if abs(v) >= 1000 else f"{v:,.4f}"


def _secs(v: float) -> str:
    return f"{v:,.1f}"


def _plural(n: int, one: str, many: Optional[str] = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _text(r: CostReport) -> str:
    lines: list[str] = []
    what = f"run {r.runs[0]}" if len(r.runs) == 1 else (f"{len(r.runs)} runs" if r.runs else "no recorded attempts")
    lines.append(f"flyte-ray cost report: {what}")
    cur = r.currency or ""
    if r.priced:
        lines.append(
            f"prices: {cur or '(no currency: the table has no prices)'}"
            + (f", as of {r.prices_as_of}" if r.prices_as_of else "")
            + (f", source: {r.prices_source}" if r.prices_source else "")
        )
    else:
        lines.append("prices: none given (no price table): node time only, costs not computed")
    lines.append(f"calls: {r.calls}, {r.cache_hits} of them from the cache (calls saved, no cost)")
    lines.append(
        f"attempts: {r.attempts} ({_plural(r.preemptions, 'preemption')}, "
        f"{_plural(r.node_failures, 'node failure')}, {_plural(r.user_failures, 'user failure')}, "
        f"{_plural(r.system_failures, 'system failure')}, {r.unplaced} never placed)"
    )
    lines.append("")
    money_head = f"cost ({cur})" if cur else "cost"
    rows: list[tuple[str, str, str, str]] = [
        ("", "node-seconds", money_head, ""),
        ("spot", _secs(r.spot_node_seconds), _money(r.spot_cost), ""),
        ("on-demand", _secs(r.ondemand_node_seconds), _money(r.ondemand_cost), ""),
        (
            "total",
            _secs(r.node_seconds),
            _money(r.cost),
            f"(excludes {_secs(r.missing_node_seconds)} node-seconds not priced)" if r.priced and r.missing else "",
        ),
        (
            "lost to system failures",
            _secs(r.lost_node_seconds),
            _money(r.lost_cost),
            f"({_secs(r.lost_work_s)} s of work thrown away)",
        ),
        ("all on-demand, same useful work", _secs(r.useful_node_seconds), _money(r.all_ondemand_cost), ""),
        (
            "savings",
            "",
            _money(r.savings),
            f"({r.savings_pct:.1f}% of all on-demand)" if r.savings_pct is not None else "",
        ),
    ]
    w0 = max(len(x[0]) for x in rows)
    w1 = max(len(x[1]) for x in rows)
    w2 = max(len(x[2]) for x in rows)
    for a, b, c, d in rows:
        lines.append(f"  {a:<{w0}}  {b:>{w1}}  {c:>{w2}}  {d}".rstrip())
    if r.missing:
        lines.append("")
        if r.priced:
            lines.append(
                f"prices missing: {_secs(r.missing_node_seconds)} node-seconds not priced; "
                "the money totals above exclude them"
            )
        else:
            lines.append(f"prices missing for all node time: {_secs(r.missing_node_seconds)} node-seconds not priced")
        for m in r.missing:
            lines.append(
                f"  prices missing for {m.label}, {m.market or '(no market)'} attempts "
                f"(no {' / '.join(x or '(no market)' for x in m.lacks)} price): "
                f"{_secs(m.node_seconds)} node-seconds not priced ({_plural(m.attempts, 'attempt')})"
            )
    notes = []
    if r.share_unknown:
        notes.append(
            f"{_plural(r.share_unknown, 'attempt')} did not record its share of the node: counted as the whole node"
        )
    if r.start_unknown:
        notes.append(
            f"{_plural(r.start_unknown, 'attempt')} never reported a start: node time counted from submission "
            "(includes its wait for a node: an upper bound)"
        )
    if notes:
        lines.append("")
        lines.extend(notes)
    if r.tasks:
        lines.append("")
        head = (
            "task",
            "calls",
            "cached",
            "attempts",
            "preempted",
            "user fail",
            "system fail",
            "node-s",
            "lost s",
            "cost",
            "all on-demand",
            "savings",
        )
        body = [
            (
                t.fqn if len(t.fqn) <= 48 else "..." + t.fqn[-45:],
                str(t.calls),
                str(t.cache_hits),
                str(t.attempts),
                str(t.preemptions),
                str(t.user_failures),
                str(t.system_failures),
                _secs(t.node_seconds),
                _secs(t.lost_work_s),
                _money(t.cost),
                _money(t.all_ondemand_cost),
                _money(t.savings),
            )
            for t in r.tasks
        ]
        widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
        for row in (head, *body):
            cells = [f"{row[0]:<{widths[0]}}"] + [f"{c:>{w}}" for c, w in zip(row[1:], widths[1:])]
            lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
