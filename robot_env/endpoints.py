"""Endpoint rules: private by default (ipc in a private directory, or loopback tcp); anything else is opt-in."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from urllib.parse import urlsplit

from .errors import ConfigError

_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


_MADE: list[str] = []  # private directories this process made, removed when it exits


def _runtime_dir() -> str | None:
    """$XDG_RUNTIME_DIR (per user, cleared at logout) when usable, else the temp dir; short paths
    only (a unix socket path holds at most 107 bytes)."""
    for d in (os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir(), "/tmp"):
        if d and len(d) <= 60 and os.path.isdir(d) and os.access(d, os.W_OK):
            return d
    return None


def private_ipc(tag: str = "") -> tuple[str, str]:
    """A fresh pair of ipc endpoints (requests, state stream) in a new directory only this user
    may enter (mode 0700).

    Not the abstract namespace: an abstract socket has no permissions, so every process on the
    machine (any user) can connect to it, and each one is listed in /proc/net/unix. The directory
    is removed when the process that made it exits.
    """
    d = tempfile.mkdtemp(prefix="robot-env-", dir=_runtime_dir())
    os.chmod(d, 0o700)
    if not _MADE:
        atexit.register(_remove_made)
    _MADE.append(d)
    base = f"ipc://{d}/{tag or 'server'}"
    return base, base + "-state"


def _remove_made() -> None:
    for d in _MADE:
        shutil.rmtree(d, ignore_errors=True)


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
