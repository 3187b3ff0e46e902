"""The timeline picture of a run: one lane per node, one bar per attempt.

:func:`timeline_svg` draws a self-contained SVG; :func:`timeline_html` wraps it in a page (UTF-8,
no script, no external resource: it opens offline) with a table of the attempts under it.

* **Lanes**: one per node (labelled with its name, or the first 8 characters of its id), sorted by
  label in natural order (``spot-2`` before ``spot-10``); attempts that never reached a node
  (``spot_unavailable``, ``queued_timeout``, ...) share a last lane, ``(no node)``. Attempts that
  overlap on one node are stacked in sub-rows (at most :data:`MAX_SUBROWS` a lane; past that they
  overlap).
* **Bars** run from the attempt's start (its submission when it never reported one) to its end,
  filled by market (spot / on-demand / unknown, see the legend). The outcome is drawn on top:
  preemption and node failure get a red outline and a red ✕ at the end; other failures a dark
  outline on a paler bar; cancelled a dashed outline. A preemption notice is a red tick at
  ``notice_at`` with a faint red span to ``notice_deadline``. Cache hits are not bars: the footer
  counts them.
* **For tools**: every bar is a ``<rect>`` carrying ``data-call``, ``data-attempt``,
  ``data-market``, ``data-outcome``, ``data-start``, ``data-end`` (epoch seconds, exactly the
  record's: ``float(attr) == event.started``; ``data-end`` is empty when the record has no end)
  and ``data-node`` (the node's id, or its name when it has no id; empty in the ``(no node)``
  lane); its ``<title>`` child is the tooltip. Nothing else in the picture has ``data-call``
  except the notice groups (``<g class="ft-notice">``). Each lane has a band
  ``<rect class="ft-lane" data-lane=NODE data-label=LABEL>`` spanning its height.
* **Untrusted text**: node names, ids and errors come from storage. Every string goes through
  :func:`_esc`: ANSI colour codes dropped, characters XML cannot hold replaced, then
  ``html.escape`` (quotes too), so neither the SVG nor the page can be given markup.
* **Deterministic**: the output depends only on the set of events, not their order, the clock or
  the local time zone (the wall-clock start is printed in UTC).
* **Size**: no per-bar text but the tooltip, coordinates to 0.01 px, styling by CSS class;
  10,000 attempts render in about 0.2 s to about 5 MB of SVG (about 500 bytes a bar, most of it
  the node id and the tooltip; measured by the tests' scale check).

Hand-written SVG rather than a plotting library: the picture is rectangles, lines and a few
labels; what a library would add (matplotlib's SVG backend, plotly's 3 MB of JavaScript) is weight,
slowness at 10,000 bars, or a script, and none of them gives per-bar data attributes and tooltips
without post-processing. Escaping is the one thing a template engine would give us; here it is a
single function that every interpolated string goes through, and the tests feed it hostile text.
"""

from __future__ import annotations

import heapq
import html
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Optional

from flyte_ray._core.events import AttemptEvent

__all__ = ["timeline_svg", "timeline_html", "MAX_SUBROWS", "MAX_TABLE_ROWS"]

#: Overlapping attempts on one node stack in at most this many sub-rows; past that they overlap.
MAX_SUBROWS = 32
#: The page's table lists at most this many attempts (the picture carries all of them).
MAX_TABLE_ROWS = 2000
_ERROR_CHARS = 300
_LABEL_CHARS = 24
_NO_NODE = "(no node)"

# Colours (Tableau 10): spot orange, on-demand blue, unknown grey; red for loss, dark for failure.
_FILL = {"spot": "#f28e2b", "ondemand": "#4e79a7"}
_FILL_OTHER = "#9d9d9d"
_MARKET_CLASS = {"spot": "ft-spot", "ondemand": "ft-od"}
_LOST = frozenset({"preemption", "node_failure"})
_OK = frozenset({"succeeded"})
_CANCELLED = frozenset({"cancelled"})

_STYLE = (
    ".ft-spot{fill:#f28e2b}.ft-od{fill:#4e79a7}.ft-unk{fill:#9d9d9d}"
    ".ft-fail{fill-opacity:.55;stroke:#222;stroke-width:1}"
    ".ft-lost{stroke:#d62728;stroke-width:1.2}"
    ".ft-cancel{fill-opacity:.45;stroke:#555;stroke-width:1;stroke-dasharray:2 2}"
    ".ft-x{stroke:#d62728;stroke-width:1.6;fill:none;pointer-events:none}"
    ".ft-notice line{stroke:#d62728;stroke-width:1.5}"
    ".ft-notice rect{fill:#d62728;fill-opacity:.15;pointer-events:none}"
    ".ft-grid{stroke:#e3e3e3;stroke-width:1}"
    ".ft-lane{fill:#f7f7f7}.ft-lane.ft-odd{fill:none}"
    ".ft-axis{fill:#555;font-size:10px}"
    ".ft-label{fill:#222;font-size:11px}"
    ".ft-title{font-size:14px;font-weight:600;fill:#111}"
    ".ft-note{fill:#444;font-size:11px}"
)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Characters XML 1.0 cannot hold (C0 controls but tab/newline/return, lone surrogates, U+FFFE/F).
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _esc(s: object) -> str:
    """Untrusted text made safe for XML/HTML text and quoted attribute values."""
    return html.escape(_NOT_XML.sub("\ufffd", _ANSI.sub("", str(s))), quote=True)


def _n(v: float) -> str:
    """A coordinate: at most two decimals, no trailing zeros."""
    s = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _dur(s: float) -> str:
    """Seconds for a person: ``0.42s``, ``12.3s``, ``4m05s``, ``2h03m``."""
    if s < 10:
        return f"{s:.2f}s"
    if s < 60:
        return f"{s:.1f}s"
    s = int(round(s))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _tick_label(s: float) -> str:
    """An axis tick (a whole number of the tick step): ``0s``, ``45s``, ``2m``, ``1m30s``, ``1h05m``."""
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        m, r = divmod(s, 60)
        return f"{m}m" if r == 0 else f"{m}m{r:02d}s"
    h, r = divmod(s, 3600)
    return f"{h}h" if r == 0 else f"{h}h{r // 60:02d}m"


_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _tick_step(span: float, target: int = 8) -> float:
    """A readable tick step giving about ``target`` ticks over ``span`` seconds."""
    want = span / target
    if want < 1:  # sub-second runs: 0.1, 0.2, 0.5, ...
        p = 10.0 ** math.floor(math.log10(max(want, 1e-6)))
        return next(m * p for m in (1, 2, 5, 10) if m * p >= want)
    for st in _STEPS:
        if st >= want:
            return float(st)
    return float(math.ceil(want / 86400) * 86400)


def _wall(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _natural(s: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", s.lower()) if p)


def _lane_key(e: AttemptEvent) -> str:
    return e.node_id or e.node_name


def _lane_label(e: AttemptEvent) -> str:
    return e.node_name or e.node_id[:8] or _NO_NODE


def _start(e: AttemptEvent) -> float:
    return e.started if e.started is not None else e.submitted


def _end(e: AttemptEvent) -> float:
    return max(_start(e), e.ended) if e.ended is not None else _start(e)


def _order(e: AttemptEvent) -> tuple:
    """A total order on events (so that the picture does not depend on the input's order)."""
    return (
        _start(e),
        _end(e),
        e.call_id,
        e.attempt,
        e.node_id,
        e.node_name,
        e.market,
        e.outcome,
        e.submitted,
        e.ended if e.ended is not None else -math.inf,
        e.notice_at if e.notice_at is not None else -math.inf,
        e.notice_deadline if e.notice_deadline is not None else -math.inf,
        e.fqn,
        e.error,
    )


def _fnum(v: Optional[float]) -> str:
    """An epoch time for a data attribute: exact (``float()`` reads back the same number)."""
    return "" if v is None else repr(float(v))


@dataclass
class _Lane:
    key: str
    label: str
    bars: list  # [(event, subrow)]
    rows: int = 1
    y: float = 0.0
    h: float = 0.0


def _pack(events: list[AttemptEvent], min_len: float) -> tuple[list, int]:
    """Each event (sorted by start) with the lowest sub-row free at its start, a bar taking at
    least ``min_len`` seconds (its drawn width is at least a pixel); the rows used."""
    busy: list[tuple[float, int]] = []  # (end, row)
    free: list[int] = []
    out = []
    rows = 0
    for e in events:
        s = _start(e)
        while busy and busy[0][0] <= s:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            row = heapq.heappop(free)
        elif rows < MAX_SUBROWS:
            row, rows = rows, rows + 1
        else:  # every row busy: share the one that frees first
            row = heapq.heappop(busy)[1]
        heapq.heappush(busy, (max(_end(e), s + min_len), row))
        out.append((e, row))
    return out, max(rows, 1)


def _lanes(bars: list[AttemptEvent], min_len: float) -> list[_Lane]:
    by_key: dict[str, list[AttemptEvent]] = {}
    for e in bars:
        by_key.setdefault(_lane_key(e), []).append(e)
    lanes = []
    for key, evs in by_key.items():
        evs.sort(key=_order)
        label = _NO_NODE if key == "" else min((_lane_label(e) for e in evs), key=lambda s: (_natural(s), s))
        packed, rows = _pack(evs, min_len)
        lanes.append(_Lane(key=key, label=label, bars=packed, rows=rows))
    lanes.sort(key=lambda ln: (ln.key == "", _natural(ln.label), ln.label, ln.key))
    return lanes


def _tooltip(e: AttemptEvent, t0: float, node: str) -> str:
    lines = [
        e.fqn or "(unnamed task)",
        f"call {e.call_id} · attempt {e.attempt}",
        f"{e.market or '—'} · node {node}" + (f" ({e.node_id})" if e.node_id and e.node_id != node else ""),
        e.outcome + (f" ({e.failure_kind})" if e.failure_kind else ""),
    ]
    s = _start(e)
    when = f"+{_dur(s - t0)}"
    if e.ended is not None:
        lines.append(f"ran {_dur(_end(e) - s)}, {when} → +{_dur(_end(e) - t0)}")
    else:
        lines.append(f"started {when}, no end recorded")
    if e.started is not None and e.started > e.submitted:
        lines.append(f"queued {_dur(e.started - e.submitted)}")
    if e.notice_at is not None:
        n = f"preemption notice at +{_dur(e.notice_at - t0)}"
        if e.notice_deadline is not None:
            n += f", node gone by +{_dur(e.notice_deadline - t0)}"
        lines.append(n)
    if e.error:
        lines.append("error: " + e.error[:_ERROR_CHARS])
    return "\n".join(lines)


def _clip(s: str, n: int = _LABEL_CHARS) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def timeline_svg(events: Iterable[AttemptEvent], *, title: str = "", width: int = 1100) -> str:
    """The run's timeline as a self-contained SVG document (see the module's docstring)."""
    evs = sorted(events, key=_order)
    cached = [e for e in evs if e.outcome == "cached"]
    bars = [e for e in evs if e.outcome != "cached"]
    width = max(int(width), 400)
    label_w, right = 170.0, 20.0
    plot_x, plot_w = label_w, width - label_w - right

    times = [e.submitted for e in evs] + [_start(e) for e in bars]
    t0 = min(times) if times else 0.0
    ends = [_end(e) for e in bars] + [t for e in bars for t in (e.notice_at, e.notice_deadline) if t is not None]
    t1 = max([t0, *ends])
    span = max(t1 - t0, 1.0)  # at least a second: an instant run still gets a readable axis
    step = _tick_step(span)
    # The axis ends on a whole tick, so the scale is the same whatever the last bar's end.
    span = math.ceil(span / step - 1e-9) * step
    scale = plot_w / span

    def x(t: float) -> float:
        return plot_x + (t - t0) * scale

    heading = title or "Run timeline"
    if times:
        heading += f" — started {_wall(t0)}"
    out: list[str] = []
    y = 20.0
    out.append(f'<text class="ft-title" x="8" y="{_n(y)}">{_esc(heading)}</text>')

    # Legend.
    y += 20
    lx = 8.0
    out.append('<g class="ft-legend">')
    for cls, text in (("ft-spot", "spot"), ("ft-od", "on-demand"), ("ft-unk", "other")):
        out.append(f'<rect class="{cls}" x="{_n(lx)}" y="{_n(y - 9)}" width="14" height="10"/>')
        out.append(f'<text class="ft-note" x="{_n(lx + 18)}" y="{_n(y)}">{text}</text>')
        lx += 26 + 7 * len(text)
    out.append(f'<rect class="ft-unk ft-fail" x="{_n(lx)}" y="{_n(y - 9)}" width="14" height="10"/>')
    out.append(f'<text class="ft-note" x="{_n(lx + 18)}" y="{_n(y)}">failed</text>')
    lx += 70
    out.append(f'<path class="ft-x" d="M{_n(lx)} {_n(y - 9)}l10 10m0 -10l-10 10"/>')
    out.append(f'<text class="ft-note" x="{_n(lx + 16)}" y="{_n(y)}">preempted / node lost</text>')
    lx += 170
    out.append(f'<g class="ft-notice"><rect x="{_n(lx)}" y="{_n(y - 9)}" width="18" height="10"/>')
    out.append(f'<line x1="{_n(lx)}" y1="{_n(y - 11)}" x2="{_n(lx)}" y2="{_n(y + 2)}"/></g>')
    out.append(f'<text class="ft-note" x="{_n(lx + 24)}" y="{_n(y)}">preemption notice → deadline</text></g>')

    lanes = _lanes(bars, 1.0 / scale)
    total_rows = sum(ln.rows for ln in lanes)
    pitch = max(4.0, min(14.0, math.floor(2400 / total_rows))) if total_rows else 14.0
    bar_h = pitch - 2 if pitch >= 6 else pitch - 1

    # Axis labels above the lanes.
    y += 22
    axis_y = y
    plot_top = y + 6
    ly = plot_top
    for ln in lanes:
        ln.y = ly
        ln.h = max(ln.rows * pitch, 12.0) + 4
        ly += ln.h
    plot_bottom = ly

    grid: list[str] = []
    k = 0
    while k * step <= span + 1e-9:
        gx = plot_x + k * step * scale
        grid.append(f'<line class="ft-grid" x1="{_n(gx)}" y1="{_n(plot_top)}" x2="{_n(gx)}" y2="{_n(plot_bottom)}"/>')
        out.append(f'<text class="ft-axis" x="{_n(gx)}" y="{_n(axis_y)}" text-anchor="middle">')
        out.append(f"{_tick_label(k * step) if step >= 1 else f'{k * step:.3g}s'}</text>")
        k += 1

    for i, ln in enumerate(lanes):  # a band per lane (shaded every other one); data-lane is the node
        out.append(
            f'<rect class="ft-lane{"" if i % 2 == 0 else " ft-odd"}" x="0" y="{_n(ln.y)}" width="{width}"'
            f' height="{_n(ln.h)}" data-lane="{_esc(ln.key)}" data-label="{_esc(ln.label)}"/>'
        )
    out.extend(grid)

    for ln in lanes:
        label = _clip(ln.label)
        full = ln.label + (f" ({ln.key})" if ln.key and ln.key != ln.label else "")
        out.append(
            f'<text class="ft-label" x="8" y="{_n(ln.y + min(ln.h, 16) - 4)}">'
            f"{_esc(label)}<title>{_esc(full)}</title></text>"
        )
        marks: list[str] = []
        for e, row in ln.bars:
            bx = x(_start(e))
            bw = max((_end(e) - _start(e)) * scale, 1.0)
            by = ln.y + 2 + row * pitch + (pitch - bar_h) / 2
            cls = _MARKET_CLASS.get(e.market, "ft-unk")
            if e.outcome in _LOST:
                cls += " ft-lost"
            elif e.outcome in _CANCELLED:
                cls += " ft-cancel"
            elif e.outcome not in _OK:
                cls += " ft-fail"
            out.append(
                f'<rect class="{cls}" x="{_n(bx)}" y="{_n(by)}" width="{_n(bw)}" height="{_n(bar_h)}"'
                f' data-call="{_esc(e.call_id)}" data-attempt="{e.attempt}" data-market="{_esc(e.market)}"'
                f' data-outcome="{_esc(e.outcome)}" data-start="{_fnum(_start(e))}" data-end="{_fnum(e.ended)}"'
                f' data-node="{_esc(e.node_id or e.node_name)}"><title>{_esc(_tooltip(e, t0, ln.label))}</title></rect>'
            )
            if e.outcome in _LOST:
                r = max(bar_h / 2, 3.0)
                cx, cy = bx + bw, by + bar_h / 2
                marks.append(
                    f'<path class="ft-x" d="M{_n(cx - r)} {_n(cy - r)}l{_n(2 * r)} {_n(2 * r)}'
                    f'm0 {_n(-2 * r)}l{_n(-2 * r)} {_n(2 * r)}"/>'
                )
            if e.notice_at is not None:
                nx = x(e.notice_at)
                g = f'<g class="ft-notice" data-call="{_esc(e.call_id)}" data-attempt="{e.attempt}">'
                if e.notice_deadline is not None and e.notice_deadline > e.notice_at:
                    g += (
                        f'<rect x="{_n(nx)}" y="{_n(by)}" width="{_n((e.notice_deadline - e.notice_at) * scale)}"'
                        f' height="{_n(bar_h)}"/>'
                    )
                g += f'<line x1="{_n(nx)}" y1="{_n(by - 2)}" x2="{_n(nx)}" y2="{_n(by + bar_h + 2)}"/></g>'
                marks.append(g)
        out.extend(marks)

    y = plot_bottom + 18
    if not bars:
        msg = "No attempts recorded." if not cached else "No attempts to draw: every call was a cache hit."
        out.append(f'<text class="ft-note" x="8" y="{_n(y)}">{msg}</text>')
        y += 16
    nodes = sum(1 for ln in lanes if ln.key)
    foot = f"{len(bars)} attempt{'s' if len(bars) != 1 else ''} on {nodes} node{'s' if nodes != 1 else ''}"
    foot += f" · {len(cached)} cache hit{'s' if len(cached) != 1 else ''} (not drawn)"
    out.append(f'<text class="ft-note" x="8" y="{_n(y)}">{foot}</text>')
    height = y + 10

    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="ft-timeline" width="{width}" height="{_n(height)}"'
        f' viewBox="0 0 {width} {_n(height)}" font-family="system-ui, -apple-system, Segoe UI, sans-serif"'
        f' role="img" aria-label="{_esc(heading)}">'
        f"<title>{_esc(heading)}</title><style>{_STYLE}</style>" + "".join(out) + "</svg>"
    )


_PAGE_STYLE = (
    "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:16px;color:#111}"
    ".wrap{overflow-x:auto}"
    "table{border-collapse:collapse;font-size:12px;margin-top:16px}"
    "th,td{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}"
    "td.err{max-width:40em;white-space:pre-wrap;word-break:break-word;color:#a00}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums}"
)


def timeline_html(events: Iterable[AttemptEvent], *, title: str = "") -> str:
    """A self-contained HTML page: the timeline picture and a table of the attempts under it.

    No script, no external resource (a Content-Security-Policy forbids both), so it opens offline
    and hostile text in the records cannot run."""
    evs = sorted(events, key=_order)
    svg = timeline_svg(evs, title=title)
    heading = title or "Run timeline"
    t0 = min([e.submitted for e in evs] + [_start(e) for e in evs if e.outcome != "cached"], default=0.0)
    rows: list[str] = []
    for e in evs[:MAX_TABLE_ROWS]:
        dur = "" if e.outcome == "cached" or e.ended is None else _dur(_end(e) - _start(e))
        node = _lane_label(e) if (e.node_id or e.node_name) else ""
        rows.append(
            f'<tr><td class="num">+{_esc(_dur(_start(e) - t0))}</td><td>{_esc(e.call_id)}</td>'
            f'<td>{_esc(e.fqn)}</td><td class="num">{e.attempt}</td><td>{_esc(e.market)}</td>'
            f"<td>{_esc(node)}</td><td>{_esc(e.outcome)}</td>"
            f'<td class="num">{_esc(dur)}</td><td class="err">{_esc(e.error[:_ERROR_CHARS])}</td></tr>'
        )
    if evs:
        more = len(evs) - len(rows)
        note = (
            f"<p>Showing the first {len(rows)} of {len(evs)} records; every attempt is in the picture"
            " (hover a bar, or read its data-* attributes).</p>"
            if more > 0
            else ""
        )
        table = (
            '<table class="ft-attempts"><thead><tr><th>start</th><th>call</th><th>task</th><th>attempt</th>'
            "<th>market</th><th>node</th><th>outcome</th><th>duration</th><th>error</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
            + note
        )
    else:
        table = '<p class="ft-empty">No attempts recorded for this run.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(heading)}</title><style>{_PAGE_STYLE}</style></head><body>"
        f'<div class="wrap">{svg}</div>{table}</body></html>\n'
    )
