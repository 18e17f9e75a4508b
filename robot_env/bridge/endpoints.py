"""Endpoint rules: private by default (ipc in a private directory, or loopback tcp); anything else is opt-in.

Only plain endpoint forms are accepted (`parse`), because ZeroMQ's own reading of a tcp address is
loose: it takes the port's leading digits and ignores whatever follows (``tcp://0.0.0.0:5555@127.0.0.1``
listens on 0.0.0.0:5555), wraps ports above 65535, reads ``;`` as a source address and resolves
hosts like ``127.1`` or ``0x7f000001``. A string that could mean something else to ZeroMQ than to
this check is refused, so the check and the bind always agree on the host.
"""
from __future__ import annotations

import atexit
import ipaddress
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from ..errors import ConfigError

ACCEPTED = ("accepted: tcp://HOST:PORT (HOST an IPv4 address, a [bracketed] IPv6 address, *, localhost, or "
            "a host or interface name; PORT 1 to 65535, or * for a free one when binding), ipc://PATH, "
            "ipc://@NAME (abstract) or inproc://NAME")

# A DNS name or a network interface name: labels of letters, digits, '_' and inner '-', joined by '.'.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NUMBERISH = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")  # what inet_aton would read as (part of) an address
_PORT = re.compile(r"[1-9][0-9]{0,4}")


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint. tcp: `host` (IPv6 without brackets, or '*') and `port` (digits or '*');
    ipc / inproc: `address` (the path or name)."""

    text: str
    transport: str
    host: str = ""
    port: str = ""
    address: str = ""

    @property
    def private(self) -> bool:
        """ipc and inproc never leave the machine; tcp is private only on loopback."""
        return self.transport != "tcp" or _is_loopback(self.host)


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


def remove_private(endpoint: str) -> None:
    """Remove the directory `private_ipc` made for `endpoint` (now, not at exit), if it made one."""
    d = os.path.dirname(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None
    if d in _MADE:
        _MADE.remove(d)
        shutil.rmtree(d, ignore_errors=True)


def parse(endpoint: str, *, bind: bool = True) -> Endpoint:
    """The endpoint if it is in a plain form (see `ACCEPTED`), else a ConfigError that says why.

    `bind=False` (a client's connect): the bind-only wildcards, host '*' and port '*', are refused.
    """
    reason = _refusal(endpoint, bind) if isinstance(endpoint, str) else "not a string"
    if reason is not None:
        raise ConfigError(f"endpoint {endpoint!r}: {reason}; {ACCEPTED}")
    if endpoint.startswith("tcp://"):
        host, port = _split_tcp(endpoint[len("tcp://"):])
        return Endpoint(endpoint, "tcp", host=host.strip("[]"), port=port)
    transport, _, address = endpoint.partition("://")
    return Endpoint(endpoint, transport, address=address)


def _refusal(endpoint: str, bind: bool) -> str | None:
    if any(c.isspace() or not c.isprintable() for c in endpoint):
        return "contains whitespace or control characters"
    for transport, what in (("ipc", "path"), ("inproc", "name")):
        if endpoint.startswith(f"{transport}://"):
            address = endpoint[len(transport) + 3:]
            return None if address not in ("", "@") else f"no {what} after {transport}://"
    if not endpoint.startswith("tcp://"):
        return "use tcp://, ipc:// or inproc://"
    rest = endpoint[len("tcp://"):]
    if "@" in rest:
        return ("'@' is no part of a tcp address (ZeroMQ reads the port's digits and ignores what follows, so "
                "the host before the port is what it binds)")
    if ";" in rest:
        return "';' (ZeroMQ's source-address syntax) is not accepted"
    if any(c in rest for c in "/?#"):
        return "a path, query or fragment after the address is not accepted"
    if "%" in rest:
        return "a '%' (IPv6 scope or escape) is not accepted"
    host, port = _split_tcp(rest)
    if host.startswith("["):
        if not host.endswith("]") or port is None:
            return "an IPv6 address goes in brackets followed by the port: tcp://[ADDRESS]:PORT"
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
    elif ":" in host or "]" in host:
        return "an IPv6 address goes in brackets: tcp://[ADDRESS]:PORT"
    elif not host:
        return "no host"
    elif host == "*":
        if not bind:
            return "a client cannot connect to host '*' (that wildcard is for binding): name the server's host"
    elif all(_NUMBERISH.fullmatch(part) for part in host.split(".")):  # inet_aton reads it: dotted quads only
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host} is not an IPv4 address (four decimal numbers 0 to 255, no leading zeros)"
    elif len(host) > 253 or not _NAME.fullmatch(host):
        return f"{host!r} is not an IPv4 address, an IPv6 address, a host name or an interface name"
    if not port:
        return "no port"
    if port == "*":
        return None if bind else "a client cannot connect to port '*' (that wildcard is for binding): give the port"
    if not _PORT.fullmatch(port) or int(port) > 65535:
        return f"port {port!r}: give a number from 1 to 65535 (no sign, no leading zeros)"
    return None


def _split_tcp(rest: str) -> tuple[str, str | None]:
    """'HOST:PORT' -> (HOST, PORT) at the last ':' after any ']' (PORT None without a ':')."""
    cut = rest.rfind(":")
    if cut < rest.rfind("]"):
        return rest, None
    return (rest[:cut], rest[cut + 1:]) if cut >= 0 else (rest, None)


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; everything else, wildcards and names included, is non-local."""
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return addr == ipaddress.IPv6Address("::1") if addr.version == 6 else addr in ipaddress.IPv4Network("127.0.0.0/8")


def is_private(endpoint: str) -> bool:
    """True for ipc, inproc and loopback tcp; a malformed endpoint raises ConfigError."""
    return parse(endpoint).private


def check_bind(endpoint: str, insecure: bool, secure: bool = False) -> str | None:
    """Refuse a malformed endpoint whatever the keys, and a non-private bind unless CurveZMQ keys are
    configured (`secure`) or the explicit insecure flag is set; return a warning for an insecure one."""
    if parse(endpoint).private or secure:
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
    ep = parse(endpoint)
    if ep.transport != "tcp":
        return endpoint + "-state"
    if ep.port == "*":
        raise ConfigError(f"endpoint {endpoint!r}: give an explicit port or a stream_endpoint")
    if int(ep.port) >= 65535:
        raise ConfigError(f"endpoint {endpoint!r}: port 65535 has no next port for the state stream; "
                          "give a lower port or a stream_endpoint")
    return f"{endpoint.rpartition(':')[0]}:{int(ep.port) + 1}"
