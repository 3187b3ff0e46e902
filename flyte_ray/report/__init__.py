"""Reports.

* A task's own HTML report, flyte-sdk's ``flyte.report`` (``log``, ``replace``, ``get_tab``,
  ``flush``, ``current_report``): :mod:`.task_report`, kept in the run's storage.
* Reading a run's records: the cost report (:mod:`.cost`, prices in :mod:`.prices`) and the
  timeline picture (:mod:`.timeline`) -- pure functions over
  :class:`~flyte_ray._core.events.AttemptEvent` lists: no Ray, no storage access there.
"""

from .task_report import Report, Tab, current_report, flush, get_tab, log, replace

__all__ = ["Report", "Tab", "current_report", "flush", "get_tab", "log", "replace"]
