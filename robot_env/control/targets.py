"""Turns validated commands into joint targets under the safety layer; shared by every backend.

Cartesian deltas are resolved with one damped-least-squares IK step from the *measured* joint
positions each command: no target wind-up when the arm lags (as it does on hardware), and the
gripper orientation is held at what it was when Cartesian control began.

`TargetController.advance` is the one integration step every backend runs (the simulators per
step, the hardware loop per bus cycle): velocity commands lapse unless refreshed, the motion
limiter moves the joints, and the workspace guard stops the gripper at the box and the floor.
"""
from __future__ import annotations

from operator import sub as _sub

import numpy as np

from ..errors import RequestError
from ..model.description import ARM, FETCH, GRIPPER, HEAD, NJ, TORSO, RobotDescription
from ..model.kinematics import fk_frames, jacobian_array, limited_step, orientation_error
from .safety import BaseLimiter, MotionLimiter, SafetyConfig, WorkspaceGuard, clip_flags

_FOREVER = float("inf")


class Kinematics:
    """FK (+ Jacobian, a (6, 7) array) of one joint vector, computed once and reused by IK and the state."""

    __slots__ = ("q", "pos", "rot", "origins", "axes", "_jac")

    def __init__(self, q: np.ndarray):
        self.q = q
        ql = q.tolist()
        self.pos, self.rot, self.origins, self.axes = fk_frames(ql[TORSO], ql[ARM])
        self._jac = None

    @property
    def jac(self):
        if self._jac is None:
            self._jac = jacobian_array(self.pos, self.origins, self.axes)
        return self._jac


class TargetController:
    """Joint and base targets plus the safety clipping that produced them."""

    def __init__(self, safety: SafetyConfig, description: RobotDescription = FETCH):
        self.cfg = safety
        self.limiter = MotionLimiter(description, safety.profile, safety.arm_acceleration)
        self.base = BaseLimiter(max_v=safety.base_max_v, max_w=safety.base_max_w)
        self.guard = WorkspaceGuard(safety, self.limiter)
        self.velocity_timeout = float(safety.velocity_timeout)
        self.lower, self.upper = self.limiter.lower, self.limiter.upper
        self.ws_lo = np.array(safety.workspace_min, dtype=float)
        self.ws_hi = np.array(safety.workspace_max, dtype=float)
        self.ws_lo_list = [float(v) for v in safety.workspace_min]
        self.ws_hi_list = [float(v) for v in safety.workspace_max]
        self.target = np.zeros(NJ)
        self.vel_target = np.zeros(NJ)
        self.vel_mode = np.zeros(NJ, bool)
        self.base_cmd = (0.0, 0.0)
        self.hold_rot = None
        self._limits_arm = None
        # Velocity commands last until these times (the backend's clock) unless refreshed.
        self.base_until = self.arm_vel_until = -_FOREVER
        # Which channel set the arm's and the torso's targets last: named in the guard's flags.
        self.arm_source = self.torso_source = "reset"
        # Flags raised while moving (guard, lapses) since the last command; the state reports them.
        self.motion_flags: list[str] = []

    def reset(self, q: np.ndarray) -> None:
        self.target = q.copy()
        self.vel_target[:] = 0.0
        self.vel_mode[:] = False
        self.base_cmd = (0.0, 0.0)
        self.hold_rot = None
        self.base_until = self.arm_vel_until = -_FOREVER
        self.arm_source = self.torso_source = "reset"
        self.motion_flags = []

    def hold(self, q: np.ndarray, v: np.ndarray, dt: float) -> None:
        """Stop where each joint can stop (no jerk), base twist to zero."""
        self.target = self.limiter.stopping_target(q, v, dt)
        self.vel_mode[:] = False
        self.vel_target[:] = 0.0
        self.base_cmd = (0.0, 0.0)

    def advance(self, q: np.ndarray, v: np.ndarray, dt: float, now: float, speed_scale=1.0, ref=None):
        """One integration step of the joints from (q, v) over `dt` at backend time `now`: (q_new, v_new).

        Velocity commands past their lapse time stop first (the base by its own limiter, read from
        `base_cmd` by the backend); then the limiter moves the joints and the guard keeps the
        gripper inside the workspace (braking from (q, v) when the step would take it out). `ref` =
        (joints, their gripper position): an FK the caller has, which spares the guard most of its own.
        """
        if now >= self.base_until and self.base_cmd != (0.0, 0.0):
            self.base_cmd = (0.0, 0.0)
            self._motion_flag("base_twist.lapsed")
        if now >= self.arm_vel_until and self.vel_mode[1] and self.vel_target[ARM].any():
            self.vel_target[ARM] = 0.0
            self._motion_flag("arm_velocity.lapsed")
        lim = self.limiter
        q_new, v_new = lim.step(q, v, self.target, self.vel_target, self.vel_mode, dt, speed_scale)
        if not self.guard.allows(q, v, q_new, v_new, self.target, self.vel_mode, dt, ref):
            moving = np.abs(v[:8]) + np.abs(v_new[:8]) > 0.0
            if moving[ARM].any():
                self._motion_flag(f"{self.arm_source}.workspace")
            if moving[TORSO]:
                self._motion_flag(f"{self.torso_source}.workspace")
            self.brake()
            q_new, v_new = lim.step(q, v, self.target, self.vel_target, self.vel_mode, dt, speed_scale)
        return q_new, v_new

    def brake(self) -> None:
        """Torso and arm decelerate at full rate and stay where they stop (velocity mode, zero)."""
        self.vel_mode[:8] = True
        self.vel_target[:8] = 0.0
        self.arm_vel_until = _FOREVER  # a deliberate stop, not a velocity command to lapse

    def _motion_flag(self, flag: str) -> None:
        if flag not in self.motion_flags:
            self.motion_flags.append(flag)

    @property
    def limits_arm(self) -> tuple[list, list]:
        """The arm's joint limits as float lists, rebuilt when `lower`/`upper` are replaced (hardware narrows them)."""
        c = self._limits_arm
        if c is None or c[0] is not self.lower or c[1] is not self.upper:
            c = self._limits_arm = (self.lower, self.upper, self.lower[ARM].tolist(), self.upper[ARM].tolist())
        return c[2], c[3]

    def _inside(self, pos) -> bool:
        lo, hi = self.ws_lo, self.ws_hi_list
        return (lo[0] <= pos[0] <= hi[0] and lo[1] <= pos[1] <= hi[1]
                and max(lo[2], self.cfg.floor_height) <= pos[2] <= hi[2])

    def apply(self, cmd: dict, kin: Kinematics, now: float = 0.0) -> list[str]:
        """Set targets from a validated command; `kin` is the FK at the measured joints, `now` the
        backend's clock (velocity commands lapse `velocity_timeout` after it)."""
        flags: list[str] = []
        self.motion_flags = []
        q = kin.q
        if "ee_delta" in cmd:
            self._ee_delta(cmd["ee_delta"], kin, flags)
            self.arm_source = "ee_delta"
        elif "arm_position" in cmd:
            self._arm_position(cmd["arm_position"], q, flags)
            self.arm_source = "arm_position"
        elif "arm_velocity" in cmd:
            vmax = self.limiter.vel[ARM]
            self.vel_target[ARM] = clip_flags("arm_velocity", cmd["arm_velocity"], -vmax, vmax,
                                              "velocity_limit", flags)
            self.vel_mode[ARM] = True
            self.hold_rot = None
            self.arm_source = "arm_velocity"
            self.arm_vel_until = now + self.velocity_timeout
        if "gripper" in cmd:
            self.target[GRIPPER] = self._scalar("gripper", cmd["gripper"], GRIPPER, flags)
        if "torso" in cmd:
            self.target[TORSO] = self._torso(self._scalar("torso", cmd["torso"], TORSO, flags), kin, flags)
            self.vel_mode[TORSO] = False
            self.torso_source = "torso"
        if "head" in cmd:
            self.target[HEAD] = clip_flags("head", cmd["head"], self.lower[HEAD], self.upper[HEAD],
                                           "position_limit", flags)
        if "base_twist" in cmd:
            v, w = cmd["base_twist"]
            cv = min(max(v, -self.base.max_v), self.base.max_v)
            cw = min(max(w, -self.base.max_w), self.base.max_w)
            if (cv, cw) != (v, w):
                flags.append("base_twist.velocity_limit")
            self.base_cmd = (cv, cw)
            self.base_until = now + self.velocity_timeout
        return flags

    def _torso(self, target: float, kin: Kinematics, flags) -> float:
        """The torso lifts the whole arm: keep the gripper's height inside the box and above the floor.

        The gripper's z moves one for one with the torso (a vertical prismatic joint under the arm),
        so the allowed range is a shift of the box's z range. It never forces a move: where the
        gripper is already outside, moving toward the inside stays allowed.
        """
        q = kin.q
        t0 = float(q[TORSO])
        z0 = kin.pos[2] if self.vel_mode[1] else fk_frames(t0, self.target[ARM].tolist())[0][2]
        lo, hi = self.guard.lo[2], self.guard.hi[2]
        lo_t, hi_t = min(t0 + lo - z0, t0), max(t0 + hi - z0, t0)
        if target < lo_t or target > hi_t:
            flags.append("torso.workspace")
            return min(max(target, lo_t), hi_t)
        return target

    def _scalar(self, name, value, i, flags) -> float:
        lo, hi = self.lower[i], self.upper[i]
        if value < lo or value > hi:
            flags.append(f"{name}.position_limit")
            return min(max(value, lo), hi)
        return value

    def _arm_position(self, target, q, flags) -> None:
        lo, hi = self.lower[ARM], self.upper[ARM]
        tgt = clip_flags("arm_position", target, lo, hi, "position_limit", flags)
        step = self.cfg.max_joint_step
        tgt = clip_flags("arm_position", tgt, q[ARM] - step, q[ARM] + step, "max_step", flags)
        pos, _, _, _ = fk_frames(float(q[TORSO]), tgt.tolist())
        if not self._inside(pos):
            # Largest fraction of the move whose end keeps the gripper inside the workspace.
            start = q[ARM]
            ok = 0.0
            if self._inside(fk_frames(float(q[TORSO]), start.tolist())[0]):
                lo_a, hi_a = 0.0, 1.0
                for _ in range(12):
                    mid = 0.5 * (lo_a + hi_a)
                    if self._inside(fk_frames(float(q[TORSO]), (start + mid * (tgt - start)).tolist())[0]):
                        lo_a = mid
                    else:
                        hi_a = mid
                ok = lo_a
            tgt = start + ok * (tgt - start)
            flags.append("arm_position.workspace")
        self.target[ARM] = tgt
        self.vel_mode[ARM] = False
        self.hold_rot = None

    def _ee_delta(self, delta, kin: Kinematics, flags) -> None:
        # Three numbers: plain floats are cheaper than numpy here, with the same clipping.
        m = self.cfg.max_ee_step
        dx, dy, dz = delta.tolist() if isinstance(delta, np.ndarray) else (float(v) for v in delta)
        cx, cy, cz = min(max(dx, -m), m), min(max(dy, -m), m), min(max(dz, -m), m)
        if cx != dx or cy != dy or cz != dz:
            flags.append("ee_delta.max_step")
        px, py, pz = kin.pos
        goal = px + cx, py + cy, pz + cz
        lo, hi = self.ws_lo_list, self.ws_hi_list
        gx = min(max(goal[0], lo[0]), hi[0])
        gy = min(max(goal[1], lo[1]), hi[1])
        gz = min(max(goal[2], lo[2]), hi[2])
        if (gx, gy, gz) != goal:
            flags.append("ee_delta.workspace")
        if gz < self.cfg.floor_height:
            gz = self.cfg.floor_height
            flags.append("ee_delta.floor")
        if self.hold_rot is None:
            self.hold_rot = kin.rot
        wx, wy, wz = orientation_error(kin.rot, self.hold_rot)
        err = (gx - px, gy - py, gz - pz, wx, wy, wz)
        new = limited_step(kin.q[ARM], kin.jac, err, self.lower[ARM], self.upper[ARM])
        lo_j, hi_j = self.limits_arm
        nl = new.tolist()
        # a joint at a limit: new >= lo and new <= hi after the clip, so one difference is 0 exactly
        if min(map(_sub, nl, lo_j)) <= 0.0 or min(map(_sub, hi_j, nl)) <= 0.0:
            flags.append("ee_delta.joint_limit")
        self.target[ARM] = new
        self.vel_mode[ARM] = False


def check_start_pose(ctl: TargetController, q: np.ndarray) -> None:
    """A reset's start pose: inside the joint limits, and the gripper inside the workspace box.

    Refused, not clipped: a reset that lands somewhere else than asked is not the episode the
    client asked for, and on hardware the move there is a real one.
    """
    if np.any(q < ctl.lower) or np.any(q > ctl.upper):
        bad = [j.name for j, v, lo, hi in zip(FETCH.joints, q, ctl.lower, ctl.upper) if not lo <= v <= hi]
        raise RequestError("bad_options", f"start pose is outside the joint limits ({', '.join(bad)})")
    pos = fk_frames(float(q[TORSO]), q[ARM].tolist())[0]
    if ctl.guard.excess(pos) > 0.0:
        raise RequestError("bad_options", f"start pose puts the gripper at {[round(p, 3) for p in pos]}, outside "
                                          f"the workspace box {ctl.guard.lo}..{ctl.guard.hi} ([server.safety] "
                                          "workspace_min/max, floor_height)")


def ee_velocity(kin: Kinematics, dq: np.ndarray) -> np.ndarray:
    """Gripper twist (vx, vy, vz, wx, wy, wz) from joint velocities: J·dq_arm plus the torso's lift."""
    out = np.dot(kin.jac, dq[ARM])
    out[2] += dq[TORSO]
    return out
