"""Closed by default: token authentication for every Ray cluster flyte-ray starts.

Ray 2.60's processes listen on every interface (the GCS, raylets and workers on ``::``, agents on
the node's address) and its public options cannot bind them to loopback (measured: passing
``_node_ip_address="127.0.0.1"`` changes no binding). With token authentication off, anyone who
reaches the host can run code on the cluster. So a cluster flyte-ray starts (the embedded one of
``init()``, :class:`flyte_ray.testing.LocalCluster`, the demo) runs with ``RAY_AUTH_MODE=token``
and a random token made for this process (:func:`ensure_token_auth`). The token lives in this
process's environment (``RAY_AUTH_TOKEN``), which Ray hands to the processes it starts; it is
never written to ``~/.ray/auth_token``, so other clusters on the machine are not affected.

Measured on such a cluster: the GCS, raylet and worker gRPC ports answer an unauthenticated call
with ``UNAUTHENTICATED``; the dashboard agent and runtime-env agent HTTP ports answer ``401``.
What stays open in Ray 2.60 whatever the mode: read-only Prometheus metrics (the autoscaler
monitor's and the dashboard's metrics ports, and each node's metrics export port) and the agent's
health check.

An explicit ``RAY_AUTH_MODE`` is the user's choice and is kept (``disabled`` opens the cluster:
flyte-ray then says so once); ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` the user set are used
as they are. Clients of such a cluster (``ray://``, ``ray job submit``, another driver) need the
same ``RAY_AUTH_MODE=token`` and token: :func:`client_env` gives them.
"""

from __future__ import annotations

import logging
import os
import secrets

__all__ = ["ensure_token_auth", "client_env", "token_auth_enabled"]

logger = logging.getLogger("flyte_ray")

MODE = "RAY_AUTH_MODE"
TOKEN = "RAY_AUTH_TOKEN"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"


def token_auth_enabled() -> bool:
    return os.environ.get(MODE, "").lower() == "token"


def ensure_token_auth() -> None:
    """Before starting a cluster: token auth on with this process's token, unless the user chose a
    mode (see the module docstring)."""
    mode = os.environ.get(MODE)
    if mode is not None:
        if mode.lower() == "disabled":
            logger.warning(
                "RAY_AUTH_MODE=disabled: the Ray cluster flyte-ray starts accepts connections from anyone who "
                "reaches this host (Ray listens on every interface) and lets them run code. Unset it to get "
                "token authentication with a token made for this process."
            )
        return
    os.environ[MODE] = "token"
    if not os.environ.get(TOKEN) and not os.environ.get(TOKEN_PATH):
        os.environ[TOKEN] = secrets.token_hex(32)
    # This process's Ray config read the mode when Ray was imported: refresh it, as Ray's own
    # "enable token auth" does (ray._private.authentication.authentication_token_setup).
    from ray._raylet import Config  # type: ignore[attr-defined]  # Cython, no stubs

    Config.initialize("")


def client_env() -> dict[str, str]:
    """The environment variables a client of the cluster this process started needs (empty when
    token auth is off). Treat the result as a secret."""
    if not token_auth_enabled():
        return {}
    out = {MODE: "token"}
    for name in (TOKEN, TOKEN_PATH):
        if os.environ.get(name):
            out[name] = os.environ[name]
    return out
