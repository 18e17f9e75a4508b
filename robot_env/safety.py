"""The one safety layer, applied by every backend, so a policy trains under the clipping it meets on the robot.

Two kinds of protection live here:
- *Clipping* of accepted targets (joint limits, workspace box and floor, maximum step per command,
  base twist limits). Whatever was clipped is returned as flags that end up in the state.
- *Motion limiting*: `MotionLimiter.step` moves joints toward their targets under velocity and
  acceleration limits and brakes before position limits. The simulator integrates with it and the
  hardware loop streams its output to the servos, so both move the same way.
Rejection of malformed input (types, shapes, non-finite values) happens before this, in `commands`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .description import (ARM, BASE_ACC_V, BASE_ACC_W, BASE_MAX_V, BASE_MAX_W, FETCH, NJ,
                          RobotDescription, motion_profile)


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
    base_max_v: float = BASE_MAX_V
    base_max_w: float = BASE_MAX_W
    extra: dict = field(default_factory=dict)


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
        self._cache: dict = {}

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
