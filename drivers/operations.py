"""The driver's long operations, polled by the server: a move of the real arm through poses, and
loop-thread jobs (a fault recovery)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from robot_env.backends.interface import Operation
from robot_env.errors import RequestError

if TYPE_CHECKING:
    from .hardware import DynamixelBackend


class _Move(Operation):
    """A move of the real arm through poses, polled by the server: done when the arm is at the
    last one and still."""

    def __init__(self, backend: "DynamixelBackend", targets: list, what: str, deadline: float, tol: float = 0.01):
        self.b, self.targets, self.what, self.deadline, self.tol = backend, list(targets), what, deadline, tol
        self.t0 = time.monotonic()
        self.error: RequestError | None = None
        self.finished = False
        self.on_done = None
        self.target = None

    def start(self) -> None:
        """Aim at the next pose (the limiter and the guard take it from where the arm is)."""
        b = self.b
        self.target = self.targets.pop(0)
        with b._lock:
            b.ctl.reset(b.q_cmd)
            b.ctl.target = self.target.copy()
            b.ctl.base_cmd = (0.0, 0.0)

    def poll(self) -> bool:
        if self.finished:
            return True
        b = self.b
        if b._faults:
            return self._fail("fault", f"{self.what} stopped by a fault: {b._faults[0]['message']}")
        with b._lock:
            err = np.abs(b.q_meas - self.target)
            reached = err.max() < self.tol and np.abs(b.v_cmd).max() < 1e-6
            braked = bool(b.ctl.vel_mode[:8].any()) or not np.array_equal(b.ctl.target, self.target)
            flags = list(b.ctl.motion_flags)
        if reached and self.targets:
            self.start()
            return False
        if reached:
            self.finished = True
            if self.on_done is not None:
                self.on_done()
            return True
        if braked:
            return self._fail("move_stopped", f"{self.what} was stopped by the safety layer ({', '.join(flags) or 'hold'})"
                                              f"; the arm holds where it stopped")
        if time.monotonic() > self.deadline:
            worst = b.description.joints[int(np.nanargmax(err))].name
            b.hold()
            return self._fail("move_timeout", f"{self.what} did not finish within {self.deadline - self.t0:g} s "
                                              f"({worst} is {np.nanmax(err):.3f} away); the arm holds")
        return False

    def _fail(self, code: str, message: str) -> bool:
        self.error = RequestError(code, message)
        self.finished = True
        return True

    def cancel(self, reason: str) -> None:
        if self.finished:
            return
        self.b.hold()
        self._fail("cancelled", f"{self.what} was cancelled by {reason} after {time.monotonic() - self.t0:.2f} s; "
                                "the arm holds where it stopped")

    def result(self):
        if self.error is not None:
            raise self.error
        return None


class _Job:
    """Work for the loop thread: `steps` is a generator, advanced once per cycle."""

    def __init__(self, what: str, steps):
        self.what, self.steps = what, steps
        self.done = False
        self.error: RequestError | None = None
        self.cancelled: str | None = None
        self.on_failure = None
        self.rebooted: list[str] = []


class _JobOperation(Operation):
    def __init__(self, job: _Job):
        self.job = job
        self.what = job.what

    def poll(self) -> bool:
        return self.job.done

    def cancel(self, reason: str) -> None:
        self.job.cancelled = reason

    def result(self):
        if self.job.cancelled is not None and self.job.error is None:
            raise RequestError("cancelled", f"{self.what} cancelled by {self.job.cancelled}")
        if self.job.error is not None:
            raise self.job.error
        return {"rebooted": self.job.rebooted}
