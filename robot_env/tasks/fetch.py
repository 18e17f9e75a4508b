"""Gymnasium-Robotics' Fetch tasks as data: one task config, a few arguments apart (their `fetch/*.py`).

`REACH` is FetchReach-v4's task (observation layout, goal range, success threshold, rewards, 50
steps) on whichever robot a server hosts; `PUSH`, `SLIDE` and `PICK_AND_PLACE` add an object
(`object0`) and need a backend that simulates one. What differs from the reference is the robot:
the arm moves under Fetch's joint limits through the server's safety layer (no mocap), so the object
tasks' episodes are longer; Reach starts at the backend's reset pose (the ready pose), the object
tasks at Gymnasium-Robotics' gripper height above the table (`start_height`, set with the torso: what
`gripper_extra_height` gives there) with the elbow out to the side (`start_arm`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..model.description import ARM, GRIPPER, READY_TORSO
from .base import BoundTask, Task, TaskNeeds

OBS_BOUND = 5.0  # finite observation bounds (check_env prefers them): metres, and velocities × dt
CONTROLS = ("ee_delta", "joint_velocity")
REWARDS = ("sparse", "dense")


@dataclass(frozen=True)
class FetchTask(Task):
    """Gymnasium-Robotics' FetchEnv arguments, plus how actions reach the robot (`control`)."""

    name: str = "FetchReach"
    has_object: bool = False
    block_gripper: bool = True
    target_in_the_air: bool = True
    target_offset: tuple = (0.0, 0.0, 0.0)
    obj_range: float = 0.15
    target_range: float = 0.15
    distance_threshold: float = 0.05
    gripper_extra_height: float = 0.2  # the reference's; here the backend's reset pose sets the start
    max_episode_steps: int = 50
    reward_type: str = "sparse"
    control: str = "ee_delta"  # Box(4): gripper delta × action_scale + fingers; or joint_velocity: Box(8)
    action_scale: float = 0.05  # m per step for a full-scale ee_delta action (the reference's mocap delta)
    scene: str | None = None
    # The gripper's height above the scene's table at the start (set with the torso, which moves it
    # straight up or down): Gymnasium-Robotics' start heights, which `gripper_extra_height` gives there.
    start_height: float | None = None
    # The arm's start joints (None: the backend's ready pose); the gripper must start where the ready
    # pose puts it, pointing down, so only the elbow's place differs.
    start_arm: tuple | None = None

    def __post_init__(self):
        if self.reward_type not in REWARDS:
            raise ValueError(f"reward_type must be 'sparse' or 'dense', got {self.reward_type!r}")
        if self.control not in CONTROLS:
            raise ValueError(f"control must be 'ee_delta' or 'joint_velocity', got {self.control!r}")
        if not (self.max_episode_steps >= 1 and self.distance_threshold > 0 and self.target_range >= 0):
            raise ValueError(f"task {self.name}: episode length, threshold and ranges must be positive")

    def with_(self, **changes) -> "FetchTask":
        """This task with some arguments changed (`REACH.with_(reward_type="dense")`)."""
        return replace(self, **changes)

    @property
    def needs(self) -> TaskNeeds:
        chans = {"ee_delta" if self.control == "ee_delta" else "arm_velocity"}
        if not self.block_gripper:
            chans.add("gripper")
        if not self.has_object:
            return TaskNeeds(frozenset(chans))
        opts = {OBJECT_XY, "initial_torso"} if self.start_height is not None else {OBJECT_XY}
        if self.start_arm is not None:
            opts.add("initial_arm_position")
        return TaskNeeds(frozenset(chans), objects=("object0",), scene=self.scene, reset_options=frozenset(opts))

    def bound(self, info: dict) -> "BoundFetchTask":
        return BoundFetchTask(self, info)


REACH = FetchTask("FetchReach")
# Start heights: Gymnasium-Robotics' grip site starts 0.016 m (Push), 0.0155 m (Slide) and 0.135 m
# (PickAndPlace) above its table; here the fingertips reach 0.02 m below the grip point, so the
# pushing tasks start with the grip point 0.025 m up (fingertips 5 mm clear, at the block's centre height).
# Episode lengths: Gymnasium-Robotics' 50 steps are for a mocap-welded gripper that moves 5 cm a step;
# this arm is joint-driven under Fetch's joint speeds and a 5 rad/s² acceleration limit (0.3-0.5 m/s).
# Chosen as the shortest length at which the scripted agents (robot_env/apps/scripted.py) meet their
# bar with margin, measured on the mujoco config with `robot-env demo --env ID --episodes 100 --seed S
# --lengths ...`, seeds 0..99 / 1000..1099, from the elbow-out start below (the README has the table):
#   Push (bar 90 %):           60 steps 90 / 87 %, 65: 95 / 92 %, 70: 97 / 97 %, 80: 98 / 100 %
#   Slide (a strike; no bar):  50 steps 13 / 24 %, 100: 28 / 36 %, 150: 29 / 36 % (the arm reaches x ≈ 0.85 m)
#   PickAndPlace (bar 95 %):   50 steps 94 / 94 %, 60: 100 / 99 %, 65: 100 / 99 %
# The object tasks' start arm: the ready pose's gripper (same place to 0.2 mm, pointing down) with
# the elbow 0.25 m out to the side, found numerically. With the ready pose's elbow-up arm the forearm
# stands between the head camera and the table; out to the side, the head camera sees the table, the
# gripper and the block (and the scripted Push agent succeeds more often: 60/60 against 57/60).
ELBOW_OUT_ARM = (0.5796, -0.2888, -1.3074, 1.5824, -1.8665, -1.3148, 2.2155)
PUSH = FetchTask("FetchPush", has_object=True, block_gripper=True, target_in_the_air=False,
                 gripper_extra_height=0.0, scene="table", start_height=0.025, start_arm=ELBOW_OUT_ARM,
                 max_episode_steps=70)
SLIDE = FetchTask("FetchSlide", has_object=True, block_gripper=True, target_in_the_air=False,
                  target_offset=(0.4, 0.0, 0.0), obj_range=0.1, target_range=0.3, gripper_extra_height=-0.02,
                  scene="slide_table", start_height=0.025, start_arm=ELBOW_OUT_ARM,
                  max_episode_steps=100)
PICK_AND_PLACE = FetchTask("FetchPickAndPlace", has_object=True, block_gripper=False, target_in_the_air=True,
                           gripper_extra_height=0.2, scene="table", start_height=0.135, start_arm=ELBOW_OUT_ARM,
                           max_episode_steps=60)


OBJECT_XY = "object0.xy"  # the reset option that places the object on its table (x, y in the base frame)


class BoundFetchTask(BoundTask):
    """A `FetchTask` against one server: its joint limits, control period and (for objects) the
    gripper's start, around which objects are placed."""

    def __init__(self, task: FetchTask, info: dict):
        # imported here: importing gymnasium registers robot-env's envs, which import this module
        from gymnasium import spaces
        self.task = task
        self.dt = float(info["control_period"])
        spec = info.get("spec") or {}
        ready = spec.get("ready_ee")
        self.ready_xy = np.array(ready[:2], float) if ready is not None else None
        table = (spec.get("scene_info") or {}).get("table")
        self.start_torso = None  # the torso that puts the gripper at the task's start height
        if task.start_height is not None and table is not None and ready is not None:
            self.start_torso = READY_TORSO + (table["top"] + task.start_height - ready[2])
        joints = info["description"]["joints"]
        self.arm_vmax = np.array([j["velocity"] for j in joints[ARM]])
        self._arm_vmax_list = self.arm_vmax.tolist()
        self.width_max = float(joints[GRIPPER]["upper"])
        self.threshold = task.distance_threshold
        n_act = 4 if task.control == "ee_delta" else 8
        self.action_space = spaces.Box(-1.0, 1.0, (n_act,), dtype=np.float32)
        n_obs = 25 if task.has_object else 10
        goal_box = spaces.Box(-OBS_BOUND, OBS_BOUND, (3,), dtype=np.float64)
        self.observation_space = spaces.Dict({"observation": spaces.Box(-OBS_BOUND, OBS_BOUND, (n_obs,),
                                                                        dtype=np.float64),
                                              "achieved_goal": goal_box, "desired_goal": goal_box})

    # -- episodes --------------------------------------------------------------------------------
    def reset_options(self, rng, n: int) -> dict:
        """Objects as Gymnasium-Robotics places them: start gripper xy + U(±obj_range)², redrawn
        until at least 0.1 m from the gripper."""
        if not self.task.has_object:
            return {}
        xy = np.empty((n, 2))
        for i in range(n):
            p = self.ready_xy
            while np.linalg.norm(p - self.ready_xy) < 0.1:
                p = self.ready_xy + rng.uniform(-self.task.obj_range, self.task.obj_range, size=2)
            xy[i] = p
        out = {OBJECT_XY: xy}
        if self.start_torso is not None:
            out["initial_torso"] = np.full(n, self.start_torso)
        if self.task.start_arm is not None:
            out["initial_arm_position"] = np.tile(np.asarray(self.task.start_arm, float), (n, 1))
        return out

    def sample_goals(self, rng, state: dict, rows: np.ndarray) -> np.ndarray:
        """Around the gripper's start (± target_range, + target_offset); with an object the goal
        lies at the object's resting height, half of them lifted by U(0, 0.45) when in the air."""
        t = self.task
        start = np.atleast_2d(state["ee"])[rows, :3]
        if not t.has_object:
            goals = start + rng.uniform(-t.target_range, t.target_range, size=(len(rows), 3))
            return goals + np.asarray(t.target_offset) if any(t.target_offset) else goals
        height = np.atleast_2d(state["objects"]["object0"]["pos"])[rows, 2]
        goals = np.empty((len(rows), 3))
        for i in range(len(rows)):  # row by row: the same draws, in the same order, as one env
            g = start[i] + rng.uniform(-t.target_range, t.target_range, size=3) + np.asarray(t.target_offset)
            g[2] = height[i]
            if t.target_in_the_air and rng.uniform() < 0.5:
                g[2] += rng.uniform(0, 0.45)
            goals[i] = g
        return goals

    # -- actions ---------------------------------------------------------------------------------
    def command(self, a: np.ndarray) -> dict:
        t = self.task
        cmd = {"ee_delta": a[:, :3] * t.action_scale} if t.control == "ee_delta" else \
            {"arm_velocity": a[:, :7] * self.arm_vmax}
        if not t.block_gripper:
            cmd["gripper"] = (a[:, -1] + 1.0) * 0.5 * self.width_max
        return cmd

    def command_one(self, a: list) -> dict:
        """Plain floats: the same products as `command`, bit for bit."""
        t = self.task
        if t.control == "ee_delta":
            s = t.action_scale
            cmd = {"ee_delta": [a[0] * s, a[1] * s, a[2] * s]}
        else:
            cmd = {"arm_velocity": [x * v for x, v in zip(a, self._arm_vmax_list)]}
        if not t.block_gripper:
            cmd["gripper"] = (a[-1] + 1.0) * 0.5 * self.width_max
        return cmd

    # -- observations ----------------------------------------------------------------------------
    def observe(self, st: dict, goals: np.ndarray) -> dict:
        """FetchReach's 10-d observation, or the object tasks' 25-d one (Gymnasium-Robotics' layout:
        grip pos, object pos, object - grip, fingers, object Euler angles, (object - grip) linear
        velocity × dt, object angular velocity × dt, grip velocity × dt, finger velocities × dt)."""
        ee = np.atleast_2d(st["ee"])
        q, dq, ee_vel = np.atleast_2d(st["q"]), np.atleast_2d(st["dq"]), np.atleast_2d(st["ee_vel"])
        n = ee.shape[0]
        dt = self.dt
        half_w = 0.5 * q[:, GRIPPER]
        half_v = 0.5 * dt * dq[:, GRIPPER]
        grip = ee[:, :3]
        grip_velp = ee_vel[:, :3] * dt
        if not self.task.has_object:
            obs = np.empty((n, 10))
            obs[:, 0:3] = grip
            obs[:, 3] = half_w
            obs[:, 4] = half_w
            obs[:, 5:8] = grip_velp
            obs[:, 8] = half_v
            obs[:, 9] = half_v
            return {"observation": obs, "achieved_goal": grip.copy(), "desired_goal": np.array(goals, float)}
        ob = st["objects"]["object0"]
        pos = np.atleast_2d(ob["pos"])
        obs = np.empty((n, 25))
        obs[:, 0:3] = grip
        obs[:, 3:6] = pos
        obs[:, 6:9] = pos - grip
        obs[:, 9] = half_w
        obs[:, 10] = half_w
        obs[:, 11:14] = quat_to_euler(np.atleast_2d(ob["quat"]))
        obs[:, 14:17] = np.atleast_2d(ob["linvel"]) * dt - grip_velp
        obs[:, 17:20] = np.atleast_2d(ob["angvel"]) * dt
        obs[:, 20:23] = grip_velp
        obs[:, 23] = half_v
        obs[:, 24] = half_v
        return {"observation": obs, "achieved_goal": pos.copy(), "desired_goal": np.array(goals, float)}

    def observe_one(self, st: dict, goal: np.ndarray) -> dict:
        """Plain floats for one robot's state: the same values as `observe`'s row."""
        if self.task.has_object:
            return self._observe_object_one(st, goal)
        ex, ey, ez = st["ee"].tolist()[:3]
        half_w, half_v = 0.5 * st["q"].item(GRIPPER), 0.5 * st["dq"].item(GRIPPER)
        dt = self.dt
        vx, vy, vz = st["ee_vel"].tolist()[:3]
        obs = np.array([ex, ey, ez, half_w, half_w, vx * dt, vy * dt, vz * dt, half_v * dt, half_v * dt])
        return {"observation": obs, "achieved_goal": np.array([ex, ey, ez]), "desired_goal": goal.copy()}

    def _observe_object_one(self, st: dict, goal: np.ndarray) -> dict:
        ob = st["objects"]["object0"]
        dt = self.dt
        ex, ey, ez = st["ee"].tolist()[:3]
        px, py, pz = ob["pos"].tolist()
        half_w, half_v = 0.5 * st["q"].item(GRIPPER), 0.5 * dt * st["dq"].item(GRIPPER)
        gx, gy, gz = (v * dt for v in st["ee_vel"].tolist()[:3])
        lx, ly, lz = ob["linvel"].tolist()
        ax, ay, az = ob["angvel"].tolist()
        r, p, y = _euler_one(*ob["quat"].tolist())
        obs = np.array([ex, ey, ez, px, py, pz, px - ex, py - ey, pz - ez, half_w, half_w, r, p, y,
                        lx * dt - gx, ly * dt - gy, lz * dt - gz, ax * dt, ay * dt, az * dt, gx, gy, gz,
                        half_v, half_v])
        return {"observation": obs, "achieved_goal": np.array([px, py, pz]), "desired_goal": goal.copy()}

    # -- reward and success ----------------------------------------------------------------------
    def compute_reward(self, achieved_goal, desired_goal, info):
        d = goal_distance(np.asarray(achieved_goal), np.asarray(desired_goal))
        if self.task.reward_type == "sparse":
            return -(d > self.threshold).astype(np.float32)
        return -d

    def is_success(self, achieved_goal, desired_goal) -> np.ndarray:
        return (goal_distance(np.asarray(achieved_goal), np.asarray(desired_goal)) < self.threshold).astype(np.float64)

    def reward_one(self, achieved: np.ndarray, goal: np.ndarray) -> tuple[float, float]:
        """`compute_reward` and `is_success` for one goal, as floats (np.linalg.norm sums the
        squares in this order, so the distance is the same bits)."""
        gx, gy, gz = goal.tolist()
        ax, ay, az = achieved.tolist()
        dx, dy, dz = ax - gx, ay - gy, az - gz
        d = math.sqrt(dx * dx + dy * dy + dz * dz)
        success = 1.0 if d < self.threshold else 0.0
        if self.task.reward_type == "sparse":
            return (-1.0 if d > self.threshold else -0.0), success  # float(-(d > t).astype(float32))
        return -d, success


def goal_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1)


def quat_to_euler(quat: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) as the state carries them (x, y, z, w) -> Euler angles (..., 3), by
    Gymnasium-Robotics' `rotations.mat2euler` (what its object observation holds)."""
    x, y, z, w = quat[..., 0], quat[..., 1], quat[..., 2], quat[..., 3]
    s = 2.0 / np.maximum(np.sum(quat * quat, axis=-1), 1e-300)
    m00 = 1.0 - s * (y * y + z * z)
    m01 = s * (x * y - w * z)
    m02 = s * (x * z + w * y)
    m10 = s * (x * y + w * z)
    m11 = 1.0 - s * (x * x + z * z)
    m12 = s * (y * z - w * x)
    m22 = 1.0 - s * (x * x + y * y)
    cy = np.sqrt(m22 * m22 + m12 * m12)
    ok = cy > _EPS4
    out = np.empty(quat.shape[:-1] + (3,))
    out[..., 2] = np.where(ok, -np.arctan2(m01, m00), -np.arctan2(-m10, m11))
    out[..., 1] = -np.arctan2(-m02, cy)
    out[..., 0] = np.where(ok, -np.arctan2(m12, m22), 0.0)
    return out


_EPS4 = np.finfo(np.float64).eps * 4.0


def _euler_one(x, y, z, w):
    """`quat_to_euler` for one quaternion, in floats."""
    n = x * x + y * y + z * z + w * w
    s = 2.0 / (n if n > 1e-300 else 1e-300)
    m00 = 1.0 - s * (y * y + z * z)
    m01 = s * (x * y - w * z)
    m02 = s * (x * z + w * y)
    m10 = s * (x * y + w * z)
    m11 = 1.0 - s * (x * x + z * z)
    m12 = s * (y * z - w * x)
    m22 = 1.0 - s * (x * x + y * y)
    cy = math.sqrt(m22 * m22 + m12 * m12)
    if cy > _EPS4:
        return -math.atan2(m12, m22), -math.atan2(-m02, cy), -math.atan2(m01, m00)
    return 0.0, -math.atan2(-m02, cy), -math.atan2(-m10, m11)
