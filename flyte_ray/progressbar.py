"""Progress of many calls (``flyte_ray.map``, ``flyte_ray.progress(...)``) and of a run
(``Run.wait()``), in a terminal and in Jupyter, through tqdm (``tqdm.auto``).

Shown when ``init(progress=...)`` says so: ``"auto"`` (the default) shows it only where someone
is watching — stderr is a terminal, or a Jupyter kernel runs the code — and never inside a task
or in CI logs; ``True`` always; ``False`` never. Counts are done / failed / retried calls and the
spot share of the calls that finished (by the market of their last attempt).
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Optional

__all__ = ["enabled", "Progress", "set_mode", "progress"]

_MODE: Any = "auto"


def set_mode(mode: Any) -> None:
    """``init(progress=...)``: ``"auto"``, True or False."""
    global _MODE
    if mode not in ("auto", True, False):
        raise ValueError(f"progress: expected 'auto', True or False; got {mode!r}")
    _MODE = mode


def _in_jupyter() -> bool:
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and "Kernel" in type(shell).__name__ or hasattr(shell, "kernel")
    except Exception:  # noqa: BLE001
        return False


def enabled() -> bool:
    from .context import ctx

    if _MODE is False or ctx() is not None:  # never from inside a task: nobody watches a worker
        return False
    if _MODE is True:
        return True
    try:
        return bool(sys.stderr.isatty()) or _in_jupyter()
    except Exception:  # noqa: BLE001
        return False


class Progress:
    """A bar over ``total`` calls; ``done(call, ok)`` after each. A no-op when not enabled."""

    def __init__(self, total: Optional[int], desc: str) -> None:
        self.bar: Any = None
        self.failed = self.retried = self.spot = self.finished = self.known = 0
        if enabled():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="call", leave=True, dynamic_ncols=True)

    def done(self, call: Any, ok: bool) -> None:
        if self.bar is None:
            return
        self.finished += 1
        self.failed += 0 if ok else 1
        hist = getattr(getattr(call, "state", None), "history", None) or []
        self.retried += 1 if len(hist) > 1 else 0
        if hist:
            self.known += 1
            self.spot += 1 if str(hist[-1].market) == "spot" else 0
        fields: dict = {"failed": self.failed, "retried": self.retried}
        if self.known:
            fields["spot"] = f"{100 * self.spot / self.known:.0f}%"
        self.bar.set_postfix(fields, refresh=False)
        self.bar.update(1)

    def note(self, **fields: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(awaitables: Iterable[Any], desc: str = "calls") -> list:
    """Wrap the awaitables of a gather (``await asyncio.gather(*flyte.progress(task.aio(x) for x in
    xs))``) so that a bar counts them as they finish; returns them wrapped, in order."""
    items = list(awaitables)
    bar = Progress(len(items), desc)
    if bar.bar is None:
        return items

    async def watch(aw: Any) -> Any:
        try:
            value = await aw
        except BaseException:
            bar.done(None, False)
            raise
        bar.done(None, True)
        if bar.finished == len(items):
            bar.close()
        return value

    return [watch(a) for a in items]
