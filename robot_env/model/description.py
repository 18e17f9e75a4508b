"""The Fetch-style robot, as data: the one description every backend, the IK and the driver read.

Origins, axes and limits come from the public Fetch URDF (fetch_description). The continuous roll
joints get a one-turn range so a position-mode servo can hold them and the safety layer has a bound.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Joint:
    name: str
    kind: str  # "revolute" | "prismatic"
    origin: tuple[float, float, float]  # in the parent frame (all rpy are zero on Fetch's chain)
    axis: str  # "x" | "y" | "z"
    lower: float
    upper: float
    velocity: float  # rad/s or m/s
    acceleration: float  # rad/s² or m/s²


# Actuated joints in state order. The gripper is one width joint (0..0.10 m); each finger is half of it.
JOINTS: tuple[Joint, ...] = (
    Joint("torso_lift_joint", "prismatic", (-0.086875, 0.0, 0.37743), "z", 0.0, 0.38615, 0.1, 0.5),
    Joint("shoulder_pan_joint", "revolute", (0.119525, 0.0, 0.34858), "z", -1.6056, 1.6056, 1.256, 20.0),
    Joint("shoulder_lift_joint", "revolute", (0.117, 0.0, 0.06), "y", -1.221, 1.518, 1.454, 20.0),
    Joint("upperarm_roll_joint", "revolute", (0.219, 0.0, 0.0), "x", -math.pi, math.pi, 1.571, 20.0),
    Joint("elbow_flex_joint", "revolute", (0.133, 0.0, 0.0), "y", -2.251, 2.251, 1.521, 20.0),
    Joint("forearm_roll_joint", "revolute", (0.197, 0.0, 0.0), "x", -math.pi, math.pi, 1.571, 20.0),
    Joint("wrist_flex_joint", "revolute", (0.1245, 0.0, 0.0), "y", -2.16, 2.16, 2.268, 20.0),
    Joint("wrist_roll_joint", "revolute", (0.1385, 0.0, 0.0), "x", -math.pi, math.pi, 2.268, 20.0),
    Joint("gripper_joint", "prismatic", (0.16645, 0.0, 0.0), "y", 0.0, 0.10, 0.10, 1.0),
    Joint("head_pan_joint", "revolute", (0.053125, 0.0, 0.603001), "z", -1.57, 1.57, 1.57, 10.0),
    Joint("head_tilt_joint", "revolute", (0.14253, 0.0, 0.057999), "y", -0.76, 1.45, 1.57, 10.0),
)
JOINT_NAMES = tuple(j.name for j in JOINTS)
NJ = len(JOINTS)
TORSO = 0
ARM = slice(1, 8)
GRIPPER = 8
HEAD = slice(9, 11)
ARM_AXES = tuple(j.axis for j in JOINTS[ARM])
ARM_ORIGINS = tuple(j.origin for j in JOINTS[ARM])
# wrist_roll_link -> gripper_link (fixed); the gripper frame is the end effector.
GRIPPER_OFFSET = JOINTS[GRIPPER].origin[0]

# Diff-drive base.
BASE_TRACK = 0.37476
WHEEL_RADIUS = 0.0605
BASE_MAX_V = 1.0
BASE_MAX_W = 4.5
BASE_ACC_V = 0.75
BASE_ACC_W = 3.0

TUCK_ARM = (1.32, 1.40, -0.2, 1.72, 0.0, 1.66, 0.0)
TUCK_TORSO = 0.05
# The ready pose (reset default): torso at 0.3 m, gripper pointing straight down at about
# (0.60, 0, 0.80) in base_link. Every reaching goal (±0.15 m around it) is reachable pointing down.
READY_TORSO = 0.3
READY_ARM = (0.0, -0.8304, 0.0, 1.6775, 0.0, math.pi / 2 + 0.8304 - 1.6775, 0.0)


@dataclass(frozen=True)
class MotionProfile:
    """Per-joint velocity and acceleration limits; the shipped profiles differ only in acceleration."""

    name: str
    velocity: tuple[float, ...]
    acceleration: tuple[float, ...]


def motion_profile(name: str = "default", arm_acceleration: float | None = None) -> MotionProfile:
    """`default`: URDF velocities, 20 rad/s² on the arm. `moveit`: MoveIt's gentle planning accelerations."""
    vel = tuple(j.velocity for j in JOINTS)
    acc = list(j.acceleration for j in JOINTS)
    if name == "moveit":
        acc[ARM] = [1.5, 1.5, 2.0, 2.0, 2.5, 2.5, 2.5]
        acc[TORSO] = 0.3
    elif name != "default":
        raise ValueError(f"unknown motion profile {name!r} (expected 'default' or 'moveit')")
    if arm_acceleration is not None:
        acc[ARM] = [float(arm_acceleration)] * 7
    return MotionProfile(name, vel, tuple(acc))


@dataclass(frozen=True)
class RobotDescription:
    """What a client needs to know about the robot on the other side; hashed so policies can check it."""

    joints: tuple[Joint, ...] = JOINTS
    base_track: float = BASE_TRACK
    wheel_radius: float = WHEEL_RADIUS
    extra: dict = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    @property
    def lower(self) -> np.ndarray:
        return np.array([j.lower for j in self.joints])

    @property
    def upper(self) -> np.ndarray:
        return np.array([j.upper for j in self.joints])

    def to_dict(self) -> dict:
        return {
            "joints": [
                {"name": j.name, "kind": j.kind, "origin": list(j.origin), "axis": j.axis,
                 "lower": j.lower, "upper": j.upper, "velocity": j.velocity}
                for j in self.joints
            ],
            "base": {"track": self.base_track, "wheel_radius": self.wheel_radius,
                     "max_v": BASE_MAX_V, "max_w": BASE_MAX_W},
        }

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


FETCH = RobotDescription()
