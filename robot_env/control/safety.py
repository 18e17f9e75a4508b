"""The one safety layer, applied by every backend, so a policy trains under the clipping it meets on the robot.

Two kinds of protection live here:
- *Clipping* of accepted targets (joint limits, workspace box and floor, maximum step per command,
  base twist limits). Whatever was clipped is returned as flags that end up in the state.
- *Motion limiting*: `MotionLimiter.step` moves joints toward their targets under velocity and
  acceleration limits and brakes before position limits. The simulator integrates with it and the
  hardware loop streams its output to the servos, so both move the same way.
- *The workspace guard*: `WorkspaceGuard` keeps the gripper inside the workspace box and above the
  floor along the motion, whatever channel moves the joints (a Cartesian delta, joint positions or
  velocities, the torso): target clipping alone cannot, because a joint path between two poses
  inside the box can leave it and a velocity command has no target at all.
Rejection of malformed input (types, shapes, non-finite values) happens before this, in `commands`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..model.description import (
    ARM,
    ARM_ORIGINS,
    BASE_ACC_V,
    BASE_ACC_W,
    BASE_MAX_V,
    BASE_MAX_W,
    FETCH,
    GRIPPER_OFFSET,
    NJ,
    RobotDescription,
    motion_profile,
)
from ..model.kinematics import fk_frames
from ..model.kinematics_batch import fk_frames_batch


@dataclass
class SafetyConfig:
    """Limits from the config's `[server.safety]` table (defaults are the shipped `sim` values)."""

    profile: str = "default"
    arm_acceleration: float | None = None
    workspace_min: tuple[float, float, float] = (0.0, -0.90, 0.05)
    workspace_max: tuple[float, float, float] = (1.30, 0.90, 1.70)
    floor_height: float = 0.05
    max_ee_step: float = 0.06  # m per command, per axis (the env's full-scale action is 0.05)
    max_joint_step: float = 1.0  # rad (or m) between the current position and a joint target
    watchdog_timeout: float = 0.25  # s without a command (realtime clock) -> hold
    # s a velocity command (base_twist, arm_velocity) lasts unless refreshed, whatever else arrives:
    # the Fetch base stops when cmd_vel has been silent for 0.25 s.
    velocity_timeout: float = 0.25
    base_max_v: float = BASE_MAX_V
    base_max_w: float = BASE_MAX_W
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        """Refuse limits that would silently disable themselves (a NaN bound compares False)."""
        lo, hi = tuple(self.workspace_min), tuple(self.workspace_max)
        for name, box in (("workspace_min", lo), ("workspace_max", hi)):
            if len(box) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
                raise ValueError(f"{name} must be 3 finite numbers, got {box!r}")
        if any(a >= b for a, b in zip(lo, hi)):
            raise ValueError(f"workspace_min {lo} must be below workspace_max {hi} on every axis")
        for name in ("floor_height", "max_ee_step", "max_joint_step", "watchdog_timeout", "velocity_timeout",
                     "base_max_v", "base_max_w"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.floor_height >= hi[2]:
            raise ValueError(f"floor_height {self.floor_height} must be below the workspace top {hi[2]}")


def _braking_speed(distance: np.ndarray, acc: np.ndarray, dt: float) -> np.ndarray:
    """Largest speed from which a joint integrated by semi-implicit Euler stops within `distance`.

    Braking from v at a·dt per step covers D(v) = dt·Σ_k (v − k·a·dt) over the steps with a positive
    term. D is piecewise linear: find the segment n (n full braking steps) holding `distance` and
    invert exactly, so a joint on this curve never passes a limit and never brakes harder than a.
    """
    adt = acc * dt
    d = np.maximum(distance, 0.0)
    n = np.floor((np.sqrt(1.0 + 8.0 * d / (adt * dt)) - 1.0) * 0.5)
    return (d / dt + adt * n * (n + 1.0) * 0.5) / (n + 1.0)


class MotionLimiter:
    """Moves joints toward position targets (or at commanded velocities) within vel/acc/position limits.

    The arm's seven joints are scaled together so a Cartesian move stays straight in joint space;
    the torso, gripper and head move independently. Works on (NJ,) arrays or batches (..., NJ).
    """

    def __init__(self, description: RobotDescription = FETCH, profile: str = "default",
                 arm_acceleration: float | None = None):
        prof = motion_profile(profile, arm_acceleration)
        self.lower = description.lower
        self.upper = description.upper
        self.vel = np.array(prof.velocity)
        self.acc = np.array(prof.acceleration)
        self.inv_acc = 1.0 / self.acc
        self.inv_2acc = 0.5 * self.inv_acc
        self.inv_acc_list, self.inv_2acc_list = self.inv_acc.tolist(), self.inv_2acc.tolist()
        self._cache: dict = {}

    @property
    def lower_list(self) -> list:
        """`lower` as floats, rebuilt when `lower` is replaced (the hardware narrows the limits)."""
        return self._as_list("lower")

    @property
    def upper_list(self) -> list:
        return self._as_list("upper")

    def _as_list(self, name: str) -> list:
        arr, key = getattr(self, name), f"_{name}_list"
        c = self.__dict__.get(key)
        if c is None or c[0] is not arr:
            c = (arr, arr.tolist())
            setattr(self, key, c)
        return c[1]

    def _constants(self, dt: float):
        """Per-period constants, cached: the step runs every control period and numpy calls dominate.

        Scalars are stored as full arrays: an array-array ufunc is markedly cheaper than an
        array-scalar one on arrays this small, and gives the same bits. The cache is bounded
        because the realtime clock advances by wall-clock periods that are rarely equal.
        """
        c = self._cache.get(dt)
        if c is None:
            if len(self._cache) >= 8:
                self._cache.clear()
            n3 = 3 * NJ
            adt3 = np.concatenate([self.acc] * 3) * dt
            inv_dt = 1.0 / dt
            c = (np.zeros(n3),
                 2.0 / (adt3 * dt),  # the braking segment, scaled by 1/4 (bit-exact): see `_braking_speed`
                 np.full(n3, 0.25), np.full(n3, 0.5), np.ones(n3),
                 np.full(n3, inv_dt), 0.5 * adt3,
                 np.full(NJ, inv_dt), np.full(NJ, 1e-12), np.ones(NJ), self.acc * dt, np.full(NJ, dt))
            self._cache[dt] = c
        return c

    def step(self, q, v, target, vel_target, vel_mode, dt: float, speed_scale=1.0):
        """One period `dt`: returns (q_new, v_new). Position never leaves [lower, upper].

        Written for few, array-only numpy calls (it runs every control period, often for a single
        robot): `np.clip` is spelled `minimum(maximum())`, which it is, without its Python wrapper.
        """
        zero3, k2, quarter3, half3, one3, inv_dt3, hadt3, inv_dt, eps, one, lim, dtv = self._constants(dt)
        lower, upper = self.lower, self.upper
        vmax = self.vel if (type(speed_scale) is float and speed_scale == 1.0) else self.vel * speed_scale
        err = target - q
        # One braking evaluation for: distance to target, room to the lower and the upper limit
        # (`_braking_speed`, with n computed as floor(sqrt(1/4 + 2d/(a dt²)) - 1/2), the same bits).
        d = np.maximum(np.concatenate((np.abs(err), q - lower, upper - q), axis=-1), zero3)
        n = np.floor(np.sqrt(k2 * d + quarter3) - half3)
        m = n + one3
        rate = d * inv_dt3
        brake = (rate + hadt3 * n * m) / m
        to_target, brake_lo, brake_hi = brake[..., :NJ], -brake[..., NJ:2 * NJ], brake[..., 2 * NJ:]
        # Position mode: reach the target this period if allowed, never faster than we can stop.
        allowed = np.minimum(vmax, to_target) + eps  # the 1e-12 makes an idle joint's scale 1, not 0/0
        scale = allowed / np.maximum(rate[..., :NJ] + eps, allowed)
        scale[..., ARM] = scale[..., ARM].min(axis=-1, keepdims=True)
        v_des = err * inv_dt * scale
        if vel_mode.any() if isinstance(vel_mode, np.ndarray) else np.any(vel_mode):
            v_des = np.where(vel_mode, np.minimum(np.maximum(vel_target, -vmax), vmax), v_des)
        # Brake before the position limits whatever was asked.
        dv = np.minimum(np.maximum(v_des, brake_lo), brake_hi) - v
        k = np.minimum(one, lim / np.maximum(np.abs(dv), eps))
        k[..., ARM] = k[..., ARM].min(axis=-1, keepdims=True)
        # The shared arm scale keeps the direction, but must never slow down a joint's braking.
        v_new = np.minimum(np.maximum(v + dv * k, np.maximum(brake_lo, v - lim)), np.minimum(brake_hi, v + lim))
        # On the braking curve a joint lands on a limit at most; the clip only absorbs round-off.
        q_new = np.minimum(np.maximum(q + v_new * dtv, lower), upper)
        return q_new, v_new

    def stopping_target(self, q, v, dt: float):
        """Where each joint can come to rest from velocity v: the hold target after a watchdog or e-stop."""
        stop = v * np.abs(v) / (2.0 * self.acc) + v * dt / 2.0
        return np.clip(q + stop, self.lower, self.upper)


class WorkspaceGuard:
    """The workspace box and the floor, held along the motion for every channel.

    Run on each integration step of the motion limiter (the simulators' steps, the hardware loop's
    cycles), it asks where torso and arm would come to rest if they braked from the *next* state:
    at most v·(T + dt)/2 further along for an arm joint (the arm brakes as one, in T, the time its
    slowest-braking joint needs: `MotionLimiter.step` scales the arm's joints together), v|v|/2a +
    v·dt/2 for the torso, and no further than its target for a joint tracking one (the limiter
    lands on targets). When that rest point is outside the box, and further outside than the
    current state's, the step is replaced by braking from the current state at full deceleration
    (`brake`), whose rest point was accepted on the step before: the gripper stops at the boundary
    instead of crossing it. An arm that starts outside may always move back in.
    """

    # m per rad: how far the gripper can be from each arm joint's axis at most (the links after the
    # joint, laid end to end): the cheap "still far inside" test needs no FK
    LEVER = np.array([sum(math.hypot(o[0], o[2]) for o in ARM_ORIGINS[i + 1:]) + GRIPPER_OFFSET for i in range(7)])
    LEVER_LIST = LEVER.tolist()

    def __init__(self, cfg: SafetyConfig, limiter: MotionLimiter):
        lo = [float(v) for v in cfg.workspace_min]
        lo[2] = max(lo[2], float(cfg.floor_height))
        self.lo = lo
        self.hi = [float(v) for v in cfg.workspace_max]
        self.limiter = limiter
        self._lo_np, self._hi_np = np.array(self.lo), np.array(self.hi)
        self._ref = None  # (rest point, its clearance to the box faces) of the last FK evaluated

    # -- one robot (NJ,) -------------------------------------------------------------------------
    def excess(self, pos) -> float:
        """How far (m, summed over the axes) a gripper position lies outside the box; 0 inside."""
        lo, hi = self.lo, self.hi
        out = 0.0
        for i in range(3):
            p = pos[i]
            if p < lo[i]:
                out += lo[i] - p
            elif p > hi[i]:
                out += p - hi[i]
        return out

    def rest_point(self, q, v, target, vel_mode, dt: float) -> list:
        """Torso and arm (8 floats) where they would come to rest braking from (q, v) now."""
        lim = self.limiter
        lower, upper = lim.lower_list, lim.upper_list
        inv_acc, inv_2acc = lim.inv_acc_list, lim.inv_2acc_list
        ql, vl, tl = q.tolist(), v.tolist(), target.tolist()
        vm = vel_mode.tolist()
        t_arm = 0.0
        for i in range(1, 8):
            t = abs(vl[i]) * inv_acc[i]
            if t > t_arm:
                t_arm = t
        out = []
        for i in range(8):
            vi = vl[i]
            d = vi * (abs(vi) * inv_2acc[i] + 0.5 * dt) if i == 0 else vi * 0.5 * (t_arm + dt)
            r = ql[i] + d
            if not vm[i]:
                to_target = tl[i] - ql[i]
                if to_target * vi > 0.0 and abs(d) > abs(to_target):
                    r = tl[i]
            out.append(min(max(r, lower[i]), upper[i]))
        return out

    def rest_excess(self, q, v, target, vel_mode, dt: float, ref=None) -> float:
        """`excess` of the gripper at `rest_point`; skips the FK when the rest point cannot have left
        the box: from `ref` = (joints, their gripper position) when the caller knows an FK (the
        simulator's last measurement), else from the last rest point evaluated (the gripper moves at
        most `LEVER` per radian of each arm joint and one for one with the torso)."""
        rest = self.rest_point(q, v, target, vel_mode, dt)
        if ref is not None:
            ref_q, pos = ref
            r0 = ref_q[:8]
            lo, hi = self.lo, self.hi
            clearance = min(pos[0] - lo[0], pos[1] - lo[1], pos[2] - lo[2], hi[0] - pos[0], hi[1] - pos[1],
                            hi[2] - pos[2])
        elif self._ref is not None:
            r0, clearance = self._ref
        else:
            r0 = None
        if r0 is not None:
            moved = abs(rest[0] - r0[0])
            for a, b, lever in zip(rest[1:], r0[1:], self.LEVER_LIST):
                moved += lever * abs(a - b)
            if moved < clearance:
                return 0.0
        pos = fk_frames(rest[0], rest[1:])[0]
        lo, hi = self.lo, self.hi
        clearance = min(pos[0] - lo[0], pos[1] - lo[1], pos[2] - lo[2], hi[0] - pos[0], hi[1] - pos[1], hi[2] - pos[2])
        self._ref = (rest, clearance) if clearance > 0.0 else None
        return self.excess(pos)

    def far_inside(self, q, v, dt: float, ref) -> bool:
        """True when (q, v)'s rest point cannot be outside the box, judged from `ref` = (joints, their
        gripper position) without an FK: the rest point lies at most the braking distances beyond q,
        and the gripper moves at most `LEVER` per radian of each arm joint and one for one with the
        torso. Plain floats: this runs on every step."""
        r0, pos = ref
        ql, vl = q.tolist(), v.tolist()
        lim = self.limiter
        inv_acc = lim.inv_acc_list
        t_arm = 0.0
        for i in range(1, 8):
            t = abs(vl[i]) * inv_acc[i]
            if t > t_arm:
                t_arm = t
        half = 0.5 * (t_arm + dt)
        v0 = abs(vl[0])
        moved = abs(ql[0] - r0[0]) + v0 * (v0 * lim.inv_2acc_list[0] + 0.5 * dt)
        for i, lever in enumerate(self.LEVER_LIST, 1):
            moved += lever * (abs(ql[i] - r0[i]) + abs(vl[i]) * half)
        lo, hi = self.lo, self.hi
        return moved < min(pos[0] - lo[0], pos[1] - lo[1], pos[2] - lo[2], hi[0] - pos[0], hi[1] - pos[1],
                           hi[2] - pos[2])

    def allows(self, q, v, q_new, v_new, target, vel_mode, dt: float, ref=None) -> bool:
        """May the joints go from (q, v) to (q_new, v_new) under these targets? At rest throughout: yes.
        `ref`: as for `rest_excess`."""
        if ref is not None:
            if self.far_inside(q_new, v_new, dt, ref):
                return True
        elif not (v_new[:8].any() or v[:8].any()):
            return True
        e_new = self.rest_excess(q_new, v_new, target, vel_mode, dt, ref)
        return e_new <= 1e-9 or e_new <= self.rest_excess(q, v, target, vel_mode, dt) + 1e-9

    # -- N robots (N, NJ) ------------------------------------------------------------------------
    def excess_batch(self, pos: np.ndarray) -> np.ndarray:
        return (np.maximum(self._lo_np - pos, 0.0) + np.maximum(pos - self._hi_np, 0.0)).sum(axis=-1)

    def rest_point_batch(self, q, v, target, vel_mode, dt: float) -> np.ndarray:
        """`rest_point` for (N, NJ) rows: (N, 8)."""
        lim = self.limiter
        q8, v8 = q[:, :8], v[:, :8]
        t_arm = (np.abs(v8[:, 1:]) * lim.inv_acc[1:8]).max(axis=1)
        d = np.empty_like(v8)
        d[:, 0] = v8[:, 0] * (np.abs(v8[:, 0]) * lim.inv_2acc[0] + 0.5 * dt)
        d[:, 1:] = v8[:, 1:] * (0.5 * (t_arm + dt))[:, None]
        rest = q8 + d
        to_target = target[:, :8] - q8
        lands = ~vel_mode[:, :8] & (to_target * v8 > 0.0) & (np.abs(d) > np.abs(to_target))
        rest = np.where(lands, target[:, :8], rest)
        return np.minimum(np.maximum(rest, lim.lower[:8]), lim.upper[:8])

    def rest_excess_batch(self, q, v, target, vel_mode, dt: float, ref=None) -> np.ndarray:
        """`rest_excess` per robot. `ref` = (joints (N, NJ), their gripper positions (N, 3)) whose FK
        is known: a robot whose rest point cannot have left the box since is inside without an FK
        (the gripper moves at most `LEVER` per radian of each arm joint and one for one with the torso,
        and the rest point lies at most the braking distances beyond q); only the others are computed."""
        rows = None
        if ref is not None:
            ref_q, ref_pos = ref
            lim = self.limiter
            av = np.abs(v[:, :8])
            t_arm = (av[:, 1:] * lim.inv_acc[1:8]).max(axis=1)
            torso = np.abs(q[:, 0] - ref_q[:, 0]) + av[:, 0] * (av[:, 0] * lim.inv_2acc[0] + 0.5 * dt)
            arm = (np.abs(q[:, 1:8] - ref_q[:, 1:8]) + (0.5 * (t_arm + dt))[:, None] * av[:, 1:]) @ self.LEVER
            clearance = np.minimum(ref_pos - self._lo_np, self._hi_np - ref_pos).min(axis=1)
            rows = np.flatnonzero(torso + arm >= clearance)
            out = np.zeros(len(q))
            if rows.size == 0:
                return out
            q, v, target, vel_mode = q[rows], v[rows], target[rows], vel_mode[rows]
        rest = self.rest_point_batch(q, v, target, vel_mode, dt)
        excess = self.excess_batch(np.stack(fk_frames_batch(rest[:, 0], rest[:, 1:])[0], axis=-1))
        if rows is None:
            return excess
        out[rows] = excess
        return out

    def allows_batch(self, q, v, q_new, v_new, target, vel_mode, dt: float, ref=None) -> np.ndarray:
        """(N,) bool: `allows` per robot (`ref`: as for `rest_excess_batch`, to skip most FKs)."""
        e_new = self.rest_excess_batch(q_new, v_new, target, vel_mode, dt, ref)
        ok = e_new <= 1e-9
        if not ok.all():
            bad = np.flatnonzero(~ok)
            e_now = self.rest_excess_batch(q[bad], v[bad], target[bad], vel_mode[bad], dt)
            ok[bad] = e_new[bad] <= e_now + 1e-9
        return ok


class BaseLimiter:
    """Diff-drive twist (v, ω) under speed and acceleration limits."""

    def __init__(self, max_v=BASE_MAX_V, max_w=BASE_MAX_W, acc_v=BASE_ACC_V, acc_w=BASE_ACC_W):
        self.max_v, self.max_w, self.acc_v, self.acc_w = max_v, max_w, acc_v, acc_w

    def step(self, v, w, v_cmd, w_cmd, dt):
        dv = min(max(v_cmd - v, -self.acc_v * dt), self.acc_v * dt)
        dw = min(max(w_cmd - w, -self.acc_w * dt), self.acc_w * dt)
        return v + dv, w + dw


def clip_flags(name: str, value: np.ndarray, lo, hi, reason: str, flags: list) -> np.ndarray:
    """Clip `value` to [lo, hi]; append `name.reason` to flags when anything changed."""
    out = np.clip(value, lo, hi)
    if not np.array_equal(out, value):
        flags.append(f"{name}.{reason}")
    return out
