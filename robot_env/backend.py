"""The Backend interface: what the server needs from a robot, simulated or real.

Nothing above this interface knows which backend runs. A backend is loaded by name from the
config (`load_backend`), so `robot_env` never imports `simulators` or `drivers` directly.
"""
from __future__ import annotations

import abc
import importlib

from .errors import ConfigError

# config `[server] backend` name -> "module:Class"
BACKENDS = {
    "kinematic": "simulators.kinematic:KinematicSim",
    "kinematic_batch": "simulators.kinematic_batch:BatchedKinematicSim",
    "dynamixel": "drivers.hardware:DynamixelBackend",
    "mujoco": "simulators.physics:MujocoSim",
}


class Backend(abc.ABC):
    """A robot the server can drive. All methods run on the server's thread.

    `apply` only sets targets (clipped by the safety layer; it returns the clip flags); motion
    happens in `advance`, which moves time forward by `dt` (a simulator integrates; a hardware
    backend, whose own loop moves the servos on the wall clock, just checks for faults).
    """

    kind: str = "abstract"
    #: True for hardware: the server must run the realtime clock.
    realtime_only: bool = False
    #: command channels this backend accepts
    channels: frozenset = frozenset()

    @abc.abstractmethod
    def reset(self, seed: int | None, options: dict) -> None: ...

    @abc.abstractmethod
    def apply(self, command: dict) -> list[str]: ...

    @abc.abstractmethod
    def advance(self, dt: float) -> None: ...

    @abc.abstractmethod
    def state(self) -> dict:
        """The wire state: arrays q, dq, effort, target (joint order of the description), ee (pos +
        quat xyzw), ee_vel (6), base (x, y, θ, v, ω), objects, faults, clipped, time."""

    @abc.abstractmethod
    def hold(self) -> None:
        """Watchdog or e-stop: the arm holds where it can stop, the base stops."""

    def reset_faults(self) -> None:
        """Clear recoverable faults (hardware reboots servos that report an error)."""

    @property
    def faults(self) -> list:
        return []

    def close(self) -> None:
        """Release resources; hardware moves to rest before torque off."""


def load_backend(name: str, **kwargs) -> Backend:
    """Instantiate the backend a config names, importing its module only now."""
    target = BACKENDS.get(name)
    if target is None:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    module, cls = target.split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"backend {name!r} is not available here: {exc}") from exc
    return getattr(mod, cls)(**kwargs)
