"""flytekit's ``current_context()`` (``ExecutionParameters``) and ``Deck`` over flyte-ray's task
context.

Rules:

* Inside a task, ``current_context()`` describes the running attempt: ``checkpoint`` is the
  call's flyte-ray checkpoint (flytekit's ``read``/``write``/``save``/``restore``/
  ``prev_exists``, shared by every attempt of the call and resolving to the newest complete
  save), ``execution_id.name`` the run's name, ``task_id.name`` the task's name,
  ``working_directory`` a fresh folder of the attempt (removed when it ends), ``logging`` the
  task logger, ``secrets.get(group, key)`` flytekit's secret lookup (below).
* Outside a task it describes the driver: ``checkpoint`` raises a clear error (there is no call
  whose attempts it would span).
* ``secrets.get(group, key)`` reads, as flytekit does, the environment variable
  ``_FSEC_<GROUP>_<KEY>`` (upper case) and then the file ``/etc/secrets/<group>/<key>``;
  flyte-ray injects neither (set them with ``env_vars``/``environment`` or the cluster's own
  mechanism). A missing secret raises ``ValueError`` naming both places, never the value.
* ``Deck(name, html)`` adds HTML to the tab ``name`` of the task's report (``enable_deck=True``
  keeps it: ``flyte_ray.report``).
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Optional

from ..compat import logger as _task_logger
from ..context import TaskContext, ctx
from ..report import get_tab

__all__ = ["Deck", "ExecutionParameters", "SecretsManager", "current_context"]

SECRETS_ENV_PREFIX = "_FSEC_"
SECRETS_DIR = "/etc/secrets"


@dataclass(frozen=True)
class WorkflowExecutionIdentifier:
    """flytekit's execution id: ``name`` is the flyte-ray run's name."""

    project: str
    domain: str
    name: str


@dataclass(frozen=True)
class Identifier:
    """flytekit's task id: ``name`` is the flyte-ray task's name (``<env>.<function>``)."""

    project: str
    domain: str
    name: str
    version: str


class SecretsManager:
    """flytekit's ``current_context().secrets`` (see the module docstring)."""

    def get(self, group: Optional[str] = None, key: Optional[str] = None, group_version: Optional[str] = None) -> str:
        if not group and not key:
            raise ValueError("secrets.get: pass group= and/or key=")
        parts = [p for p in (group, group_version, key) if p]
        env = SECRETS_ENV_PREFIX + "_".join(p.upper() for p in parts)
        value = os.environ.get(env)
        if value is not None:
            return value
        path = os.path.join(SECRETS_DIR, *[p.lower() for p in parts])
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            raise ValueError(
                f"secrets.get(group={group!r}, key={key!r}): not found in ${env} nor in {path}; flyte-ray injects "
                "no secrets: set the variable with env_vars / environment, or mount the file"
            ) from None

    def __repr__(self) -> str:
        return "<flytekit secrets (environment and /etc/secrets)>"


class ExecutionParameters:
    """What ``current_context()`` returns (see the module docstring)."""

    def __init__(self, task_ctx: Optional[TaskContext]) -> None:
        self._ctx = task_ctx
        self.execution_date = datetime.datetime.now(datetime.timezone.utc)
        self.secrets = SecretsManager()
        self.logging: logging.Logger = _task_logger
        self._workdir: Optional[str] = None

    @property
    def execution_id(self) -> WorkflowExecutionIdentifier:
        return WorkflowExecutionIdentifier("flyte-ray", "local", self._ctx.run_name if self._ctx else "local")

    @property
    def task_id(self) -> Optional[Identifier]:
        return Identifier("flyte-ray", "local", self._ctx.fqn, "") if self._ctx else None

    @property
    def checkpoint(self) -> Any:
        if self._ctx is None:
            raise RuntimeError(
                "current_context().checkpoint is only available inside a task: a checkpoint belongs to a task "
                "call and spans its attempts"
            )
        return self._ctx.checkpoint

    @property
    def working_directory(self) -> str:
        if self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix="flytekit-wd-")
            if self._ctx is not None:
                self._ctx.at_end(lambda: shutil.rmtree(self._workdir or "", ignore_errors=True))
        return self._workdir

    @property
    def raw_output_prefix(self) -> str:
        """Where the run's data lives in storage (flyte-ray's storage prefix of the run)."""
        if self._ctx is None or self._ctx.settings is None:
            return ""
        return self._ctx.settings.storage.prefix_url("io", self._ctx.run_name)

    @property
    def attempt_number(self) -> int:
        """0-based number of this attempt (every attempt counts)."""
        return self._ctx.attempt if self._ctx else 0

    def __repr__(self) -> str:
        return f"<flytekit context {self._ctx.action if self._ctx else 'outside a task'}>"


_driver: Optional[ExecutionParameters] = None


def current_context() -> ExecutionParameters:
    """flytekit's ``current_context()`` (see the module docstring). One object per attempt."""
    global _driver
    c = ctx()
    if c is None:
        # one for the driver process, so its working directory is one folder, not one per call
        if _driver is None:
            _driver = ExecutionParameters(None)
        return _driver
    # one per attempt: its working directory stays the same within the attempt
    return c.attempt_state("flytekit", lambda: ExecutionParameters(c))


class Deck:
    """flytekit's ``Deck(name, html="")``: HTML in the tab ``name`` of the task's report."""

    def __init__(self, name: str, html: Optional[str] = "") -> None:
        self.name = name
        tab = get_tab(name)
        assert tab is not None
        self._tab = tab
        if html:
            tab.log(html)

    def append(self, html: str) -> "Deck":
        self._tab.log(html)
        return self

    @property
    def html(self) -> str:
        return self._tab.get_html()
