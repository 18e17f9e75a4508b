"""Start a robot server as a child process that dies with its parent, and wait until it is ready.

A plain `subprocess` (no multiprocessing resource tracker). The child watches a pipe from the
parent (EOF = parent gone) and its parent pid, so it cannot outlive us even after SIGKILL.
"""
from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import tempfile
import time

from ..errors import RobotEnvError
from .endpoints import private_ipc, remove_private


class ChildProcess:
    """A `robot-env` subcommand as a child that dies with us (it watches our pipe on its stdin).

    Its stdout announces readiness; its stderr is kept for error messages. `close()` leaves no
    process behind: EOF on the pipe first (a clean exit), then SIGTERM, then SIGKILL.
    """

    def __init__(self, args: list[str], what: str):
        self.what = what
        self._stderr = tempfile.TemporaryFile()
        read_fd, self._watch_w = os.pipe()
        cmd = [sys.executable, "-m", "robot_env", *args, "--watch-fd", "0"]
        self.proc = subprocess.Popen(cmd, stdin=read_fd, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"), close_fds=True)
        os.close(read_fd)

    def wait_line(self, timeout: float, accept=lambda line: True) -> str:
        """The first stdout line `accept` takes; RobotEnvError (with the child's stderr) if it dies
        first or stays silent past `timeout`."""
        deadline = time.monotonic() + timeout
        out = self.proc.stdout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([out], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = out.readline().decode(errors="replace").strip()
            if not line:  # EOF: the child died before it was ready
                self.proc.wait(5)
                raise RobotEnvError(f"{self.what} failed to start (exit {self.proc.returncode}):\n"
                                    f"{self.stderr_text()}")
            if accept(line):
                return line
        self.close()
        raise RobotEnvError(f"{self.what} not ready within {timeout:g} s:\n{self.stderr_text()}")

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, timeout: float = 5.0) -> int | None:
        """Close the watch pipe (the child exits on EOF), then escalate if it lingers; the exit code."""
        if self._watch_w is not None:
            os.close(self._watch_w)
            self._watch_w = None
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        if not self._stderr.closed:
            self._stderr.close()
        return self.proc.returncode

    def __del__(self):
        try:
            if self._watch_w is not None:
                os.close(self._watch_w)
        except Exception:
            pass


class ServerProcess(ChildProcess):
    """A spawned server: endpoints, and `close()` that leaves no process behind.

    `owner` is a secret handed to the server on the pipe it watches: a `close` request must carry
    it (`RobotClient(owner=...)`), so no other client can shut down (park, torque off) our server.
    """

    def __init__(self, cfg: dict, *, endpoint: str | None = None, ready_timeout: float = 30.0,
                 allow_client_keys=(), exit_on_close: bool = True):
        srv = cfg["server"]
        ep = endpoint or srv["endpoint"]
        sep = srv["stream_endpoint"] or None
        if not ep:
            ep, sep = private_ipc()
        args = ["serve", "--config-json", json.dumps(cfg), "--endpoint", ep, "--ready", "--owner-from-watch-fd"]
        if not exit_on_close:
            args.append("--keep-on-close")
        if sep:
            args += ["--stream-endpoint", sep]
        for key in allow_client_keys:  # CurveZMQ public keys (not secret) allowed besides the config's
            args.append(f"--allow-client-key={key}")  # "=": a Z85 key may begin with "-"
        self._private = ep
        super().__init__(args, "robot server")
        self.owner = secrets.token_hex(16)
        os.write(self._watch_w, (self.owner + "\n").encode())
        _, self.endpoint, self.stream_endpoint = self.wait_line(
            ready_timeout, lambda line: line.startswith("READY ")).split()

    def close(self, timeout: float = 5.0) -> int | None:
        code = super().close(timeout)
        remove_private(self._private)  # the private ipc directory we made for it, if we did
        return code
