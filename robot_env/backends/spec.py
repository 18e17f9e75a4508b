"""What a backend offers, declared once and announced in `hello` (dm_env_rpc's spec in the handshake).

A client builds its spaces from a task and this spec, and refuses a server that lacks what the
task needs before anything moves; the server checks commands and reset options against it.
Nothing reads a backend's private attributes to find these things out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..model.description import FETCH, RobotDescription

# The fields of an object in the state, each (N, k) or (k,) in the base frame: what tasks may ask for.
OBJECT_FIELDS = {"pos": 3, "quat": 4, "linvel": 3, "angvel": 3}


@dataclass(frozen=True)
class CameraSpec:
    """One camera's frames: `channels` 3 (RGB, uint8) or 1 (depth, float32 metres, at most `max_value`:
    the far clipping plane, where the renderer puts everything beyond it)."""

    height: int
    width: int
    channels: int = 3
    dtype: str = "uint8"
    max_value: float | None = None

    def to_wire(self) -> dict:
        out = {"height": self.height, "width": self.width, "channels": self.channels, "dtype": self.dtype}
        if self.max_value is not None:
            out["max"] = self.max_value
        return out


@dataclass(frozen=True)
class SafetyParams:
    """The safety limits a client plans with (announced, not read off the backend's private state)."""

    max_ee_step: float
    max_joint_step: float
    workspace_min: tuple
    workspace_max: tuple
    floor_height: float
    velocity_timeout: float

    @classmethod
    def of(cls, cfg) -> "SafetyParams":
        return cls(cfg.max_ee_step, cfg.max_joint_step, tuple(cfg.workspace_min), tuple(cfg.workspace_max),
                   cfg.floor_height, cfg.velocity_timeout)

    def to_wire(self) -> dict:
        return {"max_ee_step": self.max_ee_step, "max_joint_step": self.max_joint_step,
                "workspace_min": list(self.workspace_min), "workspace_max": list(self.workspace_max),
                "floor_height": self.floor_height, "velocity_timeout": self.velocity_timeout}


@dataclass(frozen=True)
class BackendSpec:
    """A backend's contract: robots, the robot, what may be commanded and reset, what it reports."""

    kind: str
    num_robots: int
    channels: Mapping[str, tuple]  # name -> shape of one robot's value (() a scalar)
    reset_options: Mapping[str, tuple]  # name -> shape of one robot's value
    safety: SafetyParams
    description: RobotDescription = FETCH
    objects: Mapping[str, tuple] = field(default_factory=dict)  # name -> its fields (OBJECT_FIELDS keys)
    cameras: Mapping[str, CameraSpec] = field(default_factory=dict)
    scene: str | None = None
    realtime_only: bool = False
    ready_ee: tuple | None = None  # where a reset without start-pose options leaves the gripper
    scene_info: Mapping = field(default_factory=dict)  # the scene's geometry a client plans with (table box)

    def to_wire(self) -> dict:
        return {
            "kind": self.kind, "num_robots": self.num_robots,
            "channels": {k: list(v) for k, v in self.channels.items()},
            "reset_options": {k: list(v) for k, v in self.reset_options.items()},
            "objects": {k: list(v) for k, v in self.objects.items()},
            "cameras": {k: c.to_wire() for k, c in self.cameras.items()},
            "scene": self.scene, "realtime_only": self.realtime_only, "safety": self.safety.to_wire(),
            "ready_ee": None if self.ready_ee is None else list(self.ready_ee),
            "scene_info": dict(self.scene_info),
        }


def ready_gripper() -> tuple:
    """Where the ready pose (every backend's reset default) puts the gripper, in the base frame."""
    from ..model.description import READY_ARM, READY_TORSO
    from ..model.kinematics import fk_frames
    return tuple(fk_frames(READY_TORSO, list(READY_ARM))[0])
