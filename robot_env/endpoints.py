"""Endpoint rules: private by default (abstract ipc or loopback tcp); anything else is opt-in."""
from __future__ import annotations

import os
import secrets
from urllib.parse import urlsplit

from .errors import ConfigError

_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


def private_ipc(tag: str = "") -> tuple[str, str]:
    """A fresh pair of abstract-namespace ipc endpoints (requests, state stream): no file to clean up."""
    base = f"ipc://@robot-env-{os.getpid()}-{secrets.token_hex(4)}{'-' + tag if tag else ''}"
    return base, base + "-state"


def is_private(endpoint: str) -> bool:
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if endpoint.startswith("tcp://"):
        host = urlsplit(endpoint).hostname or ""
        return host.startswith(_LOOPBACK) or host in ("localhost", "::1")
    return False


def check_bind(endpoint: str, insecure: bool, secure: bool = False) -> str | None:
    """Refuse a non-private bind unless CurveZMQ keys are configured (`secure`) or the explicit
    insecure flag is set; return a warning for an insecure one."""
    if not endpoint.startswith(("ipc://", "inproc://", "tcp://")):
        raise ConfigError(f"endpoint {endpoint!r}: use ipc://, tcp:// or inproc://")
    if is_private(endpoint) or secure:
        return None
    if not insecure:
        raise ConfigError(f"refusing to listen on non-local endpoint {endpoint!r} without "
                          "authentication; configure CurveZMQ keys ([server.security] server_secret_key and "
                          "allowed_clients; `robot-env keys` makes them), or set [server] insecure = true "
                          "(private networks only)")
    return (f"WARNING: listening on {endpoint} WITHOUT authentication or encryption (insecure = true): "
            "anyone who can reach it can move the robot")


def stream_endpoint_for(endpoint: str) -> str:
    """The state stream's default address next to the request endpoint (tcp: port + 1)."""
    if endpoint.startswith("tcp://"):
        head, _, port = endpoint.rpartition(":")
        if port.isdigit():
            return f"{head}:{int(port) + 1}"
        raise ConfigError(f"endpoint {endpoint!r}: give an explicit port or a stream_endpoint")
    return endpoint + "-state"
