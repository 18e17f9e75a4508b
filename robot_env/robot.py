"""Drive the robot from a script, without Gymnasium: `robot_env.connect()` returns a `Robot`.

Moves block until done, or raise a clear error (unreachable or out-of-limit target, fault,
e-stop, timeout); `wait=False` sends the target once and returns, and `send(...)` streams raw
channels at your own rate. A blocking move re-sends its target every control period, which is
also the heartbeat the server's command watchdog expects on the realtime clock.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .bridge.session import Session
from .errors import RobotEnvError, ServerError
from .model.description import ARM, GRIPPER, HEAD, READY_ARM, READY_TORSO, TORSO
from .model.kinematics import solve_ik


class MoveError(RobotEnvError):
    """A move that cannot be done (unreachable, outside limits) or did not finish in time."""


class Robot:
    """A connected robot: simulator or hardware, whichever the config names."""

    def __init__(self, session: Session):
        self._session = session
        self.client = session.client
        info = session.info
        self.period = float(info["control_period"])
        self.joint_names = list(info["joint_names"])
        joints = info["description"]["joints"]
        self.lower = np.array([j["lower"] for j in joints])
        self.upper = np.array([j["upper"] for j in joints])
        self.velocity = np.array([j["velocity"] for j in joints])
        self.max_ee_step = float(info.get("max_ee_step") or 0.05)
        self.backend = info["backend"]
        self.clock = info["clock"]

    # -- state and raw commands --------------------------------------------------------------
    def state(self) -> dict:
        return self.client.state()

    @property
    def latency(self):
        return self.client.latency

    def send(self, **channels) -> dict:
        """Send one command (e.g. `send(ee_delta=[0, 0.01, 0], gripper=0.05)`) without waiting."""
        try:
            return self.client.command(channels)
        except ServerError as exc:
            raise _move_error(exc) from None

    # -- blocking moves ----------------------------------------------------------------------
    def move_joints(self, positions, duration: float | None = None, *, wait: bool = True,
                    timeout: float | None = None, tol: float = 0.01) -> dict:
        """Arm joints (7, rad) to `positions`, interpolated over `duration` s (default: as fast as
        the joint velocity limits allow). Targets outside the joint limits are refused up front."""
        target = self._check_vector("positions", positions, 7)
        lo, hi = self.lower[ARM], self.upper[ARM]
        bad = np.flatnonzero((target < lo) | (target > hi))
        if bad.size:
            i = int(bad[0])
            raise MoveError(f"{self.joint_names[1 + i]} target {target[i]:.3f} is outside its limits "
                            f"[{lo[i]:.3f}, {hi[i]:.3f}]")
        start = self.state()["q"][ARM].copy()
        if not wait:
            return self.send(arm_position=target.tolist())
        fastest = float(np.max(np.abs(target - start) / self.velocity[ARM]))
        duration = max(duration or 0.0, fastest)
        t0 = time.monotonic()
        steps = max(1, int(math.ceil(duration / self.period)))
        for k in range(1, steps + 1):
            s = _smooth(k / steps)
            self._tick(t0, k, arm_position=(start + s * (target - start)).tolist())
        return self._settle(lambda st: np.abs(st["q"][ARM] - target).max() < tol,
                            {"arm_position": target.tolist()}, timeout or duration + 5.0,
                            lambda st: f"arm is {np.abs(st['q'][ARM] - target).max():.3f} rad from the target")

    def move_ee(self, delta=None, target=None, *, wait: bool = True, timeout: float = 10.0,
                tol: float = 0.005) -> dict:
        """Move the gripper by `delta` or to `target` (m, base frame), in a straight line, gripper
        orientation held. An unreachable target is refused before anything moves."""
        if (delta is None) == (target is None):
            raise ValueError("give exactly one of delta= or target=")
        st = self.state()
        ee = np.array(st["ee"][:3])
        goal = ee + self._check_vector("delta", delta, 3) if target is None else \
            self._check_vector("target", target, 3)
        q = st["q"]
        sol, err = solve_ik(float(q[TORSO]), q[ARM], goal, iterations=200)
        if err > 0.01:
            raise MoveError(f"gripper target {np.round(goal, 3).tolist()} is out of reach "
                            f"(best IK solution misses by {err:.3f} m)")
        if not wait:
            return self.send(ee_delta=np.clip(goal - ee, -self.max_ee_step, self.max_ee_step).tolist())
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        k = 0
        while True:
            err_v = goal - np.array(st["ee"][:3])
            if np.linalg.norm(err_v) < tol and _still(st):
                return st
            if time.monotonic() > deadline:
                raise MoveError(f"gripper did not reach {np.round(goal, 3).tolist()} within {timeout:g} s "
                                f"({np.linalg.norm(err_v):.3f} m away; clipped: {st.get('clipped')})")
            k += 1
            self._tick(t0, k, ee_delta=np.clip(err_v, -self.max_ee_step, self.max_ee_step).tolist())
            # The delta is applied to where the arm is when it arrives: measure just before the next
            # one (a reply's state is a period old by then, and a stale error makes the arm overshoot).
            st = self.state()

    def set_gripper(self, width: float, *, wait: bool = True, timeout: float = 5.0) -> dict:
        return self._scalar_move("gripper", GRIPPER, width, wait, timeout, tol=0.002)

    def set_torso(self, height: float, *, wait: bool = True, timeout: float = 10.0) -> dict:
        return self._scalar_move("torso", TORSO, height, wait, timeout, tol=0.002)

    def set_head(self, pan: float, tilt: float, *, wait: bool = True, timeout: float = 5.0) -> dict:
        target = self._check_vector("head", (pan, tilt), 2)
        self._check_range("head", HEAD, target)
        if not wait:
            return self.send(head=target.tolist())
        return self._settle(lambda st: np.abs(st["q"][HEAD] - target).max() < 0.01, {"head": target.tolist()},
                            timeout, lambda st: "head did not reach its target")

    def drive(self, v: float, w: float, duration: float) -> dict:
        """Drive the base at (v m/s, ω rad/s) for `duration` s, then stop (ramping under its limits)."""
        v, w = float(v), float(w)
        if not (math.isfinite(v) and math.isfinite(w) and math.isfinite(duration)) or duration < 0:
            raise ValueError("drive needs finite v, w and a non-negative duration")
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < duration:
            k += 1
            self._tick(t0, k, base_twist=[v, w])
        return self.stop()

    def home(self, *, timeout: float = 20.0) -> dict:
        """Torso and arm to the ready pose (gripper pointing down in front of the robot)."""
        self.set_torso(READY_TORSO, timeout=timeout)
        return self.move_joints(READY_ARM, timeout=timeout)

    def stop(self) -> dict:
        """Stop every motion where it can stop (no jerk); not latched, unlike `estop`."""
        st = self.state()
        return self.send(arm_velocity=[0.0] * 7, base_twist=[0.0, 0.0], torso=float(st["q"][TORSO]),
                         head=st["q"][HEAD].tolist(), gripper=float(st["q"][GRIPPER]))

    def estop(self) -> dict:
        return self.client.estop()

    def clear_estop(self) -> dict:
        return self.client.clear_estop()

    def reset_faults(self) -> dict:
        return self.client.reset_faults()

    def acquire(self, force: bool = False) -> dict:
        """Take control (the first move does it implicitly while nobody else holds it); `force`
        takes it over from another client. See `RobotClient.acquire`."""
        return self.client.acquire(force)

    def release(self) -> bool:
        """Give control back (`close()` does it too)."""
        return self.client.release()

    def close(self) -> None:
        self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ---------------------------------------------------------------------------
    def _tick(self, t0: float, k: int, **channels) -> dict:
        """Send, then sleep to the k-th control period after t0 (streaming at the control rate)."""
        st = self.send(**channels)
        delay = t0 + k * self.period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return st

    def _settle(self, done, hold: dict, timeout: float, why) -> dict:
        t0 = time.monotonic()
        k = 0
        st = self.state()
        while not (done(st) and _still(st)):
            if time.monotonic() - t0 > timeout:
                raise MoveError(f"move did not finish within {timeout:g} s: {why(st)}")
            k += 1
            self._tick(t0, k, **hold)
            st = self.state()
        return st

    def _scalar_move(self, name, index, value, wait, timeout, tol):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        if not self.lower[index] <= value <= self.upper[index]:
            raise MoveError(f"{name} target {value} is outside [{self.lower[index]}, {self.upper[index]}]")
        if not wait:
            return self.send(**{name: value})
        return self._settle(lambda st: abs(st["q"][index] - value) < tol, {name: value}, timeout,
                            lambda st: f"{name} is at {st['q'][index]:.4f}, target {value}")

    def _check_range(self, name, index, target):
        lo, hi = self.lower[index], self.upper[index]
        if np.any(target < lo) or np.any(target > hi):
            raise MoveError(f"{name} target {target.tolist()} is outside {lo.tolist()}..{hi.tolist()}")

    @staticmethod
    def _check_vector(name, value, n) -> np.ndarray:
        arr = np.asarray(value, dtype=float)
        if arr.shape != (n,):
            raise ValueError(f"{name} must have {n} values, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} has non-finite values: {arr.tolist()}")
        return arr


def _still(st: dict, tol: float = 1e-3) -> bool:
    """Every joint (nearly) at rest: a move is done when the robot has stopped, not when it passes."""
    return float(np.abs(st["dq"]).max()) < tol


def _smooth(s: float) -> float:
    """Smoothstep: zero velocity at both ends of an interpolated move."""
    return s * s * (3.0 - 2.0 * s)


def _move_error(exc: ServerError) -> RobotEnvError:
    if exc.code == "estop":
        return MoveError("the e-stop is latched: call clear_estop() first")
    if exc.code == "fault":
        return MoveError(f"the robot is faulted: {exc.message}")
    return exc


def connect(config=None, *, clock: str | None = "realtime", overrides: dict | None = None) -> Robot:
    """A `Robot` on the server a config names; with no config, an embedded simulator.

    A server we spawn runs the realtime clock by default (the robot moves on the wall clock, as
    the real one does); pass `clock=None` to keep the config's.
    """
    over = {k: dict(v) for k, v in (overrides or {}).items()}
    if clock is not None:
        over.setdefault("server", {})["clock"] = clock
    return Robot(Session(config, over))
