"""The run timeline (flyte_ray.report.timeline): pure checks of the SVG against the records, and a
real headless-Chromium check that the page renders (skipped, with the install command, when no
browser is found)."""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import time
import xml.etree.ElementTree as ET
import zlib

import pytest

from flyte_ray._core.events import AttemptEvent
from flyte_ray.report.timeline import timeline_html, timeline_svg

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_700_000_000.0
NID = {name: f"{i:02d}" + "ab" * 27 for i, name in enumerate(("spot-1", "spot-2", "spot-10", "od-1", "x"))}


def ev(call: str, attempt: int = 1, **kw) -> AttemptEvent:
    base = dict(
        run="r1",
        call_id=call,
        fqn="pkg.tasks.train",
        attempt=attempt,
        user_attempt=attempt,
        system_failures=0,
        market="spot",
        queue="",
        outcome="succeeded",
        failure_kind=None,
        submitted=T0,
    )
    base.update(kw)
    return AttemptEvent(**base)  # type: ignore[arg-type]


def on(name: str) -> dict:
    """A node's fields (a node with no name keeps only its id: the lane is its first 8 chars)."""
    return dict(node_id=NID[name], node_name=name if name != "x" else "")


def sample() -> list[AttemptEvent]:
    return [
        ev("root", submitted=T0, started=T0 + 1, ended=T0 + 100, market="ondemand", **on("od-1")),
        ev("root/a-0", submitted=T0 + 2, started=T0 + 5, ended=T0 + 40, **on("spot-1"),
           outcome="preemption", failure_kind="system", notice_at=T0 + 30, notice_deadline=T0 + 60),
        ev("root/a-0", 2, submitted=T0 + 41, started=T0 + 45, ended=T0 + 90, **on("spot-2")),
        ev("root/b-0", submitted=T0 + 2, started=T0 + 3, ended=T0 + 20, **on("spot-10"),
           outcome="failed", failure_kind="user", error="ValueError: bad input"),
        ev("root/b-0", 2, submitted=T0 + 21, started=T0 + 22, ended=T0 + 35, **on("spot-10"),
           outcome="node_failure", failure_kind="system"),
        ev("root/b-0", 3, submitted=T0 + 36, ended=T0 + 50, outcome="spot_unavailable", failure_kind="system"),
        ev("root/b-0", 4, submitted=T0 + 51, started=T0 + 52, ended=T0 + 80, market="ondemand", **on("x")),
        ev("root/c-0", submitted=T0 + 3, ended=T0 + 3, market="", outcome="cached"),
        ev("root/d-0", submitted=T0 + 4, started=T0 + 6, ended=T0 + 9, **on("spot-1"), outcome="cancelled"),
    ]  # fmt: skip


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def bars(root: ET.Element) -> list[ET.Element]:
    return [el for el in root.iter(f"{SVG}rect") if "data-call" in el.attrib]


def f(el: ET.Element, name: str) -> float:
    return float(el.attrib[name])


def start_of(e: AttemptEvent) -> float:
    return e.started if e.started is not None else e.submitted


# ---------------------------------------------------------------------------------------------- pure


def test_one_bar_per_attempt_with_the_records_fields() -> None:
    events = sample()
    root = parse(timeline_svg(events, title="run r1"))
    drawn = bars(root)
    want = [e for e in events if e.outcome != "cached"]
    assert len(drawn) == len(want)
    by_key = {(b.attrib["data-call"], int(b.attrib["data-attempt"])): b for b in drawn}
    assert len(by_key) == len(want)
    for e in want:
        b = by_key[(e.call_id, e.attempt)]
        assert b.attrib["data-market"] == e.market
        assert b.attrib["data-outcome"] == e.outcome
        assert f(b, "data-start") == start_of(e)  # exact: started, or submitted when no start
        assert f(b, "data-end") == e.ended
        assert b.attrib["data-node"] == (e.node_id or e.node_name)
        assert f(b, "width") > 0 and f(b, "height") > 0
        tip = b.find(f"{SVG}title")
        assert tip is not None and tip.text
        for part in (e.fqn, e.call_id, f"attempt {e.attempt}", e.outcome, e.market):
            assert part in tip.text
    assert "ValueError: bad input" in (by_key[("root/b-0", 1)].find(f"{SVG}title").text or "")  # type: ignore[union-attr]
    text = "".join(root.itertext())
    assert "1 cache hit (not drawn)" in text and "8 attempts on 5 nodes" in text
    assert "run r1 — started 2023-11-14 22:13:20 UTC" in text


def test_x_and_width_follow_the_times() -> None:
    rnd = random.Random(7)
    events = [
        ev(f"root/t-{i}", submitted=T0 + s, started=T0 + s, ended=T0 + s + d, **on(rnd.choice(["spot-1", "od-1"])))
        for i, (s, d) in enumerate((rnd.uniform(0, 500), rnd.uniform(5, 100)) for _ in range(60))
    ]
    drawn = bars(parse(timeline_svg(events)))
    pts = sorted((f(b, "data-start"), f(b, "data-end"), f(b, "x"), f(b, "width")) for b in drawn)
    for (_, e1, x1, w1), (_, e2, x2, w2) in zip(pts, pts[1:]):
        assert x1 <= x2
        if e1 <= e2:
            assert x1 + w1 <= x2 + w2 + 0.02
    # One scale for all: width / duration is the same for every bar, and so is x - start * scale.
    scales = [w / (e - s) for s, e, _, w in pts]
    assert max(scales) - min(scales) < 0.01 * min(scales)
    offs = [x - s * scales[0] for s, _, x, _ in pts]
    assert max(offs) - min(offs) < 0.05


def test_a_lane_per_node_in_natural_order_with_no_node_last() -> None:
    events = sample()
    root = parse(timeline_svg(events))
    lanes = [el for el in root.iter(f"{SVG}rect") if "data-lane" in el.attrib]
    assert [ln.attrib["data-label"] for ln in lanes] == ["04ababab", "od-1", "spot-1", "spot-2", "spot-10", "(no node)"]
    assert lanes[0].attrib["data-lane"] == NID["x"] and lanes[-1].attrib["data-lane"] == ""
    band = {ln.attrib["data-lane"]: (f(ln, "y"), f(ln, "y") + f(ln, "height")) for ln in lanes}
    for b in bars(root):
        top, bottom = band[b.attrib["data-node"]]
        assert top <= f(b, "y") and f(b, "y") + f(b, "height") <= bottom
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "ft-label"]
    assert labels == ["04ababab", "od-1", "spot-1", "spot-2", "spot-10", "(no node)"]


def test_overlapping_attempts_on_one_node_do_not_overlap_in_the_picture() -> None:
    events = [ev(f"root/p-{i}", submitted=T0 + i, started=T0 + i, ended=T0 + i + 30, **on("spot-1")) for i in range(10)]
    events += [ev(f"root/z-{i}", submitted=T0 + 5, started=T0 + 5, ended=T0 + 5, **on("spot-1")) for i in range(3)]
    events.append(ev("root/open", submitted=T0 + 5, started=T0 + 5, **on("spot-1")))  # no end recorded
    drawn = bars(parse(timeline_svg(events)))
    assert [b.attrib["data-end"] for b in drawn if b.attrib["data-call"] == "root/open"] == [""]
    boxes = [(f(b, "x"), f(b, "x") + f(b, "width"), f(b, "y"), f(b, "y") + f(b, "height")) for b in drawn]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[1] <= b[0] or b[1] <= a[0] or a[3] <= b[2] or b[3] <= a[2], (a, b)


def test_colours_differ_by_market_and_outcomes_are_marked() -> None:
    svg = timeline_svg(sample())
    root = parse(svg)
    style = "".join(s.text or "" for s in root.iter(f"{SVG}style"))
    fills = dict(re.findall(r"\.(ft-spot|ft-od|ft-unk)\{fill:(#[0-9a-f]{6})\}", style))
    assert len(set(fills.values())) == 3
    cls = {(b.attrib["data-call"], b.attrib["data-attempt"]): b.attrib["class"].split() for b in bars(root)}
    assert "ft-spot" in cls[("root/a-0", "2")] and "ft-od" in cls[("root", "1")]
    assert "ft-lost" in cls[("root/a-0", "1")] and "ft-lost" in cls[("root/b-0", "2")]
    assert "ft-fail" in cls[("root/b-0", "1")] and "ft-cancel" in cls[("root/d-0", "1")]
    assert not {"ft-lost", "ft-fail", "ft-cancel"} & set(cls[("root/a-0", "2")])
    # A red ✕ at the end of each preempted / node-lost bar (the legend's own is inside its group).
    marks = [p for p in root.findall(f"{SVG}path") if p.get("class") == "ft-x"]
    assert len(marks) == 2
    lost = [b for b in bars(root) if b.attrib["data-outcome"] in ("preemption", "node_failure")]
    ends = sorted(f(b, "x") + f(b, "width") for b in lost)
    centres = sorted(float(re.match(r"M([\d.]+)", p.attrib["d"]).group(1)) for p in marks)  # type: ignore[union-attr]
    assert all(abs(c - e) <= 7 for c, e in zip(centres, ends))


def test_notice_tick_and_span() -> None:
    events = sample()
    root = parse(timeline_svg(events))
    notices = [g for g in root.iter(f"{SVG}g") if "data-call" in g.attrib]
    assert len(notices) == 1
    g = notices[0]
    assert (g.attrib["data-call"], g.attrib["data-attempt"]) == ("root/a-0", "1")
    bar = next(b for b in bars(root) if b.attrib["data-call"] == "root/a-0" and b.attrib["data-attempt"] == "1")
    scale = f(bar, "width") / 35.0  # the bar runs T0+5 → T0+40
    tick = g.find(f"{SVG}line")
    span = g.find(f"{SVG}rect")
    assert tick is not None and span is not None
    assert abs(f(tick, "x1") - (f(bar, "x") + 25 * scale)) < 0.05  # notice at T0+30
    assert f(tick, "x1") == f(tick, "x2") and f(tick, "y1") < f(bar, "y") < f(tick, "y2")
    assert abs(f(span, "x") - f(tick, "x1")) < 0.01 and abs(f(span, "width") - 30 * scale) < 0.05
    tip = bar.find(f"{SVG}title")
    assert tip is not None and "preemption notice at +30.0s, node gone by +1m00s" in (tip.text or "")


HOSTILE = "<script>window.__pwned=1</script>\"'&"


def hostile_events() -> list[AttemptEvent]:
    return [
        ev(
            "root/<b>x</b>&\"'",
            submitted=T0,
            started=T0 + 1,
            ended=T0 + 9,
            node_id="n1",
            node_name=HOSTILE,
            fqn="</title><script>window.__pwned=2</script>",
            outcome="failed",
            error='"><img src=x onerror="window.__pwned=3"><svg onload="window.__pwned=4">'
            + "\x1b[31mred\x1b[0m \x00\x07 \ud800 tail",
            market='spot"><script>',
        )
    ]


def test_hostile_strings_cannot_inject_markup() -> None:
    events = hostile_events()
    svg = timeline_svg(events, title="</svg><script>window.__pwned=5</script>")
    page = timeline_html(events, title="</title><script>window.__pwned=6</script>")
    page.encode("utf-8")  # no lone surrogate left
    root = parse(svg)  # well-formed XML despite control characters
    tags = {el.tag.replace(SVG, "") for el in root.iter()}
    assert tags <= {"svg", "title", "style", "g", "rect", "text", "path", "line"}, tags
    assert not any(k.startswith("on") for el in root.iter() for k in el.attrib)
    for doc in (svg, page):
        assert "<script" not in doc.lower() and "<img" not in doc.lower() and "<b>" not in doc
    (bar,) = bars(root)
    assert bar.attrib["data-call"] == "root/<b>x</b>&\"'"  # round-trips as text
    assert bar.attrib["data-market"] == 'spot"><script>'
    assert bar.attrib["data-node"] == "n1"
    tip = bar.find(f"{SVG}title")
    assert tip is not None and tip.text is not None
    assert HOSTILE in tip.text and "red \ufffd\ufffd \ufffd tail" in tip.text and "\x1b" not in tip.text
    assert HOSTILE in "".join(root.itertext())  # the lane label, escaped, reads as the text it was


def test_error_in_the_tooltip_is_cut_to_300_chars() -> None:
    (e,) = [ev("root", started=T0, ended=T0 + 1, outcome="failed", error="E" * 1000, **on("spot-1"))]
    tip = bars(parse(timeline_svg([e])))[0].find(f"{SVG}title")
    assert tip is not None and "error: " + "E" * 300 + "" in (tip.text or "") and "E" * 301 not in (tip.text or "")


def test_empty_input_gives_a_valid_picture_and_page() -> None:
    root = parse(timeline_svg([]))
    assert "No attempts recorded." in "".join(root.itertext()) and not bars(root)
    page = timeline_html([], title="run r9")
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert "No attempts recorded for this run." in page and "<svg" in page and "run r9" in page
    only_cached = parse(timeline_svg([ev("root", market="", outcome="cached", ended=T0)]))
    text = "".join(only_cached.itertext())
    assert "every call was a cache hit" in text and "1 cache hit (not drawn)" in text


def test_output_is_deterministic_and_order_free() -> None:
    events = sample() + hostile_events()
    a = timeline_html(events, title="t")
    shuffled = list(events)
    random.Random(3).shuffle(shuffled)
    assert timeline_html(shuffled, title="t") == a
    assert timeline_html(reversed(events), title="t") == a  # any iterable


def test_page_is_offline_and_has_the_table() -> None:
    events = sample()
    page = timeline_html(events)
    assert not re.search(r"""(src|href)\s*=|<link|@import|url\(""", page, re.I)
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}  # the SVG namespace
    assert "Content-Security-Policy" in page
    assert page.count("<tr>") == 1 + len(events)  # header + every record (the cache hit too)


def test_axis_ticks_are_readable() -> None:
    def ticks(span: float) -> list[str]:
        es = [ev("root", started=T0, ended=T0 + span, **on("spot-1"))]
        return [t.text or "" for t in parse(timeline_svg(es)).iter(f"{SVG}text") if t.get("class") == "ft-axis"]

    assert ticks(20) == ["0s", "5s", "10s", "15s", "20s"]
    assert ticks(600)[:3] == ["0s", "2m", "4m"] and ticks(600)[-1] == "10m"
    assert ticks(5400)[:3] == ["0s", "15m", "30m"] and "1h" in ticks(5400) and "1h30m" in ticks(5400)
    assert all(4 <= len(ticks(s)) <= 12 for s in (0.4, 3, 47, 999, 7777, 86400 * 3))


def many(n: int, seed: int = 1) -> list[AttemptEvent]:
    rnd = random.Random(seed)
    nodes = [(f"{rnd.getrandbits(224):056x}", f"node-{i}", "spot" if i < 30 else "ondemand") for i in range(40)]
    outs = ["succeeded"] * 7 + ["preemption", "failed", "node_failure", "oom", "spot_unavailable", "cached"]
    out = []
    for i in range(n):
        nid, name, market = rnd.choice(nodes)
        o = rnd.choice(outs)
        sub = T0 + rnd.uniform(0, 3600)
        st: float | None = sub + rnd.uniform(0, 20)
        en = (st or sub) + rnd.uniform(1, 300)
        extra: dict = {}
        if o in ("spot_unavailable", "cached"):
            nid = name = ""
            st = None
            market = "" if o == "cached" else market
        if o == "preemption":
            extra = dict(notice_at=en - 30, notice_deadline=en + 90)
        out.append(
            ev(f"root/t-{i}", 1 + i % 3, submitted=sub, started=st, ended=en, node_id=nid, node_name=name,
               market=market, outcome=o, error="Traceback: boom " * 30 if o == "failed" else "", **extra)
        )  # fmt: skip
    return out


def test_ten_thousand_attempts_render_fast_and_bounded() -> None:
    events = many(10_000)
    t = time.perf_counter()
    svg = timeline_svg(events)
    t_svg = time.perf_counter() - t
    t = time.perf_counter()
    page = timeline_html(events)
    t_page = time.perf_counter() - t
    size = len(page.encode("utf-8"))
    print(f"\n10,000 records: svg {t_svg:.2f}s {len(svg) / 1e6:.1f} MB, page {t_page:.2f}s {size / 1e6:.1f} MB")
    assert t_svg < 5 and t_page < 5
    assert size < 8_000_000  # about 500 bytes a bar (ids, tooltip), no per-bar text
    assert len(bars(parse(svg))) == sum(1 for e in events if e.outcome != "cached")


# ------------------------------------------------------------------------------------ real browser

CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL = (
    "install a Chromium and the Playwright driver: `apt-get install -y chromium` (Debian/Ubuntu) and "
    "`pip install playwright`, or `pip install playwright && python -m playwright install --with-deps chromium` "
    "where the browser download is reachable; FLYTE_RAY_CHROMIUM=/path/to/chrome picks a browser"
)


def _png_rgb(data: bytes) -> tuple[int, int, list[bytes], int]:
    """Width, height, unfiltered rows and bytes per pixel of an 8-bit RGB(A) PNG (what Chromium
    writes); enough of PNG for a pixel check without an imaging library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    h = depth = ctype = 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
        elif kind == b"IDAT":
            idat += body
    bpp = 3 if ctype == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        ft, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ft == 1:
                line[i] = (line[i] + a) & 255
            elif ft == 2:
                line[i] = (line[i] + b) & 255
            elif ft == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ft == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows, bpp


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip(f"no Playwright: {INSTALL}")
    exe = os.environ.get("FLYTE_RAY_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")) if p),
        None,
    )
    with sync_playwright() as pw:
        try:  # a system Chromium, else the one `playwright install chromium` downloaded
            b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=30_000)
        except Error as e:
            pytest.skip(f"no headless Chromium could start ({str(e).splitlines()[0]}): {INSTALL}")
        yield b
        b.close()


@pytest.mark.timeout(90)
def test_page_renders_in_headless_chromium(browser, tmp_path) -> None:
    events = sample() + hostile_events() + many(300, seed=5)
    path = tmp_path / "timeline.html"
    path.write_text(timeline_html(events, title="browser check"), encoding="utf-8")
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri(), wait_until="load")
    assert requests == [path.as_uri()]  # nothing fetched but the page itself: it opens offline
    got = page.evaluate(
        """() => {
        const bars = [...document.querySelectorAll('rect[data-call]')];
        const hit = (r) => { const b = r.getBoundingClientRect();
            return document.elementFromPoint(b.left + b.width / 2, b.top + b.height / 2) === r; };
        return {
            n: bars.length,
            sized: bars.filter(r => { const b = r.getBoundingClientRect(); return b.width > 0 && b.height > 0; })
                .length,
            fills: Object.fromEntries(['spot', 'ondemand'].map(m => [m,
                [...new Set(bars.filter(r => r.dataset.market === m).map(r => getComputedStyle(r).fill))]])),
            missed: bars.filter(r => !r.dataset.call.startsWith('root/t-'))
                .filter(r => { r.scrollIntoView({block: 'center', inline: 'center'}); return !hit(r); })
                .map(r => r.dataset.call + '#' + r.dataset.attempt),
            curated: bars.filter(r => !r.dataset.call.startsWith('root/t-')).length,
            rows: document.querySelectorAll('table.ft-attempts tbody tr').length,
            pwned: window.__pwned === undefined ? null : window.__pwned,
            scripts: document.querySelectorAll('script, img, iframe, object').length,
        };
    }"""
    )
    drawn = [e for e in events if e.outcome != "cached"]
    assert got["n"] == len(drawn) and got["sized"] == len(drawn)
    assert got["fills"] == {"spot": ["rgb(242, 142, 43)"], "ondemand": ["rgb(78, 121, 167)"]}
    assert got["rows"] == len(events) and got["pwned"] is None and got["scripts"] == 0 and not errors
    # Each hand-made bar is the topmost element at its centre: hovering it shows its tooltip.
    assert got["curated"] == 9 and got["missed"] == [], got
    # Pixels: a spot bar's centre is painted in the spot colour, an on-demand bar's in its own.
    for call, want in (("root/a-0", (242, 142, 43)), ("root", (78, 121, 167))):
        bar = page.locator(f'rect[data-call="{call}"]').last
        box = bar.bounding_box()
        assert box and box["width"] > 4 and box["height"] > 4
        w, h, rows, bpp = _png_rgb(bar.screenshot())
        px = rows[h // 2][(w // 2) * bpp : (w // 2) * bpp + 3]
        assert all(abs(a - b) <= 12 for a, b in zip(px, want)), (call, tuple(px), want)
    page.close()
