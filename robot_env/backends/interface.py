"""The Backend interface: what the server needs from a robot, simulated or real.

Nothing above this interface knows which backend runs. A backend is loaded by name from the
config (`registry.load_backend`), so `robot_env` never imports `simulators` or `drivers` directly.
Backends are batch-first: a backend hosts `num_robots` robots (its `spec` says how many, and what
it offers), and the server hands every call the same way whatever that number is.
"""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import BackendSpec


class Operation(abc.ABC):
    """A backend operation that lasts longer than a control period: a move of the real arm to a
    start or rest pose, a servo reboot. The server keeps serving around it (state, stream,
    watchdog, e-stop) instead of waiting inside the backend, and answers the request that started
    it once `poll()` says it is over. An e-stop cancels it."""

    what: str = "operation"

    @abc.abstractmethod
    def poll(self) -> bool:
        """True once finished, successfully or not; called on every turn of the server's loop."""

    @abc.abstractmethod
    def cancel(self, reason: str) -> None:
        """Stop now (the e-stop): the backend holds where it can stop; `result()` then raises."""

    @abc.abstractmethod
    def result(self) -> dict | None:
        """After `poll()` is True: extra reply fields (or None), or raise RequestError."""


class Backend(abc.ABC):
    """A robot the server can drive. All methods run on the server's thread.

    `apply` only sets targets (clipped by the safety layer; it returns the clip flags); motion
    happens in `advance`, which moves time forward by `dt` (a simulator integrates; a hardware
    backend, whose own loop moves the servos on the wall clock, just checks for faults).
    `reset`, `reset_faults` and `park` may return an `Operation` instead of finishing at once: the
    server must never block for longer than a control period.

    Optional: ``render(cameras, robots=None) -> {name: ndarray (n, height, width, channels)}``, the
    frames of the named cameras (names from ``spec.cameras``; the server has checked them) for
    robots `robots` (None: all, n = num_robots), each array exactly its `CameraSpec`'s shape and
    dtype (uint8 RGB, float32 depth in metres), C-contiguous and not reused afterwards (the server
    hands it to ZeroMQ without a copy). The server calls it after the step, on requests that ask
    for `frames`. A backend without it announces no cameras (an empty ``spec.cameras``), and
    frame requests to it are refused; one that announces cameras must have it. It is not defined
    here on purpose: the server looks for it on the backend's class. A backend whose cameras can
    stop delivering (hardware) may also define ``check_frames(names)``, which the server calls on
    every request for frames before anything moves, raising `RequestError` for a camera that has
    nothing to serve.
    """

    kind: str = "abstract"
    #: True for hardware: the server must run the realtime clock.
    realtime_only: bool = False
    #: command channels this backend accepts
    channels: frozenset = frozenset()
    #: the most robots one instance hosts (`num_robots` in its settings when above 1)
    max_robots: int = 1
    #: the config's [server.<name>] table: key -> (type, default, check, what it wants[, "path" or a resolver])
    Settings: dict = {}
    #: what this instance offers, announced in `hello` (set by __init__)
    spec: "BackendSpec"

    @abc.abstractmethod
    def reset(self, seed: int | None, options: dict, robots=None) -> Operation | None:
        """Validate everything first (a refused reset changes nothing), then start the episode.
        `robots`: the robots to reset (an index array; None: all)."""

    @abc.abstractmethod
    def apply(self, command: dict, robots=None):
        """Set targets; `robots` as for `reset` (values then carry one row per listed robot)."""

    @abc.abstractmethod
    def advance(self, dt: float) -> None: ...

    @abc.abstractmethod
    def state(self) -> dict:
        """The wire state: arrays q, dq, effort, target (joint order of the description), ee (pos +
        quat xyzw), ee_vel (6), base (x, y, θ, v, ω), objects, faults, clipped, time."""

    @abc.abstractmethod
    def hold(self) -> None:
        """Watchdog or e-stop: the arm holds where it can stop, the base stops."""

    def reset_faults(self, reboot=()) -> Operation | None:
        """Clear recoverable faults, touching only the faulted parts. `reboot`: joint names the
        caller agrees may be rebooted where that drops a servo that still holds (hardware)."""

    @property
    def faults(self) -> list:
        return []

    def park(self) -> Operation | None:
        """Before `close`: move to the rest pose (hardware; the arm has no brakes)."""
        return None

    def close(self) -> None:
        """Release resources; hardware turns torque off only after a completed `park`."""


def finish(result, interval: float = 0.005):
    """Wait out what a backend call returned (an `Operation`, or None): for code that drives a
    backend without a server, as the tests do. Returns the operation's extra reply fields."""
    import time
    if not isinstance(result, Operation):
        return result
    while not result.poll():
        time.sleep(interval)
    return result.result()
