"""The cloud metadata services that announce a spot node's end, as pollers.

Each provider answers :meth:`Provider.poll` with a :class:`Notice` or ``None``, and raises
:class:`MetadataUnavailable` when its service cannot be reached or answers nonsense (the watcher
logs that once and keeps trying). What each service says, and what we read from it:

======  ===========================================================  ==========================
cloud   where                                                        deadline
======  ===========================================================  ==========================
AWS     IMDSv2: ``PUT /latest/api/token`` (a session token), then    ``time`` of the action
        ``GET /latest/meta-data/spot/instance-action``: 404 until    (two minutes ahead)
        the notice, then ``{"action": "terminate", "time": ...}``.
        Best effort, earlier: ``events/recommendations/rebalance``.
GCP     ``GET /computeMetadata/v1/instance/preempted`` with          30 s after the change
        ``Metadata-Flavor: Google``: ``FALSE`` → ``TRUE``; polled   (GCP's preemption notice)
        with ``wait_for_change`` so a change answers at once.
Azure   Scheduled Events ``GET /metadata/scheduledevents`` with      the event's ``NotBefore``
        ``Metadata: true``: an event of type ``Preempt`` naming      (at least 30 s ahead)
        this VM (or naming none).
======  ===========================================================  ==========================

Rules: requests never go through an HTTP proxy (a metadata service is link-local; a proxy from
the environment would answer for another machine or leak the token); every request has a time
limit; base URLs are settable (``--metadata-url``) so tests and air-gapped users can point them
at a local server. Parsing is kept in pure functions (``parse_*``) that the unit tests call with
scripted bodies.
"""

from __future__ import annotations

import email.utils
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = [
    "Notice",
    "MetadataUnavailable",
    "Provider",
    "AWS",
    "GCP",
    "Azure",
    "PROVIDERS",
    "detect",
    "parse_aws_instance_action",
    "parse_gcp_preempted",
    "parse_azure_events",
    "parse_iso8601",
]

GCP_NOTICE_S = 30.0  # GCP stops a preempted VM about 30 s after it says so


@dataclass(frozen=True)
class Notice:
    """What a metadata service announced."""

    provider: str
    kind: str  # "terminate" | "stop" | "hibernate" | "preempt" | "rebalance"
    deadline: Optional[float]  # epoch seconds when the node goes (None: not said)
    detail: str = ""

    @property
    def final(self) -> bool:
        """The node will be taken (a rebalance recommendation is only a hint)."""
        return self.kind != "rebalance"


class MetadataUnavailable(Exception):
    """The metadata service could not be reached, or answered something we cannot read."""


# A metadata service is link-local: never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(
    url: str, *, method: str = "GET", headers: Optional[dict] = None, timeout: float = 2.0
) -> tuple[int, bytes, dict]:
    """``(status, body, headers)``; 4xx/5xx are returned, not raised; unreachable raises
    :class:`MetadataUnavailable`."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "PUT" else None)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read(65536), dict(resp.headers)
    except urllib.error.HTTPError as e:
        try:
            body = e.read(65536)
        except Exception:  # noqa: BLE001
            body = b""
        return e.code, body, dict(e.headers or {})
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise MetadataUnavailable(f"{url.split('?')[0]}: {type(reason).__name__}: {reason}") from None


def parse_iso8601(text: str) -> float:
    """``2017-09-18T08:22:00Z`` → epoch seconds."""
    from datetime import datetime, timezone

    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def parse_aws_instance_action(body: bytes) -> Notice:
    """The body of ``spot/instance-action`` (HTTP 200) as a notice."""
    try:
        doc = json.loads(body.decode("utf-8"))
        action = str(doc["action"]).lower()
        deadline = parse_iso8601(str(doc["time"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise MetadataUnavailable(f"aws: unreadable spot/instance-action ({type(e).__name__})") from None
    if action not in ("terminate", "stop", "hibernate"):
        raise MetadataUnavailable(f"aws: unknown spot action {action[:20]!r}")
    return Notice("aws", action, deadline, f"spot/instance-action {action}")


def parse_gcp_preempted(body: bytes) -> bool:
    """The body of ``instance/preempted``: True when the VM is being preempted."""
    text = body.decode("utf-8", "replace").strip().upper()
    if text not in ("TRUE", "FALSE"):
        raise MetadataUnavailable(f"gcp: unexpected instance/preempted value {text[:20]!r}")
    return text == "TRUE"


def parse_azure_events(body: bytes, vm_name: Optional[str] = None) -> Optional[Notice]:
    """The first ``Preempt`` event for this VM in a Scheduled Events document, as a notice."""
    try:
        doc = json.loads(body.decode("utf-8"))
        events = doc.get("Events") or []
    except (ValueError, AttributeError) as e:
        raise MetadataUnavailable(f"azure: unreadable scheduled events ({type(e).__name__})") from None
    for ev in events:
        if not isinstance(ev, dict) or ev.get("EventType") != "Preempt":
            continue
        resources = ev.get("Resources") or []
        if vm_name and resources and vm_name not in resources:
            continue  # an event for another VM of the scale set
        deadline = None
        nb = ev.get("NotBefore")
        if nb:
            try:
                deadline = email.utils.parsedate_to_datetime(str(nb)).timestamp()
            except (TypeError, ValueError):
                deadline = None
        return Notice("azure", "preempt", deadline, f"scheduled event {str(ev.get('EventId', ''))[:64]}")
    return None


class Provider:
    """A metadata service: :meth:`poll` returns a notice or None (module docstring)."""

    name = ""
    default_url = ""

    def __init__(self, base_url: Optional[str] = None, *, timeout: float = 2.0) -> None:
        self.base = (base_url or self.default_url).rstrip("/")
        self.timeout = timeout

    def probe(self) -> bool:
        """True when this provider's service answers here (for ``--provider auto``)."""
        raise NotImplementedError

    def poll(self, wait: float = 0.0) -> Optional[Notice]:
        """One look; may block up to ``wait`` seconds when the service can wait for a change."""
        raise NotImplementedError


class AWS(Provider):
    name = "aws"
    default_url = "http://169.254.169.254"
    token_ttl = 21600  # seconds: IMDSv2's maximum

    def __init__(self, base_url: Optional[str] = None, *, timeout: float = 2.0) -> None:
        super().__init__(base_url, timeout=timeout)
        self._token: Optional[str] = None
        self._token_until = 0.0

    def _get_token(self) -> str:
        if self._token is None or time.monotonic() > self._token_until:
            status, body, _ = _request(
                self.base + "/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl)},
                timeout=self.timeout,
            )
            if status != 200 or not body:
                raise MetadataUnavailable(f"aws: token request answered HTTP {status}")
            self._token = body.decode("ascii", "replace").strip()
            self._token_until = time.monotonic() + self.token_ttl * 0.8
        return self._token

    def _get(self, path: str) -> tuple[int, bytes]:
        for _ in range(2):
            token = self._get_token()
            status, body, _ = _request(
                self.base + path, headers={"X-aws-ec2-metadata-token": token}, timeout=self.timeout
            )
            if status == 401:  # the token expired or the service restarted: get a new one once
                self._token = None
                continue
            return status, body
        raise MetadataUnavailable("aws: the metadata service keeps refusing fresh tokens (HTTP 401)")

    def probe(self) -> bool:
        try:
            self._get_token()
            return True
        except MetadataUnavailable:
            return False

    def poll(self, wait: float = 0.0) -> Optional[Notice]:
        status, body = self._get("/latest/meta-data/spot/instance-action")
        if status == 200:
            return parse_aws_instance_action(body)
        if status != 404:
            raise MetadataUnavailable(f"aws: spot/instance-action answered HTTP {status}")
        status, body = self._get("/latest/meta-data/events/recommendations/rebalance")
        if status == 200:
            return Notice("aws", "rebalance", None, "rebalance recommendation")
        return None


class GCP(Provider):
    name = "gcp"
    default_url = "http://metadata.google.internal"
    _HEADERS = {"Metadata-Flavor": "Google"}

    def __init__(self, base_url: Optional[str] = None, *, timeout: float = 2.0) -> None:
        super().__init__(base_url, timeout=timeout)
        self._etag: Optional[str] = None
        self._first_seen: Optional[float] = None  # when instance/preempted first read TRUE

    def probe(self) -> bool:
        try:
            status, _, headers = _request(
                self.base + "/computeMetadata/v1/instance/id", headers=self._HEADERS, timeout=self.timeout
            )
        except MetadataUnavailable:
            return False
        return status == 200 and headers.get("Metadata-Flavor", "") == "Google"

    def poll(self, wait: float = 0.0) -> Optional[Notice]:
        url = self.base + "/computeMetadata/v1/instance/preempted"
        timeout = self.timeout
        if self._etag is not None and wait >= 1:
            # Wait for a change on the server side: a notice answers at once, quiet costs nothing.
            url += f"?wait_for_change=true&last_etag={self._etag}&timeout_sec={int(wait)}"
            timeout = self.timeout + int(wait)
        status, body, headers = _request(url, headers=self._HEADERS, timeout=timeout)
        if status != 200:
            self._etag = None
            raise MetadataUnavailable(f"gcp: instance/preempted answered HTTP {status}")
        self._etag = headers.get("ETag") or headers.get("Etag") or None
        if parse_gcp_preempted(body):
            # GCP gives no termination time: ~30 s from when the notice was first seen (kept, so
            # that a drain retried after a GCS error does not push the deadline past the real one)
            if self._first_seen is None:
                self._first_seen = time.time()
            return Notice("gcp", "preempt", self._first_seen + GCP_NOTICE_S, "instance/preempted TRUE")
        return None


class Azure(Provider):
    name = "azure"
    default_url = "http://169.254.169.254"
    _HEADERS = {"Metadata": "true"}

    def __init__(self, base_url: Optional[str] = None, *, timeout: float = 2.0) -> None:
        super().__init__(base_url, timeout=timeout)
        self._vm: Optional[str] = None

    def probe(self) -> bool:
        try:
            status, _, _ = _request(
                self.base + "/metadata/instance?api-version=2021-02-01", headers=self._HEADERS, timeout=self.timeout
            )
        except MetadataUnavailable:
            return False
        return status == 200

    def _vm_name(self) -> Optional[str]:
        if self._vm is None:
            try:
                status, body, _ = _request(
                    self.base + "/metadata/instance/compute/name?api-version=2021-02-01&format=text",
                    headers=self._HEADERS,
                    timeout=self.timeout,
                )
                if status == 200:
                    self._vm = body.decode("utf-8", "replace").strip() or None
            except MetadataUnavailable:
                return None
        return self._vm

    def poll(self, wait: float = 0.0) -> Optional[Notice]:
        status, body, _ = _request(
            self.base + "/metadata/scheduledevents?api-version=2020-07-01", headers=self._HEADERS, timeout=self.timeout
        )
        if status != 200:
            raise MetadataUnavailable(f"azure: scheduledevents answered HTTP {status}")
        return parse_azure_events(body, self._vm_name())


PROVIDERS: dict[str, Callable[..., Provider]] = {"aws": AWS, "gcp": GCP, "azure": Azure}


def detect(base_url: Optional[str] = None, timeout: float = 1.0) -> Optional[Provider]:
    """The provider whose metadata service answers here (AWS, then GCP, then Azure), or None."""
    for make in PROVIDERS.values():
        p = make(base_url, timeout=timeout)
        if p.probe():
            p.timeout = 2.0
            return p
    return None
