"""The hardware backend: the Fetch-style robot's Dynamixel servos behind the robot server.

A control-loop thread runs at the bus rate: each cycle it advances the commanded trajectory with
the same `MotionLimiter` the simulator integrates with, sends every goal in one bulk write and
reads back current, velocity and position of every servo in one (fast) sync read. The server's
thread only sets targets (`apply`) and samples (`state`), so a slow client never stalls the servos.

Safety, from the top down: the safety layer clips targets to joint limits narrowed by the
calibration; the limiter bounds velocity and acceleration; the servos' own EEPROM limits
(position, velocity, current) are written at start-up; the Dynamixel bus watchdog stops the
servos if this process dies. The servos have no brakes: on link loss or a fault the arm *holds*;
on close it moves to its rest pose first, then torque goes off.
"""
from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np

from robot_env.backend import Backend
from robot_env.commands import CHANNELS
from robot_env.description import (ARM, FETCH, NJ, READY_ARM, READY_TORSO, TORSO, TUCK_ARM, TUCK_TORSO,
                                   WHEEL_RADIUS, RobotDescription)
from robot_env.errors import ConfigError, RequestError
from robot_env.kinematics import rot_to_quat
from robot_env.latency import Histogram
from robot_env.safety import SafetyConfig
from robot_env.targets import Kinematics, TargetController, ee_velocity

from . import control_table as ct
from .bus import BusError, BusTimeout, DynamixelBus, PortError
from .calibration import MODES, Calibration, JointServo, load_calibration

log = logging.getLogger("drivers.hardware")

F = ct.FIELDS
READ_START, READ_LEN = ct.span("present_current", "present_velocity", "present_position")
_VEL_UNIT = F["present_velocity"].unit  # rad/s per raw count (of the servo shaft)
_CUR_UNIT = F["present_current"].unit


class DynamixelBackend(Backend):
    kind = "dynamixel"
    realtime_only = True
    channels = frozenset(CHANNELS)

    def __init__(self, safety: SafetyConfig | None = None, control_period: float = 0.04, *,
                 serial_port: str, baud: int = 1_000_000, calibration: str, loop_rate: float = 200.0,
                 min_loop_fraction: float = 0.25,
                 fast_sync: bool = True, reply_slack: float = 0.02, retries: int = 2,
                 max_bus_errors: int = 5, bus_watchdog: float = 0.1, rest_pose: str = "tuck",
                 torque_off_on_close: bool = True, move_timeout: float = 15.0,
                 description: RobotDescription = FETCH):
        self.description = description
        self.period = control_period
        self.cal: Calibration = load_calibration(calibration, description)
        self.ctl = TargetController(safety or SafetyConfig(), description)
        self._narrow_limits()
        self.loop_period = 1.0 / loop_rate
        if not 0 <= min_loop_fraction < 1:
            raise ConfigError(f"[server.dynamixel] min_loop_fraction must be in [0, 1) (0: off), "
                              f"got {min_loop_fraction!r}")
        self.min_loop_rate = float(min_loop_fraction) * loop_rate
        self.fast_sync = fast_sync
        self.max_bus_errors = max_bus_errors
        self.bus_watchdog = bus_watchdog
        self.rest_pose = rest_pose
        self.torque_off_on_close = torque_off_on_close
        self.move_timeout = move_timeout
        self.bus = DynamixelBus(serial_port, baud, timeout_slack=reply_slack, retries=retries)
        self.joint_ids = [s.id for s in self.cal.joints]
        self.all_ids = [s.id for s in self.cal.servos]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._faults: list[dict] = []
        self._bus_errors = 0
        self.jitter = Histogram()  # |actual - nominal| loop period
        self.cycle_time = Histogram()
        self.cycles = 0
        self.clipped: list[str] = []
        self.t0 = time.monotonic()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.bus.open()
        try:
            self._start_servos()
        except BaseException:
            self.bus.close()
            raise
        self._start_loop()

    # -- start-up ----------------------------------------------------------------------------
    def _narrow_limits(self) -> None:
        """The safety layer clips to the tighter of the URDF limits and what the servos can reach."""
        lo = np.array([s.lower for s in self.cal.joints])
        hi = np.array([s.upper for s in self.cal.joints])
        for obj in (self.ctl, self.ctl.limiter):
            obj.lower, obj.upper = lo, hi

    def _start_servos(self) -> None:
        bus = self.bus
        for s in self.cal.servos:
            try:
                model, _fw = bus.ping(s.id)
            except BusTimeout:
                raise ConfigError(f"servo {s.id} ({s.joint}) does not answer on {bus.port}: check power, "
                                  "wiring, id and baud rate") from None
            if model != s.model_number:
                name = ct.MODELS.get(model, f"model {model}")
                raise ConfigError(f"servo {s.id} ({s.joint}) is a {name}, the calibration says {s.model}")
        for s in self.cal.servos:
            self._setup_servo(s)
        q, dq, effort, _ = self._read_state()
        # Hold where we are: targets and the commanded trajectory start at the measured pose.
        self.q_meas, self.dq_meas, self.effort = q, dq, effort
        self.q_cmd, self.v_cmd = q.copy(), np.zeros(NJ)
        self.wheel_cmd = (0.0, 0.0)
        self.base = [0.0, 0.0, 0.0, 0.0, 0.0]
        self.ctl.reset(q)
        self._write_goals()
        for s in self.cal.servos:
            if not any(f["servo"] == s.id for f in self._faults):
                bus.write_field(s.id, "torque_enable", 1)
        if self.bus_watchdog:
            for s in self.cal.servos:
                bus.write_field(s.id, "bus_watchdog", int(round(self.bus_watchdog / 0.02)))
        self._kin = Kinematics(q)

    def _setup_servo(self, s: JointServo) -> None:
        """Torque off, then EEPROM: operating mode and the servo's own limits; clear a tripped watchdog."""
        bus = self.bus
        hw = bus.read_field(s.id, "hardware_error_status")
        if hw:
            self._add_fault(s, "hardware_error", ", ".join(ct.hardware_error_names(hw)) or f"status {hw}")
        bus.write_field(s.id, "torque_enable", 0)
        bus.write_field(s.id, "bus_watchdog", 0)
        bus.write_field(s.id, "return_delay_time", 0)  # the factory 500 µs per reply would halve the loop rate
        bus.write_field(s.id, "operating_mode", MODES[s.mode])
        # Drive Mode is EEPROM and outlives power cycles: a time-based profile (bit 2) left by another
        # tool would turn the profile velocity below into "take N ms per move". Keep only the
        # direction bit (bit 0); the calibration's direction is applied in software on top.
        mode = bus.read_field(s.id, "drive_mode")
        if mode & ~DRIVE_MODE_REVERSE:
            bus.write_field(s.id, "drive_mode", mode & DRIVE_MODE_REVERSE)
        if s.mode == "velocity":
            bus.write_field(s.id, "velocity_limit", WHEEL_RAW_MAX)
            return
        lo, hi = s.tick_limits()
        if s.mode in ("position", "current_position"):
            bus.write_field(s.id, "min_position_limit", max(0, lo))
            bus.write_field(s.id, "max_position_limit", min(4095, hi))
        joint = self.description.joints[s.index]
        shaft = joint.velocity * s.ticks_per_unit * (2 * math.pi / 4096)  # rad/s of the shaft
        bus.write_field(s.id, "velocity_limit", min(int(shaft * 1.2 / _VEL_UNIT) + 1, F["velocity_limit"].hi))
        if s.current_limit:
            raw = int(s.current_limit / _CUR_UNIT)
            bus.write_field(s.id, "current_limit", raw)
            bus.write_field(s.id, "goal_current", raw)
        # We stream the limiter's setpoints (no acceleration profile), but cap the servo's own speed at
        # the joint's limit: with no profile a servo closes each 5 ms setpoint step at up to the EEPROM
        # velocity limit (20 % above the joint's), so it moved in bursts past the limit while tracking.
        bus.write_field(s.id, "profile_velocity", min(math.ceil(shaft / _VEL_UNIT), F["profile_velocity"].hi))
        bus.write_field(s.id, "profile_acceleration", 0)

    # -- the control loop --------------------------------------------------------------------
    def _start_loop(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dynamixel-loop", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        period = self.loop_period
        nxt = time.perf_counter()
        last = nxt
        window_start, window_cycles = nxt, 0
        while not self._stop.is_set():
            start = time.perf_counter()
            self.jitter.add(abs((start - last) - period) + 1e-9)
            last = start
            self._cycle(period)
            self.cycles += 1
            end = time.perf_counter()
            self.cycle_time.add(end - start + 1e-9)
            window_cycles += 1
            if end - window_start >= LOOP_RATE_WINDOW:
                self._check_loop_rate(window_cycles / (end - window_start), end - window_start)
                window_start, window_cycles = end, 0
            nxt += period
            delay = nxt - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -period:
                nxt = time.perf_counter()  # overrun: resynchronise instead of bursting

    def _cycle(self, dt: float) -> None:
        ctl = self.ctl
        with self._lock:
            self.q_cmd, self.v_cmd = ctl.limiter.step(self.q_cmd, self.v_cmd, ctl.target, ctl.vel_target,
                                                      ctl.vel_mode, dt)
            v, w = ctl.base.step(self.wheel_cmd[0], self.wheel_cmd[1], ctl.base_cmd[0], ctl.base_cmd[1], dt)
            self.wheel_cmd = (v, w)
        if self._faults and any(f["code"] == "port" for f in self._faults):
            return  # nothing to talk to; reset_faults reopens
        try:
            self._write_goals()
            q, dq, effort, (wl, wr) = self._read_state()
        except PortError as exc:
            self._on_bus_failure("port", str(exc))
            return
        except BusError as exc:
            self._bus_errors += 1
            if self._bus_errors >= self.max_bus_errors:
                self._on_bus_failure("bus", f"{self._bus_errors} consecutive failed bus cycles: {exc}")
            return
        self._bus_errors = 0
        with self._lock:
            self.q_meas, self.dq_meas, self.effort = q, dq, effort
            self._odometry(wl, wr, dt)
        if self.bus.last_alerts:
            self._on_alerts(set(self.bus.last_alerts))
        if self.bus_watchdog and self.cycles % WATCHDOG_CHECK_CYCLES == 0:
            self._check_bus_watchdog()

    def _check_bus_watchdog(self) -> None:
        """A tripped servo watchdog reads 255 (-1) and locks its goals: our loop stalled too long."""
        try:
            data = self.bus.sync_read(F["bus_watchdog"].address, 1, self.all_ids, fast=self.fast_sync)
        except BusError:
            return  # counted by the next cycle's own read
        for sid, raw in data.items():
            if raw[0] == 0xFF:
                s = self.cal.by_id(sid)
                with self._lock:
                    self._fault_stop(s, "bus_watchdog", f"{s.joint} (servo {sid}): the servo's bus watchdog "
                                     f"tripped (the driver was silent > {self.bus_watchdog:g} s); it stopped",
                                     freeze=True)

    def _write_goals(self) -> None:
        writes = []
        for s in self.cal.joints:
            if any(f["servo"] == s.id for f in self._faults):
                continue
            tick = s.to_ticks(float(self.q_cmd[s.index]))
            writes.append((s.id, F["goal_position"].address, ct.to_bytes(F["goal_position"], tick)))
        v, w = self.wheel_cmd
        half = 0.5 * self.description.base_track
        raws = [s.direction * speed / WHEEL_RADIUS / _VEL_UNIT
                for s, speed in zip(self.cal.wheels, (v - w * half, v + w * half))]
        # Beyond the servo's velocity limit a goal is a range error, silently (bulk write has no
        # reply): the wheel would keep its old speed. Saturate instead, both wheels by one factor
        # so the base keeps its turning radius.
        k = min(1.0, WHEEL_RAW_MAX / max(abs(raws[0]), abs(raws[1]), 1e-9))
        for s, raw in zip(self.cal.wheels, raws):
            raw = int(round(raw * k))
            writes.append((s.id, F["goal_velocity"].address, ct.to_bytes(F["goal_velocity"], raw)))
        self.bus.bulk_write(writes)

    def _read_state(self):
        data = self.bus.sync_read(READ_START, READ_LEN, self.all_ids, fast=self.fast_sync)
        q = np.empty(NJ)
        dq = np.empty(NJ)
        effort = np.empty(NJ)
        for s in self.cal.joints:
            cur, vel, pos = _unpack(data[s.id])
            q[s.index] = s.to_units(pos)
            dq[s.index] = vel * _VEL_UNIT * 4096 / (2 * math.pi) / (s.direction * s.ticks_per_unit)
            effort[s.index] = cur * _CUR_UNIT
        wheels = []
        for s in self.cal.wheels:
            _, vel, _ = _unpack(data[s.id])
            wheels.append(s.direction * vel * _VEL_UNIT * WHEEL_RADIUS)
        return q, dq, effort, wheels

    def _odometry(self, wl: float, wr: float, dt: float) -> None:
        v = 0.5 * (wl + wr)
        w = (wr - wl) / self.description.base_track
        x, y, th, _, _ = self.base
        th_mid = th + 0.5 * w * dt
        self.base = [x + v * math.cos(th_mid) * dt, y + v * math.sin(th_mid) * dt,
                     math.atan2(math.sin(th + w * dt), math.cos(th + w * dt)), v, w]

    # -- faults ------------------------------------------------------------------------------
    def _add_fault(self, s: JointServo | None, code: str, message: str) -> None:
        fault = {"joint": s.joint if s else "", "servo": s.id if s else -1, "code": code, "message": message}
        if fault not in self._faults:
            self._faults.append(fault)
            log.error("fault: %s", fault)

    def _fault_stop(self, s: JointServo | None, code: str, message: str, *, freeze: bool,
                    brake: bool = False) -> None:
        """Record a fault and hold where the arm is measured; the base stops. Call with the lock held.

        `freeze`: the servos stopped by themselves or cannot be reached, so the commanded trajectory
        jumps to the hold too; otherwise the limiter brakes it there as usual. `brake`: the servos
        still follow the commanded trajectory but the measurement is stale, so hold where that
        trajectory can stop instead.
        """
        self._add_fault(s, code, message)
        if brake:
            self.ctl.hold(self.q_cmd, self.v_cmd, self.loop_period)
        else:
            self.ctl.hold(self.q_meas, np.zeros(NJ), self.loop_period)
        if freeze:
            self.q_cmd, self.v_cmd = self.ctl.target.copy(), np.zeros(NJ)
        self.wheel_cmd = (0.0, 0.0)

    def _check_loop_rate(self, rate: float, window: float) -> None:
        """Late replies that the retries still catch never count as failed cycles, but they slow the
        loop: the state goes stale and goals reach the servos late. Below the floor that is a fault."""
        if not self.min_loop_rate or rate >= self.min_loop_rate or self._faults:
            return
        stats = self.bus.stats
        with self._lock:
            self._fault_stop(None, "slow_loop",
                             f"the control loop ran at {rate:.0f} Hz over the last {window:.1f} s, below the "
                             f"{self.min_loop_rate:g} Hz floor ([server.dynamixel] min_loop_fraction of loop_rate): "
                             f"the bus answers "
                             f"late ({stats.get('timeouts', 0)} timeouts, {stats.get('retries', 0)} retries so far)",
                             freeze=False, brake=True)

    def _on_bus_failure(self, code: str, message: str) -> None:
        with self._lock:
            if any(f["code"] == code and f["servo"] == -1 for f in self._faults):
                # Already latched and holding: one fault, not one more (and a re-hold at a possibly
                # stale measured pose) per failed cycle for as long as the bus stays down.
                return
            self._fault_stop(None, code, message, freeze=True)

    def _on_alerts(self, ids: set[int]) -> None:
        for sid in sorted(ids):
            s = self.cal.by_id(sid)
            try:
                hw = self.bus.read_field(sid, "hardware_error_status")
            except BusError as exc:
                hw, names = -1, f"alert set, status unreadable: {exc}"
            else:
                names = ", ".join(ct.hardware_error_names(hw)) or f"status {hw}"
            with self._lock:
                self._fault_stop(s, "hardware_error", f"{s.joint} (servo {sid}): {names}", freeze=False)

    # -- Backend interface -------------------------------------------------------------------
    @property
    def faults(self) -> list:
        return list(self._faults)

    def apply(self, command: dict) -> list[str]:
        if self._faults:
            raise RequestError("fault", f"robot faulted ({self._faults[0]['message']}); send reset_faults")
        with self._lock:
            kin = Kinematics(self.q_meas)
            self.clipped = self.ctl.apply(command, kin)
        return self.clipped

    def advance(self, dt: float) -> None:
        """Time is the wall clock's: the loop thread moves the servos. Only check the thread lives."""
        if self._thread is not None and not self._thread.is_alive() and not self._closed:
            self._add_fault(None, "driver", "control loop thread died")

    def hold(self) -> None:
        with self._lock:
            self.ctl.hold(self.q_cmd, self.v_cmd, self.loop_period)

    def state(self) -> dict:
        with self._lock:
            q, dq, effort = self.q_meas, self.dq_meas, self.effort
            base = list(self.base)
            target = self.ctl.target.copy()
        kin = Kinematics(q)
        return {
            "time": time.monotonic() - self.t0,
            "q": q,
            "dq": dq,
            "effort": effort,
            "target": target,
            "ee": np.array(kin.pos + rot_to_quat(kin.rot)),
            "ee_vel": ee_velocity(kin, dq),
            "base": np.array(base),
            "objects": {},
            "faults": list(self._faults),
            "clipped": self.clipped,
            "diagnostics": self.diagnostics(),
        }

    def diagnostics(self) -> dict:
        """Control-loop health: achieved rate, cycle time and jitter (ms), bus counters."""
        elapsed = time.monotonic() - self.t0
        return {"loop_hz": self.cycles / elapsed if elapsed > 0 else 0.0,
                "cycle_p50_ms": 1e3 * self.cycle_time.percentile(50),
                "cycle_p99_ms": 1e3 * self.cycle_time.percentile(99),
                "jitter_p99_ms": 1e3 * self.jitter.percentile(99),
                "bus": dict(self.bus.stats)}

    def reset(self, seed, options) -> None:
        """The real arm cannot teleport: move to the start pose and wait until it is there."""
        if self._faults:
            raise RequestError("fault", f"robot faulted ({self._faults[0]['message']}); send reset_faults")
        arm = options.get("initial_arm_position", READY_ARM)
        torso = options.get("initial_torso", READY_TORSO)
        self._move_to(torso, arm)

    def _move_to(self, torso: float, arm, tol: float = 0.01) -> None:
        target = self.q_meas.copy()
        target[TORSO] = torso
        target[ARM] = arm
        if np.any(target < self.ctl.lower) or np.any(target > self.ctl.upper):
            raise RequestError("bad_options", "start pose is outside the joint limits")
        with self._lock:
            self.ctl.reset(self.q_cmd)
            self.ctl.target = target
            self.ctl.base_cmd = (0.0, 0.0)
        deadline = time.monotonic() + self.move_timeout
        while time.monotonic() < deadline:
            if self._faults:
                raise RequestError("fault", f"fault during move: {self._faults[0]['message']}")
            with self._lock:
                done = (np.abs(self.q_meas - target).max() < tol and np.abs(self.v_cmd).max() < 1e-6)
            if done:
                return
            time.sleep(0.01)
        err = np.abs(self.q_meas - target)
        worst = self.description.joints[int(err.argmax())].name
        raise RequestError("move_timeout", f"did not reach the start pose within {self.move_timeout:g} s "
                                           f"({worst} is {err.max():.3f} away)")

    def reset_faults(self) -> None:
        """Reopen a lost port, reboot servos with hardware errors, and hold where the arm is now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        faults, self._faults = self._faults, []
        try:
            if any(f["code"] == "port" for f in faults):
                self.bus.close()
                self.bus.open()
            for f in faults:
                if f["code"] == "hardware_error" and f["servo"] >= 0:
                    self.bus.reboot(f["servo"])
                    time.sleep(0.1)
            self._bus_errors = 0
            self._start_servos()
        except (BusError, ConfigError) as exc:
            self._add_fault(None, "port" if isinstance(exc, PortError) else "bus", f"reset_faults failed: {exc}")
        finally:
            self._stop.clear()
            self._start_loop()

    def close(self) -> None:
        """Rest pose first (the arm has no brakes), then torque off; the bus watchdog off last."""
        if self._closed:
            return
        try:
            if self.rest_pose != "none" and not self._faults:
                torso, arm = (TUCK_TORSO, TUCK_ARM) if self.rest_pose == "tuck" else (READY_TORSO, READY_ARM)
                try:
                    self._move_to(torso, arm)
                except RequestError as exc:
                    log.error("could not reach the rest pose (%s); holding instead of dropping the arm", exc)
                    self.torque_off_on_close = False
        finally:
            self._closed = True
            self._stop.set()
            if self._thread is not None:
                self._thread.join(2.0)
            try:
                if self.torque_off_on_close and not self._faults:
                    for s in self.cal.servos:
                        self.bus.write_field(s.id, "torque_enable", 0)
                else:
                    log.warning("leaving torque on: the servos hold the arm")
                for s in self.cal.servos:
                    self.bus.write_field(s.id, "bus_watchdog", 0)
            except BusError as exc:
                log.error("close: %s", exc)
            self.bus.close()


WATCHDOG_CHECK_CYCLES = 50
# Wheel speed at full twist (1 m/s + 4.5 rad/s) is ~31 rad/s; an X-series servo tops out at raw 1023
# (~24.5 rad/s, ~1.5 m/s at the rim): that is the wheels' limit, and goals saturate there.
WHEEL_RAW_MAX = ct.FIELDS["velocity_limit"].hi
LOOP_RATE_WINDOW = 1.0  # s over which the loop rate is held against min_loop_fraction
DRIVE_MODE_REVERSE = 0x01  # Drive Mode bit 0; bit 2 (0x04) would make the profile time-based


def _unpack(data: bytes) -> tuple[int, int, int]:
    """present_current (2, signed), present_velocity (4, signed), present_position (4, signed)."""
    return (int.from_bytes(data[0:2], "little", signed=True),
            int.from_bytes(data[2:6], "little", signed=True),
            int.from_bytes(data[6:10], "little", signed=True))
