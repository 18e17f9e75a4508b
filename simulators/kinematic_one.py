"""The kinematic simulator's one-robot kernel: plain floats where numpy's per-call cost would dominate.

`simulators.kinematic.KinematicSim` runs this for one robot and `kinematic_many` for N; the two
agree robot for robot (tests/test_batched_sim.py). Joints follow their targets under the safety
layer's motion limits; the sim-to-real knobs (action latency, joint noise, speed randomization).
"""
from __future__ import annotations

import collections
import math

import numpy as np

from robot_env.control.safety import SafetyConfig
from robot_env.control.targets import Kinematics, TargetController, check_start_pose, ee_velocity
from robot_env.model.description import ARM, FETCH, NJ, READY_ARM, READY_TORSO, TORSO
from robot_env.model.kinematics import rot_to_quat

_ROBOT_0 = (0,)  # `clipped` is {flag: robots}, for one robot as for N


class OneRobot:
    def __init__(self, safety: SafetyConfig | None = None, control_period: float = 0.04,
                 action_latency_steps: int = 0, observation_noise: float = 0.0,
                 speed_randomization: float = 0.0, description=FETCH):
        self.description = description
        self.period = control_period
        self.ctl = TargetController(safety or SafetyConfig(), description)
        self.latency_steps = int(action_latency_steps)
        self.noise = float(observation_noise)
        self.speed_rand = float(speed_randomization)
        self.pending: collections.deque = collections.deque()
        self.rng = np.random.default_rng()
        self.reset(None, {})

    # -- the backend's methods (robots: always None for one robot) ---------------------------
    def reset(self, seed, options, robots=None) -> None:
        """`options` arrive validated by the server (`commands.parse_reset_options`)."""
        q = np.zeros(NJ)
        q[TORSO] = READY_TORSO
        q[ARM] = READY_ARM
        if "initial_arm_position" in options:
            q[ARM] = options["initial_arm_position"]
        if "initial_torso" in options:
            q[TORSO] = options["initial_torso"]
        check_start_pose(self.ctl, q)
        if seed is not None:  # only once the request is known good: a refused reset changes nothing
            self.rng = np.random.default_rng(seed)
        self.q = q
        self.v = np.zeros(NJ)
        self.base = [0.0, 0.0, 0.0, 0.0, 0.0]  # x, y, theta, v, w
        self.time = 0.0
        self.pending.clear()
        self.speed_scale = (1.0 - self.speed_rand * self.rng.random(NJ)) if self.speed_rand else 1.0
        self.ctl.reset(q)
        self.clipped: list[str] = []
        self._plant_reset(options)
        self._measure()

    def apply(self, command: dict, robots=None) -> list[str]:
        if self.latency_steps:
            self.pending.append((self.time + self.latency_steps * self.period - 1e-9, command))
            return self.clipped
        self.clipped = self.ctl.apply(command, self.kin, self.time)
        return self.clipped

    def advance(self, dt: float) -> None:
        while dt > 1e-12:
            h = min(dt, self.period)
            while self.pending and self.pending[0][0] <= self.time:
                self.clipped = self.ctl.apply(self.pending.popleft()[1], self.kin, self.time)
            kin = self.kin  # the last measurement's FK: the workspace guard's reference
            q0, v0 = self.q, self.v
            self.q, self.v = self.ctl.advance(q0, v0, h, self.time, self.speed_scale, (kin.q.tolist(), kin.pos))
            self._drive(h)
            self._plant_step(q0, v0, h)
            self.time += h
            dt -= h
        self._measure()

    def hold(self) -> None:
        self.pending.clear()
        self.ctl.hold(self.q, self.v, self.period)

    def state(self) -> dict:
        kin = self.kin
        dq = self._sensed_velocity()
        return {
            "time": self.time,
            "q": self.q_meas,
            "dq": dq,
            "effort": np.zeros(NJ),
            "target": self.ctl.target.copy(),
            "ee": np.array(kin.pos + rot_to_quat(kin.rot)),
            "ee_vel": ee_velocity(kin, dq),
            "base": np.array(self.base),
            "objects": {},
            "faults": [],
            "clipped": dict.fromkeys(self.clipped + self.ctl.motion_flags, _ROBOT_0)
            if self.clipped or self.ctl.motion_flags else {},
        }

    # -- a physical plant's hooks (`simulators.mujoco_sim`): here the joints are where the limiter puts them
    def _plant_reset(self, options: dict) -> None:
        """After a reset's commands are set, before the first measurement."""

    def _plant_step(self, q0: np.ndarray, v0: np.ndarray, h: float) -> None:
        """Move the plant along the limiter's trajectory (q0, v0) -> (self.q, self.v) over h."""

    def _sensed(self) -> np.ndarray:
        """The joint positions the sensors read (before noise): the limiter's output, for a kinematic robot."""
        return self.q

    def _sensed_velocity(self) -> np.ndarray:
        """The joint velocities the state reports (a copy): the limiter's, for a kinematic robot."""
        return self.v.copy()

    # -- internals ---------------------------------------------------------------------------
    def _measure(self) -> None:
        """Sample the sensors: what the state reports and what IK linearises around."""
        q = self._sensed()
        if self.noise:
            q = q + self.rng.normal(0.0, self.noise, NJ)
        self.q_meas = q
        self.kin = Kinematics(q)

    def _drive(self, h: float) -> None:
        x, y, th, v, w = self.base
        v_cmd, w_cmd = self.ctl.base_cmd
        if v or w or v_cmd or w_cmd:
            v, w = self.ctl.base.step(v, w, v_cmd, w_cmd, h)
            th_mid = th + 0.5 * w * h
            x += v * math.cos(th_mid) * h
            y += v * math.sin(th_mid) * h
            th = math.atan2(math.sin(th + w * h), math.cos(th + w * h))
            self.base = [x, y, th, v, w]
