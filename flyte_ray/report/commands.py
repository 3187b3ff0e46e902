"""``flyte-ray runs``, ``flyte-ray show RUN`` and ``flyte-ray report``: a run's records read back
from storage, from any machine that can read it, after its driver has gone.

The storage is ``--storage URL`` (fsspec options from ``$FLYTE_RAY_STORAGE_OPTIONS``), else
``$FLYTE_RAY_STORAGE``, else ``~/.flyte-ray/storage`` — the same default as ``flyte_ray.init``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
from typing import Optional, Sequence, TextIO

from .._core.runlog import list_runs, load_run
from ..storage import Storage
from ..storage.limits import redact_url
from .tables import build_tree

__all__ = ["runs_main", "show_main", "report_main", "parse_since"]

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str) -> float:
    """``"7d"`` / ``"12h"`` / ``"30m"`` → epoch seconds that long ago."""
    m = _SINCE.match(text or "")
    if not m:
        raise ValueError(f"--since: expected a duration like 30m, 12h, 7d or 2w; got {text[:40]!r}")
    return time.time() - float(m.group(1)) * _UNITS[m.group(2)]


def _storage(url: Optional[str]) -> Storage:
    return Storage(url) if url else Storage()


def _when(t: Optional[float]) -> str:
    if not t:
        return "-"
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def runs_main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    p = argparse.ArgumentParser(prog="flyte-ray runs", description="Recent runs recorded in storage.")
    p.add_argument("--storage", help="storage URL (default: $FLYTE_RAY_STORAGE or ~/.flyte-ray/storage)")
    p.add_argument("--since", default=None, help="only runs started within, e.g. 7d")
    p.add_argument("--limit", type=int, default=50)
    a = p.parse_args(list(argv))
    try:
        since = parse_since(a.since) if a.since else None
    except ValueError as e:
        p.error(str(e))
    storage = _storage(a.storage)
    found = list_runs(storage, since=since, limit=max(1, a.limit))
    if not found:
        print(f"no recorded runs under {redact_url(storage.url)}", file=out)
        return 0
    rows = [("run", "task", "started", "took", "phase")]
    for s in found:
        took = f"{s.ended - s.started:.1f}s" if s.ended and s.started else "-"
        rows.append((s.run, s.task or "-", _when(s.started), took, s.phase))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    return 0


def show_main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    p = argparse.ArgumentParser(prog="flyte-ray show", description="A run's calls and attempts, as a tree.")
    p.add_argument("run")
    p.add_argument("--storage", help="storage URL (default: $FLYTE_RAY_STORAGE or ~/.flyte-ray/storage)")
    a = p.parse_args(list(argv))
    storage = _storage(a.storage)
    log = load_run(storage, a.run)
    if not log.events and log.summary is None:
        print(f"no records of run {a.run!r} under {redact_url(storage.url)}", file=out)
        return 1
    phase = log.summary.phase if log.summary else ""
    print(build_tree(a.run, log.events, phase), file=out)
    if log.summary and log.summary.error:
        print(f"  run error: {log.summary.error}", file=out)
    for s in log.skipped[:10]:
        print(f"  skipped: {s}", file=out)
    return 0


def report_main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    p = argparse.ArgumentParser(
        prog="flyte-ray report",
        description="What a run (or every run of a period) cost, what it saved against on-demand, and what "
        "preemptions threw away; --html also draws the timeline.",
    )
    p.add_argument("run", nargs="?", help="a run name (or use --since)")
    p.add_argument("--since", default=None, help="every run started within, e.g. 7d")
    p.add_argument(
        "--prices",
        default=None,
        help="price table YAML (default: $FLYTE_RAY_PRICES; format: examples/prices.example.yaml)",
    )
    p.add_argument("--cluster-config", default=None, help="a ray up YAML: node type -> instance type")
    p.add_argument("--html", default=None, metavar="FILE", help="also write the timeline page to FILE")
    p.add_argument("--storage", help="storage URL (default: $FLYTE_RAY_STORAGE or ~/.flyte-ray/storage)")
    a = p.parse_args(list(argv))
    if (a.run is None) == (a.since is None):
        p.error("give a run name or --since (e.g. --since 7d), not both")
    from .cost import cost_report
    from .prices import PriceTable, load_prices

    try:
        since = parse_since(a.since) if a.since else None
        source = a.prices or os.environ.get("FLYTE_RAY_PRICES")
        table = load_prices(source) if source else None
        if a.cluster_config:
            base = PriceTable.from_cluster_config(a.cluster_config)
            table = base.merged(table) if table is not None else base
    except (ValueError, OSError) as e:
        p.error(str(e))
    storage = _storage(a.storage)
    names = [a.run] if a.run else [s.run for s in list_runs(storage, since=since, limit=10_000)]
    events = []
    for name in names:
        events.extend(load_run(storage, name).events)
    if not events:
        print(f"no records of {a.run or 'any run since ' + a.since} under {redact_url(storage.url)}", file=out)
        return 1
    report = cost_report(events, table)
    scope = f"run {a.run}" if a.run else f"{len(names)} runs since {_when(since)}"
    print(f"{scope}\n{report.to_text()}", file=out)
    if a.html:
        from .timeline import timeline_html

        with open(a.html, "w", encoding="utf-8") as f:
            f.write(timeline_html(events, title=scope))
        print(f"timeline: {a.html}", file=out)
    return 0
