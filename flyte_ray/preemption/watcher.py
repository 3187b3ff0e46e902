"""``flyte-ray watch-preemption``: turn a cloud's preemption notice into a Ray drain of this node.

Rules (each has a test in ``tests/test_preemption_watcher.py`` / ``tests/test_notices.py``):

* **Quiet and cheap while nothing happens**: one request per interval (GCP: one long poll that
  the server answers at once on a change), one log line at start, none after.
* **Survives a slow or absent metadata service or GCS**: each kind of trouble is logged once
  (then at debug level) and retried every interval; it never exits for it.
* **Never drains twice**: once it has drained the node it only watches; and before draining it
  asks the GCS whether the node is draining already (another watcher, ``ray drain-node``, an
  autoscaler), so a restarted watcher does not drain again.
* **Deadline**: the cloud's termination time (AWS ``time``, GCP now + 30 s, Azure ``NotBefore``).
* A rebalance recommendation (AWS, best effort, earlier than the notice) is logged; it drains
  only with ``--drain-on-rebalance``.
* **Exits cleanly** on SIGTERM / SIGINT (exit status 0), and with ``--once`` after one look.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

from . import gcs as _gcs
from .gcs import resolve_address
from .providers import PROVIDERS, MetadataUnavailable, Notice, Provider, detect

__all__ = ["Watcher", "main"]

logger = logging.getLogger("flyte_ray.preemption")


class Watcher:
    """One node's watcher (see the module docstring). ``step()`` is one look; ``run()`` loops."""

    def __init__(
        self,
        provider: str = "auto",
        *,
        address: Optional[str] = None,
        node_id: Optional[str] = None,
        interval: float = 5.0,
        metadata_url: Optional[str] = None,
        drain_on_rebalance: bool = False,
        clock: Callable[[], float] = time.time,
        gcs: Any = None,
    ) -> None:
        """``gcs``: what drains and reads node states (default :mod:`.gcs`; tests pass a script)."""
        if provider != "auto" and provider not in PROVIDERS:
            raise ValueError(f"provider: expected one of auto, {', '.join(PROVIDERS)}; got {provider!r}")
        if not interval > 0:
            raise ValueError(f"interval: expected seconds > 0, got {interval!r}")
        self.provider_name = provider
        self.provider: Optional[Provider] = None if provider == "auto" else PROVIDERS[provider](metadata_url)
        self.metadata_url = metadata_url
        self.address = address
        self.node_id = node_id
        self.interval = interval
        self.drain_on_rebalance = drain_on_rebalance
        self.clock = clock
        self.gcs = gcs or _gcs
        self.drained = False
        self.notice: Optional[Notice] = None
        self._said: set[str] = set()

    def _once(self, key: str, level: int, msg: str, *args: object) -> None:
        """Log ``msg`` the first time ``key`` comes up, at debug level after that."""
        logger.log(level if key not in self._said else logging.DEBUG, msg, *args)
        self._said.add(key)

    def step(self, wait: float = 0.0) -> Optional[str]:
        """One look at the metadata service; returns what was done (``"drained"``,
        ``"already-draining"``, ``"rebalance"``) or None."""
        if self.provider is None:
            self.provider = detect(self.metadata_url)
            if self.provider is None:
                self._once(
                    "detect", logging.WARNING, "no cloud metadata service answers here (aws, gcp, azure); retrying"
                )
                return None
            logger.info("metadata service: %s", self.provider.name)
        try:
            notice = self.provider.poll(wait)
        except MetadataUnavailable as e:
            self._once("metadata", logging.WARNING, "metadata service unavailable (%s); retrying", e)
            return None
        if "metadata" in self._said:  # it answers again: a later outage is worth a line again
            self._said.discard("metadata")
            logger.info("metadata service answers again")
        if notice is None:
            return None
        if not notice.final:
            self._once("rebalance", logging.WARNING, "%s: %s", notice.provider, notice.detail)
            if not self.drain_on_rebalance:
                return "rebalance"
        if self.drained:
            return None
        return self._drain(notice)

    def _drain(self, notice: Notice) -> Optional[str]:
        address = resolve_address(self.address)
        if address is None:
            self._once("address", logging.WARNING, "notice (%s) but no Ray GCS address known; retrying", notice.detail)
            return None
        try:
            node = self.node_id or self.gcs.local_node_id(address)
            if node is None:
                self._once(
                    "node", logging.WARNING, "notice but this host's Ray node is not found at %s; retrying", address
                )
                return None
            state = self.gcs.node_states(address).get(node, ("UNKNOWN", ""))[0]
            if state in ("DRAINING", "DEAD"):
                self.drained, self.notice = True, notice
                logger.info("notice (%s): node %s is %s already; not draining again", notice.detail, node[:12], state)
                return "already-draining"
            left = None if notice.deadline is None else notice.deadline - self.clock()
            ok, msg = self.gcs.drain_node(address, node, notice.deadline, f"{notice.provider} {notice.detail}")
        except Exception as e:  # noqa: BLE001 - the GCS is unreachable or refused: try again
            self._once(
                "gcs",
                logging.WARNING,
                "cannot drain through the GCS at %s (%s: %s); retrying",
                address,
                type(e).__name__,
                e,
            )
            return None
        if not ok:
            self._once("refused", logging.WARNING, "the GCS refused to drain node %s: %s; retrying", node[:12], msg)
            return None
        self.drained, self.notice = True, notice
        logger.warning(
            "preemption notice (%s %s): drained Ray node %s for PREEMPTION, deadline %s",
            notice.provider,
            notice.detail,
            node[:12],
            "none" if left is None else f"in {left:.0f}s",
        )
        return "drained"

    def run(self, stop: Optional[threading.Event] = None, once: bool = False) -> int:
        stop = stop or threading.Event()
        logger.info(
            "watching for preemption notices (provider %s, every %gs)%s",
            self.provider_name,
            self.interval,
            f", node {self.node_id[:12]}" if self.node_id else "",
        )
        while not stop.is_set():
            t0 = time.monotonic()
            # GCP waits server-side for a change; the others answer at once and we sleep.
            self.step(wait=0.0 if once else self.interval)
            if once:
                break
            stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))
        return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flyte-ray watch-preemption",
        description="Drain this Ray node (reason PREEMPTION) when the cloud announces its preemption.",
    )
    parser.add_argument(
        "--provider",
        default=os.environ.get("FLYTE_RAY_NOTICE_PROVIDER", "auto"),
        choices=["auto", *PROVIDERS],
        help="metadata service to poll (default: auto-detect)",
    )
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between looks (default 5)")
    parser.add_argument(
        "--address",
        default=None,
        help="Ray GCS address host:port (default: RAY_ADDRESS, or the one `ray start` wrote here)",
    )
    parser.add_argument("--node-id", default=None, help="Ray node id to drain (default: this host's node)")
    parser.add_argument(
        "--metadata-url",
        default=os.environ.get("FLYTE_RAY_METADATA_URL"),
        help="base URL of the metadata service (tests, air-gapped setups)",
    )
    parser.add_argument(
        "--drain-on-rebalance",
        action="store_true",
        help="also drain on AWS's rebalance recommendation (earlier, best effort)",
    )
    parser.add_argument("--once", action="store_true", help="look once and exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval: expected seconds > 0")
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s flyte-ray watch-preemption %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    watcher = Watcher(
        args.provider,
        address=args.address,
        node_id=args.node_id,
        interval=args.interval,
        metadata_url=args.metadata_url,
        drain_on_rebalance=args.drain_on_rebalance,
    )
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    rc = watcher.run(stop, once=args.once)
    logger.info("stopped")
    return rc
