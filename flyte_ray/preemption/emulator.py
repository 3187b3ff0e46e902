"""A real HTTP server on loopback that answers as the AWS, GCP and Azure metadata services do.

One server, one endpoint per node: ``url(node)`` is the base URL that node's watcher polls
(``--metadata-url``). ``notify(node, provider, notice_s)`` flips that node's state the way the
cloud would; ``rebalance(node)`` posts AWS's earlier hint. What it emulates (enough for the
watcher's paths, checked the way the services check them):

* AWS IMDSv2: ``PUT /latest/api/token`` needs ``X-aws-ec2-metadata-token-ttl-seconds``; every
  ``GET`` needs a token it issued (401 otherwise); ``spot/instance-action`` is 404 until the
  notice, then ``{"action": "terminate", "time": "<UTC ISO>"}``.
* GCP: ``Metadata-Flavor: Google`` required (403 otherwise) and echoed; ``instance/preempted``
  ``FALSE`` → ``TRUE`` with an ``ETag``; ``wait_for_change=true`` (with ``last_etag``,
  ``timeout_sec``) holds the request until the value changes or the timeout passes.
* Azure: ``Metadata: true`` required (400 otherwise); ``/metadata/scheduledevents`` lists a
  ``Preempt`` event naming the node after the notice; ``compute/name`` is the node's name.

``stop()`` closes it; ``requests`` counts requests per node (the watcher must stay cheap).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from datetime import datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, urlsplit

__all__ = ["MetadataEmulator"]


class _NodeState:
    def __init__(self) -> None:
        self.aws: Optional[float] = None  # notice deadline
        self.rebalance: Optional[float] = None
        self.gcp = False
        self.azure: Optional[float] = None
        self.requests = 0


class MetadataEmulator:
    """The three metadata services for named nodes, on ``127.0.0.1`` (module docstring)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._nodes: dict[str, _NodeState] = {}
        self._tokens: set[str] = set()
        self._cond = threading.Condition()
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_PUT(self) -> None:
                emulator._handle(self, "PUT")

            def do_GET(self) -> None:
                emulator._handle(self, "GET")

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metadata-emulator", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control
    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, node: str) -> str:
        """The base URL that ``node``'s watcher polls."""
        with self._cond:
            self._nodes.setdefault(node, _NodeState())
        return f"{self.base}/{node}"

    def notify(self, node: str, provider: str = "aws", notice_s: float = 120.0) -> float:
        """Announce ``node``'s preemption through ``provider``'s service; returns the deadline
        (epoch seconds; GCP itself says none: its watcher assumes 30 s)."""
        deadline = time.time() + notice_s
        with self._cond:
            st = self._nodes.setdefault(node, _NodeState())
            if provider == "aws":
                st.aws = deadline
            elif provider == "gcp":
                st.gcp = True
            elif provider == "azure":
                st.azure = deadline
            else:
                raise ValueError(f"provider: expected aws, gcp or azure, got {provider!r}")
            self._cond.notify_all()
        return deadline

    def rebalance(self, node: str) -> None:
        with self._cond:
            self._nodes.setdefault(node, _NodeState()).rebalance = time.time()
            self._cond.notify_all()

    def requests(self, node: str) -> int:
        with self._cond:
            st = self._nodes.get(node)
            return st.requests if st else 0

    def stop(self) -> None:
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ serving
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        segs = parts.path.split("/", 2)
        if len(segs) < 3:
            return self._send(h, 404, b"")
        node, path = segs[1], "/" + segs[2]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._cond:
            st = self._nodes.get(node)
            if st is None:
                return self._send(h, 404, b"")
            st.requests += 1
        if path.startswith("/latest/"):
            return self._aws(h, method, path, st)
        if path.startswith("/computeMetadata/"):
            return self._gcp(h, method, path, query, st)
        if path.startswith("/metadata/"):
            return self._azure(h, method, path, node, st)
        return self._send(h, 404, b"")

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: Optional[dict] = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _aws(self, h: BaseHTTPRequestHandler, method: str, path: str, st: _NodeState) -> None:
        if path == "/latest/api/token":
            if method != "PUT" or not h.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._send(h, 400 if method == "PUT" else 405, b"")
            token = secrets.token_urlsafe(24)
            with self._cond:
                self._tokens.add(token)
            return self._send(h, 200, token.encode())
        if method != "GET" or h.headers.get("X-aws-ec2-metadata-token") not in self._tokens:
            return self._send(h, 401, b"")
        if path == "/latest/meta-data/spot/instance-action":
            if st.aws is None:
                return self._send(h, 404, b"")
            when = datetime.fromtimestamp(st.aws, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            return self._send(h, 200, json.dumps({"action": "terminate", "time": when}).encode())
        if path == "/latest/meta-data/events/recommendations/rebalance":
            if st.rebalance is None:
                return self._send(h, 404, b"")
            when = datetime.fromtimestamp(st.rebalance, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            return self._send(h, 200, json.dumps({"noticeTime": when}).encode())
        return self._send(h, 404, b"")

    def _gcp(self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict, st: _NodeState) -> None:
        if h.headers.get("Metadata-Flavor") != "Google":
            return self._send(h, 403, b"Missing Metadata-Flavor:Google header.")
        flavor = {"Metadata-Flavor": "Google"}
        if path == "/computeMetadata/v1/instance/id":
            return self._send(h, 200, b"1234567890", flavor)
        if path != "/computeMetadata/v1/instance/preempted":
            return self._send(h, 404, b"", flavor)

        def value() -> tuple[bytes, str]:
            body = b"TRUE" if st.gcp else b"FALSE"
            return body, hashlib.sha1(body).hexdigest()[:16]

        body, etag = value()
        if query.get("wait_for_change") == "true":
            try:
                limit = min(float(query.get("timeout_sec", "60")), 300.0)
            except ValueError:
                limit = 60.0
            last = query.get("last_etag", etag)
            end = time.monotonic() + limit
            with self._cond:
                while value()[1] == last and time.monotonic() < end:
                    self._cond.wait(max(0.0, end - time.monotonic()))
            body, etag = value()
        return self._send(h, 200, body, {**flavor, "ETag": etag})

    def _azure(self, h: BaseHTTPRequestHandler, method: str, path: str, node: str, st: _NodeState) -> None:
        if h.headers.get("Metadata") != "true":
            return self._send(h, 400, b'{"error": "Bad request. Required metadata header not specified"}')
        if path == "/metadata/instance":
            return self._send(h, 200, json.dumps({"compute": {"name": node}}).encode())
        if path == "/metadata/instance/compute/name":
            return self._send(h, 200, node.encode())
        if path == "/metadata/scheduledevents":
            events = []
            if st.azure is not None:
                events.append(
                    {
                        "EventId": f"preempt-{node}",
                        "EventType": "Preempt",
                        "ResourceType": "VirtualMachine",
                        "Resources": [node],
                        "EventStatus": "Scheduled",
                        "NotBefore": formatdate(st.azure, usegmt=True),
                        "Description": "Spot VM eviction",
                        "EventSource": "Platform",
                    }
                )
            return self._send(h, 200, json.dumps({"DocumentIncarnation": len(events), "Events": events}).encode())
        return self._send(h, 404, b"")
