"""A real S3 endpoint for tests: a moto server subprocess on loopback.

Use :func:`start_moto` directly (returns a handle with ``.stop()``) or the session-scoped pytest
fixture :func:`s3_server` (``from _s3server import s3_server`` in a conftest or test module when
``tests/`` is on ``sys.path``, as pytest arranges; ``from tests._s3server import ...`` from the
repository root). Import it through one of the two names only, or each gets its own server. The fixture yields a dict with ``endpoint_url``, ``bucket``, ``options`` (fsspec/s3fs
storage options) and ``url`` (``s3://<bucket>``).

A subprocess rather than moto's in-process ``ThreadedMotoServer`` keeps the server off the test
process's GIL and lets separate processes (e.g. a child that gets SIGKILLed) talk to it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

ACCESS_KEY = "testing"
SECRET_KEY = "testing"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoServer:
    """Handle on a running moto server."""

    proc: subprocess.Popen[bytes]
    endpoint_url: str
    bucket: str
    _env_before: dict[str, str | None] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, Any]:
        """fsspec storage options for s3fs against this server."""
        return {"endpoint_url": self.endpoint_url, "key": ACCESS_KEY, "secret": SECRET_KEY}

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"

    def as_dict(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "bucket": self.bucket, "options": self.options, "url": self.url}

    def stop(self) -> None:
        """Stop the server (terminate, then kill) and restore the AWS env vars."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for k, v in self._env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._env_before.clear()


def start_moto(bucket: str = "flyte-ray-test", timeout: float = 30.0) -> MotoServer:
    """Start ``python -m moto.server`` on a free loopback port, wait for it, create ``bucket``."""
    env_before = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    # botocore needs credentials and a region even for a fake endpoint; never use real ones.
    os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = MotoServer(proc=proc, endpoint_url=endpoint, bucket=bucket, _env_before=env_before)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited early with code {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not answer on {endpoint} within {timeout}s")
                time.sleep(0.1)

        import s3fs

        fs = s3fs.S3FileSystem(
            key=ACCESS_KEY, secret=SECRET_KEY, client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True
        )
        fs.mkdir(bucket)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, Any]]:
    """Session-wide moto S3 server: yields ``{"endpoint_url", "bucket", "options", "url"}``."""
    server = start_moto()
    try:
        yield server.as_dict()
    finally:
        server.stop()
