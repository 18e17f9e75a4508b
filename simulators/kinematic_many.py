"""The kinematic simulator's kernel for N robots: one request steps them all, on (N, ...) arrays.

What vector envs train against. Each robot is exactly a `KinematicSim` (same safety layer, same
motion limiter, same one-DLS-step Cartesian control from the measured joints, same sim-to-real
knobs), but the arithmetic runs once per request on (N, ...) arrays instead of N times, so the
cost per robot falls with N. Commands and reset options carry one row per robot, or one row per
robot listed in `robots` (the others keep their targets); clipped flags come back as
{flag: [robot indices]}.
"""
from __future__ import annotations

import collections

import numpy as np

from robot_env.control.safety import MotionLimiter, SafetyConfig, WorkspaceGuard
from robot_env.errors import RequestError
from robot_env.model.description import (
    ARM,
    BASE_ACC_V,
    BASE_ACC_W,
    FETCH,
    GRIPPER,
    HEAD,
    NJ,
    READY_ARM,
    READY_TORSO,
    TORSO,
)
from robot_env.model.kinematics_batch import (
    fk_frames_batch,
    jacobian_batch,
    limited_step_batch,
    orientation_error_batch,
    rot_to_quat_batch,
)

_ALL = slice(None)
_ARM_SOURCES = ("reset", "ee_delta", "arm_position", "arm_velocity")  # codes in `arm_source`
# A state costs ~500 bytes per robot: 512 robots keep every reply within the protocol's message limit.
MAX_ROBOTS = 512


class ManyRobots:
    def __init__(self, safety: SafetyConfig | None = None, control_period: float = 0.04, num_robots: int = 1,
                 action_latency_steps: int = 0, observation_noise: float = 0.0,
                 speed_randomization: float = 0.0, description=FETCH):
        if not 1 <= int(num_robots) <= MAX_ROBOTS:
            raise ValueError(f"num_robots must be in 1..{MAX_ROBOTS}, got {num_robots}")
        self.num_robots = n = int(num_robots)
        self.description = description
        self.period = control_period
        self.cfg = safety or SafetyConfig()
        self.limiter = MotionLimiter(description, self.cfg.profile, self.cfg.arm_acceleration)
        self.lower, self.upper = self.limiter.lower, self.limiter.upper
        self.guard = WorkspaceGuard(self.cfg, self.limiter)
        self.velocity_timeout = float(self.cfg.velocity_timeout)
        self.ws_lo = np.array(self.cfg.workspace_min, dtype=float)
        self.ws_hi = np.array(self.cfg.workspace_max, dtype=float)
        self.latency_steps = int(action_latency_steps)
        self.noise = float(observation_noise)
        self.speed_rand = float(speed_randomization)
        self.pending: collections.deque = collections.deque()
        self.rng = np.random.default_rng()
        self.q = np.zeros((n, NJ))
        self.v = np.zeros((n, NJ))
        self.target = np.zeros((n, NJ))
        self.vel_target = np.zeros((n, NJ))
        self.vel_mode = np.zeros((n, NJ), bool)
        self.base = np.zeros((n, 5))  # x, y, theta, v, w
        self.base_cmd = np.zeros((n, 2))
        self.hold_rot = np.zeros((n, 9))  # gripper orientation held by Cartesian control, per robot
        self.holding = np.zeros(n, bool)
        self.speed_scale = np.ones((n, NJ))
        self.base_until = np.full(n, -np.inf)  # velocity commands lapse at these times unless refreshed
        self.next_lapse = np.inf  # the earliest of those that can still lapse (an active velocity command)
        self.arm_vel_until = np.full(n, -np.inf)
        self.arm_source = np.zeros(n, np.int8)  # `_ARM_SOURCES` code of the channel that set the arm's target
        self.torso_source = np.zeros(n, bool)  # True: the torso channel set it (else a reset)
        self.motion_flags: dict[str, np.ndarray] = {}  # flag -> (N,) bool, raised while moving since the last command
        self.time = 0.0
        self.clipped: dict = {}
        self.reset(None, {})

    # -- Backend interface -------------------------------------------------------------------
    def reset(self, seed, options, robots=None) -> None:
        """Reset every robot, or those in `robots`; `options` rows are per reset robot (validated by
        the server, `commands.parse_batch_reset_options`)."""
        idx = _ALL if robots is None else robots
        rows = self.num_robots if robots is None else len(robots)
        q = np.zeros((rows, NJ))
        q[:, TORSO] = options["initial_torso"] if "initial_torso" in options else READY_TORSO
        q[:, ARM] = options["initial_arm_position"] if "initial_arm_position" in options else READY_ARM
        if ((q < self.lower) | (q > self.upper)).any():
            raise RequestError("bad_options", "initial pose is outside the joint limits")
        out = self.guard.excess_batch(np.stack(fk_frames_batch(q[:, TORSO], q[:, ARM])[0], axis=-1)) > 0.0
        if out.any():
            who = np.flatnonzero(out) if robots is None else np.asarray(robots)[out]
            raise RequestError("bad_options", f"start pose puts the gripper outside the workspace box "
                                              f"{self.guard.lo}..{self.guard.hi} for robot(s) {who.tolist()[:16]} "
                                              "([server.safety] workspace_min/max, floor_height)")
        if seed is not None:  # only once the request is known good: a refused reset changes nothing
            self.rng = np.random.default_rng(seed)
        self.q[idx] = q
        self.v[idx] = 0.0
        self.target[idx] = q
        self.vel_target[idx] = 0.0
        self.vel_mode[idx] = False
        self.base[idx] = 0.0
        self.base_cmd[idx] = 0.0
        self.holding[idx] = False
        self.base_until[idx] = -np.inf
        self.arm_vel_until[idx] = -np.inf
        self.arm_source[idx] = 0
        self.torso_source[idx] = False
        for flags in self.motion_flags.values():
            flags[idx] = False
        if self.speed_rand:
            self.speed_scale[idx] = 1.0 - self.speed_rand * self.rng.random((rows, NJ))
        if robots is None:
            self.time = 0.0
            self.pending.clear()
        else:  # commands still in flight for a reset robot are void: drop their rows now
            kept = collections.deque()
            for due, cmd, who in self.pending:
                who = np.arange(self.num_robots) if who is None else who
                keep = ~np.isin(who, robots)
                if keep.any():
                    kept.append((due, {k: v[keep] for k, v in cmd.items()}, who[keep]))
            self.pending = kept
        self.clipped = {}
        self._plant_reset(idx, options)
        self._measure(None if robots is None else robots)

    def apply(self, command: dict, robots=None) -> dict:
        if self.latency_steps:
            self.pending.append((self.time + self.latency_steps * self.period - 1e-9, command, robots))
            return self.clipped
        self.clipped = self._apply(command, robots)
        return self.clipped

    def advance(self, dt: float) -> None:
        while dt > 1e-12:
            h = min(dt, self.period)
            while self.pending and self.pending[0][0] <= self.time:
                _, cmd, robots = self.pending.popleft()
                self.clipped = self._apply(cmd, robots)
            self._lapse()
            q0, v0 = self.q, self.v
            self._step_joints(h)
            self._drive(h)
            self._plant_step(q0, v0, h)
            self.time += h
            dt -= h
        self._measure()

    def _lapse(self) -> None:
        """Velocity commands not refreshed within `velocity_timeout` stop (as `TargetController.advance`)."""
        t = self.time
        if t < self.next_lapse:  # nothing can lapse before then (no velocity command, or all fresh)
            return
        base = (t >= self.base_until) & (self.base_cmd != 0).any(axis=1)
        if base.any():
            self.base_cmd[base] = 0.0
            self._motion_flag("base_twist.lapsed", base)
        arm = (t >= self.arm_vel_until) & self.vel_mode[:, 1] & (self.vel_target[:, ARM] != 0).any(axis=1)
        if arm.any():
            self.vel_target[arm, 1:8] = 0.0
            self._motion_flag("arm_velocity.lapsed", arm)
        pending = np.concatenate([self.base_until[(self.base_cmd != 0).any(axis=1)],
                                  self.arm_vel_until[self.vel_mode[:, 1] & (self.vel_target[:, ARM] != 0).any(axis=1)]])
        self.next_lapse = pending.min() if pending.size else np.inf

    def _step_joints(self, h: float) -> None:
        """The limiter's step for every robot, then the workspace guard (as `TargetController.advance`)."""
        scale = self.speed_scale if self.speed_rand else 1.0
        q, v = self.q, self.v
        q_new, v_new = self.limiter.step(q, v, self.target, self.vel_target, self.vel_mode, h, scale)
        # the gripper positions of the last measurement are known: most robots need no FK here
        bad = ~self.guard.allows_batch(q, v, q_new, v_new, self.target, self.vel_mode, h,
                                       ref=(self.q_meas, self.ee_pos))
        if bad.any():
            moving = (np.abs(v[:, :8]) + np.abs(v_new[:, :8]) > 0.0)[bad]
            rows = np.flatnonzero(bad)
            for r, m in zip(rows, moving):
                if m[ARM].any():
                    self._motion_flag(f"{_ARM_SOURCES[self.arm_source[r]]}.workspace", r)
                if m[TORSO]:
                    self._motion_flag("torso.workspace" if self.torso_source[r] else "reset.workspace", r)
            self.vel_mode[bad, :8] = True  # brake at full rate: `TargetController.brake`
            self.vel_target[bad, :8] = 0.0
            self.arm_vel_until[bad] = np.inf
            q2, v2 = self.limiter.step(q, v, self.target, self.vel_target, self.vel_mode, h, scale)
            q_new[bad], v_new[bad] = q2[bad], v2[bad]
        self.q, self.v = q_new, v_new

    def _motion_flag(self, name: str, rows) -> None:
        flags = self.motion_flags.get(name)
        if flags is None:
            flags = self.motion_flags[name] = np.zeros(self.num_robots, bool)
        flags[rows] = True

    def hold(self) -> None:
        self.pending.clear()
        self.target = self.limiter.stopping_target(self.q, self.v, self.period)
        self.vel_mode[:] = False
        self.vel_target[:] = 0.0
        self.base_cmd[:] = 0.0

    def state(self) -> dict:
        n = self.num_robots
        dq = self._sensed_velocity()
        ee_vel = np.matmul(self.jac, dq[:, ARM, None])[..., 0]
        ee_vel[:, 2] += dq[:, TORSO]
        return {
            "time": self.time,
            "q": self.q_meas,
            "dq": dq,
            "effort": np.zeros((n, NJ)),
            "target": self.target.copy(),
            "ee": np.concatenate([self.ee_pos, rot_to_quat_batch(self.ee_rot)], axis=1),
            "ee_vel": ee_vel,
            "base": self.base.copy(),
            "objects": {},
            "faults": [],
            "clipped": self._clipped(),
        }

    def _clipped(self) -> dict:
        """The last command's clip flags, plus those raised while moving since each robot's last command."""
        if not self.motion_flags:
            return self.clipped
        out = dict(self.clipped)
        for name, rows in self.motion_flags.items():
            if rows.any():
                out[name] = sorted(set(out.get(name, [])) | set(np.flatnonzero(rows).tolist()))
        return out

    # -- a physical plant's hooks (`simulators.mujoco_sim`): here the joints are where the limiter puts them
    def _plant_reset(self, idx, options: dict) -> None:
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
    def _measure(self, rows=None) -> None:
        """Sample the sensors: what the state reports and what IK linearises around.

        `rows`: re-sample only these robots (a partial reset), so the others keep the sample they
        were observed, rewarded and controlled with.
        """
        sensed = self._sensed()
        if rows is not None:  # new arrays, not in place: states already handed out keep their values
            q = sensed[rows]
            if self.noise:
                q = q + self.rng.normal(0.0, self.noise, q.shape)
            pos, rot, origins, axes = fk_frames_batch(q[:, TORSO], q[:, ARM])
            for name, rows_value in (("q_meas", q), ("ee_pos", np.stack(pos, axis=-1)),
                                     ("ee_rot", np.stack(rot, axis=-1)), ("jac", jacobian_batch(pos, origins, axes))):
                whole = getattr(self, name).copy()
                whole[rows] = rows_value
                setattr(self, name, whole)
            return
        q = sensed
        if self.noise:
            q = q + self.rng.normal(0.0, self.noise, q.shape)
        self.q_meas = q
        pos, rot, origins, axes = fk_frames_batch(q[:, TORSO], q[:, ARM])
        self.ee_pos = np.stack(pos, axis=-1)
        self.ee_rot = np.stack(rot, axis=-1)
        self.jac = jacobian_batch(pos, origins, axes)

    def _apply(self, cmd: dict, robots) -> dict:
        idx = _ALL if robots is None else robots
        flags: dict = {}
        for rows in self.motion_flags.values():
            rows[idx] = False
        if "ee_delta" in cmd:
            self._ee_delta(cmd["ee_delta"], idx, robots, flags)
            self.arm_source[idx] = 1
        elif "arm_position" in cmd:
            self._arm_position(cmd["arm_position"], idx, robots, flags)
            self.arm_source[idx] = 2
        elif "arm_velocity" in cmd:
            vmax = self.limiter.vel[ARM]
            self.vel_target[idx, ARM] = self._clip("arm_velocity.velocity_limit", cmd["arm_velocity"], -vmax, vmax,
                                                   robots, flags)
            self.vel_mode[idx, ARM] = True
            self.holding[idx] = False
            self.arm_source[idx] = 3
            self.arm_vel_until[idx] = self.time + self.velocity_timeout
            self.next_lapse = min(self.next_lapse, self.time + self.velocity_timeout)
        if "gripper" in cmd:
            self.target[idx, GRIPPER] = self._clip("gripper.position_limit", cmd["gripper"], self.lower[GRIPPER],
                                                   self.upper[GRIPPER], robots, flags)
        if "torso" in cmd:
            torso = self._clip("torso.position_limit", cmd["torso"], self.lower[TORSO], self.upper[TORSO], robots, flags)
            self.target[idx, TORSO] = self._torso(torso, idx, robots, flags)
            self.vel_mode[idx, TORSO] = False
            self.torso_source[idx] = True
        if "head" in cmd:
            self.target[idx, HEAD] = self._clip("head.position_limit", cmd["head"], self.lower[HEAD],
                                                self.upper[HEAD], robots, flags)
        if "base_twist" in cmd:
            lim = np.array([self.cfg.base_max_v, self.cfg.base_max_w])
            self.base_cmd[idx] = self._clip("base_twist.velocity_limit", cmd["base_twist"], -lim, lim, robots, flags)
            self.base_until[idx] = self.time + self.velocity_timeout
            self.next_lapse = min(self.next_lapse, self.time + self.velocity_timeout)
        return flags

    def _torso(self, target, idx, robots, flags) -> np.ndarray:
        """Keep the gripper's height in the box: `TargetController._torso` per robot."""
        q = self.q_meas[idx]
        t0 = q[:, TORSO]
        z_arm = np.stack(fk_frames_batch(t0, self.target[idx][:, ARM])[0], axis=-1)[:, 2]
        z0 = np.where(self.vel_mode[idx][:, 1], self.ee_pos[idx][:, 2], z_arm)
        lo_t = np.minimum(t0 + self.guard.lo[2] - z0, t0)
        hi_t = np.maximum(t0 + self.guard.hi[2] - z0, t0)
        return self._clip("torso.workspace", target, lo_t, hi_t, robots, flags)

    @staticmethod
    def _flag(flags: dict, name: str, changed: np.ndarray, robots) -> None:
        """Record `name` for the robots whose row `changed` (a (rows,) or (rows, k) bool array)."""
        if changed.ndim > 1:
            changed = changed.any(axis=tuple(range(1, changed.ndim)))
        rows = np.flatnonzero(changed)
        if rows.size:
            who = rows if robots is None else robots[rows]
            flags[name] = sorted(set(flags.get(name, [])) | set(who.tolist()))

    def _clip(self, name, value, lo, hi, robots, flags) -> np.ndarray:
        out = np.minimum(np.maximum(value, lo), hi)
        self._flag(flags, name, out != value, robots)
        return out

    def _inside(self, pos: np.ndarray) -> np.ndarray:
        lo = np.maximum(self.ws_lo, [-np.inf, -np.inf, self.cfg.floor_height])
        return ((pos >= lo) & (pos <= self.ws_hi)).all(axis=-1)

    def _ee_delta(self, delta, idx, robots, flags) -> None:
        m = self.cfg.max_ee_step
        d = self._clip("ee_delta.max_step", delta, -m, m, robots, flags)
        pos = self.ee_pos[idx]
        goal = self._clip("ee_delta.workspace", pos + d, self.ws_lo, self.ws_hi, robots, flags)
        low = goal[:, 2] < self.cfg.floor_height
        if low.any():
            goal[low, 2] = self.cfg.floor_height
            self._flag(flags, "ee_delta.floor", low, robots)
        rot = self.ee_rot[idx]
        new_hold = ~self.holding[idx]
        if new_hold.any():  # Cartesian control begins: hold the orientation the gripper has now
            hold = self.hold_rot[idx]
            hold[new_hold] = rot[new_hold]
            self.hold_rot[idx] = hold
            self.holding[idx] = True
        err = np.concatenate([goal - pos, orientation_error_batch(rot, self.hold_rot[idx])], axis=1)
        lo, hi = self.lower[ARM], self.upper[ARM]
        new = limited_step_batch(self.q_meas[idx][:, ARM], self.jac[idx], err, lo, hi)
        self._flag(flags, "ee_delta.joint_limit", (new <= lo) | (new >= hi), robots)
        self.target[idx, ARM] = new
        self.vel_mode[idx, ARM] = False

    def _arm_position(self, target, idx, robots, flags) -> None:
        lo, hi = self.lower[ARM], self.upper[ARM]
        tgt = self._clip("arm_position.position_limit", target, lo, hi, robots, flags)
        q = self.q_meas[idx]
        start = q[:, ARM]
        step = self.cfg.max_joint_step
        tgt = self._clip("arm_position.max_step", tgt, start - step, start + step, robots, flags)
        torso = q[:, TORSO]
        out = ~self._inside(np.stack(fk_frames_batch(torso, tgt)[0], axis=-1))
        if out.any():
            # Per robot outside: the largest fraction of the move whose end keeps the gripper inside.
            s, t, tq = start[out], tgt[out], torso[out]
            ok = self._inside(np.stack(fk_frames_batch(tq, s)[0], axis=-1))
            a_lo, a_hi = np.zeros(len(s)), np.ones(len(s))
            for _ in range(12):
                mid = 0.5 * (a_lo + a_hi)
                inside = self._inside(np.stack(fk_frames_batch(tq, s + mid[:, None] * (t - s))[0], axis=-1))
                a_lo = np.where(inside, mid, a_lo)
                a_hi = np.where(inside, a_hi, mid)
            frac = np.where(ok, a_lo, 0.0)
            tgt[out] = s + frac[:, None] * (t - s)
            self._flag(flags, "arm_position.workspace", out, robots)
        self.target[idx, ARM] = tgt
        self.vel_mode[idx, ARM] = False
        self.holding[idx] = False

    def _drive(self, h: float) -> None:
        b = self.base
        moving = (b[:, 3] != 0) | (b[:, 4] != 0) | (self.base_cmd != 0).any(axis=1)
        if not moving.any():
            return
        acc = np.array([BASE_ACC_V, BASE_ACC_W]) * h
        vw = b[:, 3:5] + np.clip(self.base_cmd - b[:, 3:5], -acc, acc)
        v, w = vw[:, 0], vw[:, 1]
        th = b[:, 2]
        th_mid = th + 0.5 * w * h
        nb = b.copy()
        nb[:, 0] += v * np.cos(th_mid) * h
        nb[:, 1] += v * np.sin(th_mid) * h
        nb[:, 2] = np.arctan2(np.sin(th + w * h), np.cos(th + w * h))
        nb[:, 3:5] = vw
        self.base = np.where(moving[:, None], nb, b)
