"""A latched e-stop that survives the server process: a software runstop a crash clears is no runstop.

The latch is a small file: present means latched. It is written before the e-stop is answered
(write to a temporary file, fsync, rename, fsync the directory), so a server killed right after
an e-stop comes back e-stopped, and removed by `clear_estop`. Hardware backends persist it by
default (`[server] estop_file = "auto"`: one file per robot, under `$XDG_STATE_HOME/robot-env/`);
simulators do not.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

log = logging.getLogger("robot_env.server")


class EstopLatch:
    """The persisted e-stop; with no path it only lives in memory (the server's own flag)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.latched = bool(self.path is not None and self.path.is_file())

    def set(self, latched: bool) -> None:
        if self.path is None or latched == self.latched and latched == self.path.is_file():
            self.latched = latched
            return
        try:
            if latched:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(f"e-stop latched at {time.strftime('%Y-%m-%d %H:%M:%S')} by pid {os.getpid()}\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            else:
                self.path.unlink(missing_ok=True)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:  # the in-memory latch still holds; say that it will not outlive us
            log.error("cannot %s the persisted e-stop %s: %s", "write" if latched else "remove", self.path, exc)
        self.latched = latched


def estop_path(cfg: dict, backend) -> str | None:
    """The latch file a config asks for: `[server] estop_file` ("auto": hardware backends only)."""
    value = cfg["server"].get("estop_file", "auto")
    if value == "":
        return None
    if value != "auto":
        return os.path.expanduser(value)
    if not getattr(backend, "realtime_only", False):
        return None
    key = getattr(backend, "estop_key", None) or backend.kind
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "robot-env", "estop-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") + ".latched")
