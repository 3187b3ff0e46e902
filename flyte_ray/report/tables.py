"""A run's records as a readable tree: text for terminals (``flyte-ray show``, ``print(run.tree())``)
and HTML for Jupyter.

Rules: calls are shown as a tree by call id (a child under its parent, children in the order
they were made), each call with its attempts; nodes by readable name (a ``LocalCluster`` name, the
host name) with the id's first 8 characters when the name is unknown; errors are *wrapped*,
never cut mid-word (up to :data:`ERROR_LINES` lines; the records keep 2,000 characters). Every
string from storage is escaped in HTML.
"""

from __future__ import annotations

import html
import re
import textwrap
from dataclasses import dataclass, field
from typing import Iterator, Optional

from .._core.events import AttemptEvent, with_lost_work

__all__ = ["RunTree", "build_tree", "tree_text", "tree_html", "ERROR_LINES"]

ERROR_LINES = 4
_NUM = re.compile(r"(\d+)")


def _order(call_id: str) -> list:
    """Tie-break key: ``root/train-10`` after ``root/train-9``."""
    return [int(p) if p.isdigit() else p for p in _NUM.split(call_id)]


@dataclass
class CallNode:
    call_id: str
    fqn: str
    attempts: list[tuple[AttemptEvent, Optional[float]]] = field(default_factory=list)  # (event, lost work)
    children: list["CallNode"] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        return self.attempts[-1][0].outcome if self.attempts else "?"


@dataclass
class RunTree:
    """A run's calls as a tree, with totals."""

    run: str
    roots: list[CallNode]
    events: list[AttemptEvent]
    phase: str = ""

    @property
    def calls(self) -> int:
        return len({e.call_id for e in self.events})

    def totals(self) -> dict:
        ev = self.events
        lost = [lw for n in _walk(self.roots) for _, lw in n.attempts if lw]
        return {
            "calls": self.calls,
            "attempts": sum(1 for e in ev if e.outcome != "cached"),
            "cached": sum(1 for e in ev if e.outcome == "cached"),
            "preemptions": sum(1 for e in ev if e.outcome == "preemption"),
            "user_failures": sum(1 for e in ev if e.failure_kind == "user"),
            "system_failures": sum(1 for e in ev if e.failure_kind == "system"),
            "spot_seconds": sum(e.seconds or 0.0 for e in ev if e.market == "spot"),
            "ondemand_seconds": sum(e.seconds or 0.0 for e in ev if e.market == "ondemand"),
            "lost_work_seconds": sum(lost),
            "checkpoint_bytes_saved": sum(e.ckpt_saved_bytes for e in ev),
            "checkpoint_bytes_restored": sum(e.ckpt_restored_bytes for e in ev),
        }

    def __str__(self) -> str:
        return tree_text(self)

    def _repr_html_(self) -> str:
        return tree_html(self)


def _walk(nodes: list[CallNode]) -> Iterator[CallNode]:
    for n in nodes:
        yield n
        yield from _walk(n.children)


def build_tree(run: str, events: list[AttemptEvent], phase: str = "") -> RunTree:
    """The tree of ``run``'s calls from its events (any order; duplicates by call and attempt dropped)."""
    seen: dict[tuple, AttemptEvent] = {}
    for e in events:
        seen[(e.call_id, e.attempt, e.outcome == "cached")] = e
    by_call: dict[str, list[AttemptEvent]] = {}
    for e in seen.values():
        by_call.setdefault(e.call_id, []).append(e)
    nodes = {cid: CallNode(cid, evs[0].fqn, with_lost_work(evs)) for cid, evs in by_call.items()}
    roots: list[CallNode] = []
    # in the order calls were made (first submission), ties by call id
    first = {cid: min(e.submitted for e in evs) for cid, evs in by_call.items()}
    for cid in sorted(nodes, key=lambda c: (first[c], _order(c))):
        parent = cid.rsplit("/", 1)[0] if "/" in cid else ""
        # a child whose parent has no record (not recorded, or records still on their way)
        # hangs under its nearest recorded ancestor
        while parent and parent not in nodes:
            parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
        (nodes[parent].children if parent else roots).append(nodes[cid])
    return RunTree(run, roots, list(seen.values()), phase)


def _node(e: AttemptEvent) -> str:
    if e.node_name:
        return e.node_name
    return e.node_id[:8] if e.node_id else "-"


def _secs(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v >= 3600:
        return f"{v / 3600:.1f}h"
    if v >= 120:
        return f"{v / 60:.1f}m"
    return f"{v:.2f}s" if v < 10 else f"{v:.1f}s"


def _wrap(text: str, width: int) -> list[str]:
    lines = textwrap.wrap(text, width=max(20, width), break_long_words=True, break_on_hyphens=False)
    if len(lines) > ERROR_LINES:
        lines = lines[:ERROR_LINES]
        lines[-1] = lines[-1][: max(0, width - 1)] + "…"
    return lines


def tree_text(tree: RunTree, width: int = 110) -> str:
    t = tree.totals()
    out = [
        f"run {tree.run}{' (' + tree.phase + ')' if tree.phase else ''}: {t['calls']} calls, {t['attempts']} attempts"
        f", {t['cached']} cached, {t['preemptions']} preemptions, {t['user_failures']} user / "
        f"{t['system_failures']} system failures",
        f"  node time: spot {_secs(t['spot_seconds'])}, on-demand {_secs(t['ondemand_seconds'])}; work lost to "
        f"preemptions {_secs(t['lost_work_seconds'])}; checkpoints saved {t['checkpoint_bytes_saved']} B, "
        f"restored {t['checkpoint_bytes_restored']} B",
    ]

    def emit(node: CallNode, depth: int) -> None:
        pad = "  " * depth
        out.append(f"{pad}{node.fqn} [{node.call_id}] → {node.outcome}")
        for e, lost in node.attempts:
            if e.outcome == "cached":
                out.append(f"{pad}  · cached (no attempt ran)")
                continue
            queued = f" queued {_secs(e.queued)}" if e.queued else ""
            extra = f" lost {_secs(lost)}" if lost else ""
            notice = " notice" if e.notice_at else ""
            out.append(
                f"{pad}  #{e.attempt} {e.market:8s} {_node(e):14s} {_secs(e.seconds):>7s}{queued} "
                f"{e.outcome}{extra}{notice}"
            )
            if e.error:
                for line in _wrap(e.error, width - len(pad) - 6):
                    out.append(f"{pad}      {line}")
        for c in node.children:
            emit(c, depth + 1)

    for r in tree.roots:
        emit(r, 1)
    return "\n".join(out)


def tree_html(tree: RunTree) -> str:
    esc = html.escape
    t = tree.totals()
    rows = []

    def emit(node: CallNode, depth: int) -> None:
        for i, (e, lost) in enumerate(node.attempts):
            pad = f"padding-left:{depth * 1.2:.1f}em"
            name = f"<span style='{pad}'>{esc(node.fqn)} <small>{esc(node.call_id)}</small></span>" if i == 0 else ""
            colour = {"spot": "#2a7de1", "ondemand": "#6c757d"}.get(e.market, "#999")
            rows.append(
                "<tr>"
                f"<td>{name}</td><td>{e.attempt}</td>"
                f"<td style='color:{colour}'>{esc(e.market or '-')}</td>"
                f"<td>{esc(_node(e))}</td><td>{_secs(e.seconds)}</td><td>{_secs(e.queued)}</td>"
                f"<td>{esc(e.outcome)}</td><td>{_secs(lost) if lost else ''}</td>"
                f"<td style='white-space:pre-wrap;max-width:40em'>{esc(e.error)}</td>"
                "</tr>"
            )
        for c in node.children:
            emit(c, depth + 1)

    for r in tree.roots:
        emit(r, 0)
    head = "".join(
        f"<th>{h}</th>" for h in ("call", "#", "market", "node", "time", "queued", "outcome", "lost", "error")
    )
    return (
        f"<div><b>run {esc(tree.run)}</b> {esc(tree.phase)} — {t['calls']} calls, {t['attempts']} attempts, "
        f"{t['preemptions']} preemptions, lost work {_secs(t['lost_work_seconds'])}"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
