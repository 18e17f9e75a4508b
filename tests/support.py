"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""
import os
import socket
import time

import numpy as np


def free_port_pair() -> int:
    """A loopback port p with p + 1 free too (the state stream binds next to the request port)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


def wait_for(pred, timeout: float = 3.0) -> bool:
    """Poll `pred` every 10 ms until it holds (True) or `timeout` s pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def still(st, tol: float) -> bool:
    """A state at rest: every joint and the base slower than `tol` (rad/s, m/s)."""
    return float(np.nanmax(np.abs(st["dq"]))) < tol and abs(st["base"][3]) < tol and abs(st["base"][4]) < tol


def settle(client, quiet: float, timeout: float, tol: float) -> bool:
    """Wait until the robot has been at rest for `quiet` s (longer than a jog window): keys or
    presses that a busy machine delivered late have had their effect, so the next measurement
    starts clean."""
    deadline = time.monotonic() + timeout
    since = None
    while time.monotonic() < deadline:
        if still(client.state(), tol):
            since = since or time.monotonic()
            if time.monotonic() - since >= quiet:
                return True
        else:
            since = None
        time.sleep(0.01)
    return False


def descendants(pid: int) -> set:
    """Live (non-zombie) processes below `pid`."""
    children: dict = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(p))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out
