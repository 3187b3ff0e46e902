"""A task's HTML report: flyte-sdk's ``flyte.report`` (``log``, ``replace``, ``get_tab``,
``flush``, ``current_report``), kept with the run in its storage.

Rules:

* Inside a task made with ``report=True``, each attempt has one :class:`Report` (tabs of HTML
  fragments; the main tab is ``"main"``). ``flush()`` stores the whole page, every tab, as one
  object ``reports/<run>/<call id>/attempt-<n>.html`` under the run's storage, written
  atomically: a reader sees the previous page or the new one, never half of one. The attempt's
  end flushes what is left unflushed (flyte-sdk asks you to flush; forgetting costs nothing here).
* Outside such a task (a task without ``report=True``, the driver) the report is a dummy, as in
  flyte-sdk: content is kept in memory and ``flush()`` stores nothing (one warning per process
  inside a task, so a forgotten ``report=True`` is noticed).
* Content is the task's own HTML, stored as given: a page is as trusted as the task that wrote
  it. Tab names are escaped.
* ``Run.report(call_id)`` reads a page back (:func:`read_report`), from any machine that can
  read the storage, after the driver has gone too.
* ``log``, ``replace`` and ``flush`` block; ``.aio`` forms run them in a worker thread.
"""

from __future__ import annotations

import html
import logging
import re
import threading
from typing import Any, Dict, List, Optional

from ..checkpoint.syncaio import SyncAioFunction, sync_aio
from ..context import TaskContext, ctx, current_settings

__all__ = ["Report", "Tab", "current_report", "flush", "get_tab", "log", "read_report", "replace"]

logger = logging.getLogger(__name__)

MAIN_TAB = "main"
_ATTEMPT_RE = re.compile(r"attempt-(\d+)\.html")


class Tab:
    """One tab of a report: HTML fragments, shown in order."""

    def __init__(self, name: str, report: "Report") -> None:
        self.name = name
        self._report = report
        self.content: List[str] = []

    @sync_aio
    def log(self, content: str) -> None:
        """Append an HTML fragment (not a whole document: it goes inside a ``<div>``)."""
        self._report._add(self, _fragment(content, "log"), replace=False)

    @sync_aio
    def replace(self, content: str) -> None:
        """Replace the tab's content with an HTML fragment."""
        self._report._add(self, _fragment(content, "replace"), replace=True)

    def get_html(self) -> str:
        return "\n".join(self.content)

    def __repr__(self) -> str:
        return f"<report tab {self.name!r}: {len(self.content)} fragment(s)>"


class Report:
    """The tabs of one attempt's report; see the module docstring."""

    def __init__(self, name: str, context: Optional[TaskContext] = None, kept: bool = False) -> None:
        self.name = name
        self.tabs: Dict[str, Tab] = {MAIN_TAB: Tab(MAIN_TAB, self)}
        self._context = context
        self._kept = kept  # flush stores the page (a report=True task)
        self._dirty = False
        self._lock = threading.Lock()  # .aio forms run in threads

    def get_tab(self, name: str, create_if_missing: bool = True) -> Optional[Tab]:
        if not isinstance(name, str) or not name:
            raise TypeError(f"report.get_tab.name: expected a non-empty string, got {name!r}")
        with self._lock:
            tab = self.tabs.get(name)
            if tab is None and create_if_missing:
                tab = self.tabs[name] = Tab(name, self)
            return tab

    def _add(self, tab: Tab, content: str, replace: bool) -> None:
        with self._lock:
            if replace:
                tab.content = [content]
            else:
                tab.content.append(content)
            self._dirty = True

    def get_final_report(self) -> str:
        """The whole page: a self-contained HTML document with one section per tab."""
        with self._lock:
            tabs = [(t.name, t.get_html()) for t in self.tabs.values() if t.content or t.name == MAIN_TAB]
        return _page(self.name, tabs)

    def flush(self) -> Optional[str]:
        """Store the page now (see the module docstring); its URL, or None for a dummy report."""
        if not self._kept:
            return None
        c = self._context
        assert c is not None
        page = self.get_final_report()
        storage = (c.settings or current_settings()).storage
        key = storage.key("reports", c.run_name, c.call_id, f"attempt-{c.attempt}.html")
        with self._lock:
            self._dirty = False
        storage.store.put_atomic(key, page.encode())
        return storage.prefix_url("reports", c.run_name, c.call_id, f"attempt-{c.attempt}.html")

    def _flush_if_dirty(self) -> None:
        if self._dirty:
            self.flush()

    def __repr__(self) -> str:
        return f"<report {self.name!r}: tabs {list(self.tabs)}>"


def _fragment(content: Any, op: str) -> str:
    if not isinstance(content, str):
        raise TypeError(f"report.{op}.content: expected an HTML string, got {type(content).__name__}")
    return content


_DUMMY = threading.local()
_warned_unkept = False


def current_report() -> Report:
    """The report of the running attempt; a dummy report outside a task (see module docstring)."""
    c = ctx()
    if c is None:
        dummy = getattr(_DUMMY, "report", None)
        if dummy is None:
            dummy = _DUMMY.report = Report("driver")
        return dummy
    return c.attempt_state("report", lambda: _attempt_report(c))


def _attempt_report(c: TaskContext) -> Report:
    r = Report(c.action, c, kept=c.keeps_report)
    if c.keeps_report:
        c.at_end(r._flush_if_dirty)
    return r


def _log(content: str, do_flush: bool = False) -> None:
    """Append an HTML fragment to the main tab; ``do_flush``: then store the page."""
    r = current_report()
    r.tabs[MAIN_TAB].log(content)
    if do_flush:
        _flush()


def _replace(content: str, do_flush: bool = False) -> None:
    """Replace the main tab's content; ``do_flush``: then store the page."""
    r = current_report()
    r.tabs[MAIN_TAB].replace(content)
    if do_flush:
        _flush()


def _flush() -> None:
    """Store the report's page in the run's storage (a dummy report stores nothing)."""
    global _warned_unkept
    r = current_report()
    c = ctx()
    if not r._kept and c is not None and not _warned_unkept:
        _warned_unkept = True
        logger.warning(
            "flyte_ray.report.flush() in %s: the task was not made with report=True, so its report is not kept",
            c.action,
        )
    r.flush()


log = SyncAioFunction(_log)
replace = SyncAioFunction(_replace)
flush = SyncAioFunction(_flush)


def get_tab(name: str, create_if_missing: bool = True) -> Optional[Tab]:
    """The tab ``name`` of the current report, made if missing (unless ``create_if_missing=False``)."""
    return current_report().get_tab(name, create_if_missing)


def read_report(storage: Any, run_name: str, call_id: str = "root", attempt: Optional[int] = None) -> Optional[str]:
    """The stored page of ``call_id``'s ``attempt`` in run ``run_name`` (default: its newest
    attempt that stored one), or None when there is none."""
    store = storage.store
    if attempt is None:
        folder = storage.key("reports", run_name, call_id)
        found = [int(m.group(1)) for n in store.list(folder) if (m := _ATTEMPT_RE.fullmatch(n.rsplit("/", 1)[-1]))]
        if not found:
            return None
        attempt = max(found)
    data = store.get(storage.key("reports", run_name, call_id, f"attempt-{attempt}.html"))
    return None if data is None else data.decode("utf-8", "replace")


def _page(title: str, tabs: List[tuple]) -> str:
    head = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:1.5em}"
        "section{border-top:1px solid #ccc;padding:.5em 0}h2{font-size:1.1em;color:#333}</style>"
        "</head><body>"
        f"<h1>{html.escape(title)}</h1>"
    )
    body = "".join(
        f"<section class='tab' data-tab='{html.escape(name, quote=True)}'><h2>{html.escape(name)}</h2>"
        f"<div>{content}</div></section>"
        for name, content in tabs
    )
    return head + body + "</body></html>"
