"""The hardware backend: the Fetch-style robot's Dynamixel servos behind the robot server.

A control-loop thread runs at the bus rate and owns the bus: each cycle it advances the commanded
trajectory with the same safety layer the simulators integrate with (`TargetController.advance`:
motion limiter, workspace guard, velocity lapses), sends every goal in one bulk write and reads
back current, velocity and position of every reachable servo in one (fast) sync read. The
server's thread only sets targets (`apply`) and samples (`state`); anything that takes longer
than a cycle (a move to the start or rest pose, recovering a servo) is an `Operation` the server
polls while it keeps serving the e-stop, so a slow operation never stalls the server or the servos.

Safety, from the top down: the safety layer clips targets to joint limits narrowed by the
calibration and keeps the gripper in the workspace; the limiter bounds velocity and acceleration;
the servos' own EEPROM limits (position, velocity, current) are written at start-up; the Dynamixel
bus watchdog stops the servos if this process dies or stalls (the fault then says how long the
driver's longest pause between bus instructions was, and whether its loop was waiting for a CPU). The servos have no brakes, so torque is never
turned off on a servo that holds the arm: not at start-up (a servo found with torque on keeps it,
its settings are checked instead), not by `reset_faults` (only faulted servos are touched; a
reboot, which drops torque, is named and must be agreed to when the servo still holds), and on
close only after the arm reached its rest pose.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time

import numpy as np

from robot_env.backends.interface import Backend, Operation
from robot_env.backends.spec import BackendSpec, SafetyParams, ready_gripper
from robot_env.control.commands import CHANNELS, RESET_OPTIONS
from robot_env.model.description import ARM, FETCH, NJ, READY_ARM, READY_TORSO, TORSO, TUCK_ARM, TUCK_TORSO, WHEEL_RADIUS, RobotDescription
from robot_env.errors import ConfigError, RequestError
from robot_env.model.kinematics import fk_frames, rot_to_quat
from robot_env.bridge.latency import Histogram
from robot_env.control.safety import SafetyConfig
from robot_env.control.targets import Kinematics, TargetController, check_start_pose, ee_velocity

from . import control_table as ct
from .bus import BusError, BusTimeout, DynamixelBus, PortError
from .calibration import MODES, Calibration, JointServo, load_calibration

log = logging.getLogger("drivers.hardware")

F = ct.FIELDS
READ_START, READ_LEN = ct.span("present_current", "present_velocity", "present_position")
_VEL_UNIT = F["present_velocity"].unit  # rad/s per raw count (of the servo shaft)
_CUR_UNIT = F["present_current"].unit


_num = (int, float)


class DynamixelBackend(Backend):
    kind = "dynamixel"
    realtime_only = True
    channels = frozenset(CHANNELS)
    # The config's [server.dynamixel] table (`robot_env.config` validates it from here).
    Settings = {
        "serial_port": (str, "/dev/ttyUSB0", lambda v: bool(v), "a serial device path"),
        "baud": (int, 1_000_000, lambda v: v in (57600, 115200, 1_000_000, 2_000_000, 3_000_000, 4_000_000),
                 "a Dynamixel baud rate (57600, 115200, 1000000, 2000000, 3000000 or 4000000)"),
        "calibration": (str, "fetch_dynamixel_calibration.toml", lambda v: bool(v),
                        "a calibration TOML (relative to this config file)", "path"),
        "loop_rate": (_num, 200.0, lambda v: 10 <= v <= 2000, "between 10 and 2000 Hz"),
        "min_loop_fraction": (_num, 0.25, lambda v: 0 <= v < 1, "in [0, 1) of loop_rate (0: off)"),
        "fast_sync": (bool, True, None, ""),
        "reply_slack": (_num, 0.02, lambda v: 0 <= v <= 1, "between 0 and 1 s"),
        "retries": (int, 2, lambda v: 0 <= v <= 10, "between 0 and 10"),
        "max_bus_errors": (int, 5, lambda v: 1 <= v <= 1000, "between 1 and 1000 consecutive failed cycles"),
        "bus_watchdog": (_num, 0.3, lambda v: v == 0 or 0.02 <= v <= 2.54, "0 (off) or 0.02 to 2.54 s"),
        "rest_pose": (str, "tuck", lambda v: v in ("tuck", "ready", "none"), "'tuck', 'ready' or 'none'"),
        "torque_off_on_close": (bool, True, None, ""),
        "move_timeout": (_num, 15.0, lambda v: 0.5 <= v <= 120, "between 0.5 and 120 s"),
    }

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
        safety = safety or SafetyConfig()
        self.ctl = TargetController(safety, description)
        self.num_robots = 1
        self.spec = BackendSpec(kind=self.kind, num_robots=1, channels=dict(CHANNELS),
                                reset_options=dict(RESET_OPTIONS), safety=SafetyParams.of(safety),
                                description=description, realtime_only=True, ready_ee=ready_gripper())
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
        self._check_rest_pose()
        self.torque_off_on_close = torque_off_on_close
        self.move_timeout = move_timeout
        self.estop_key = f"{self.kind}-{serial_port}"  # one persisted e-stop per robot (`estop_latch`)
        self.bus = DynamixelBus(serial_port, baud, timeout_slack=reply_slack, retries=retries)
        self.joint_ids = [s.id for s in self.cal.joints]
        self.all_ids = [s.id for s in self.cal.servos]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._faults: list[dict] = []
        self._bus_errors = 0
        self._misses: dict[int, int] = {}  # servo id -> consecutive cycles it did not answer
        self._excluded: set[int] = set()  # servos the cycle does not talk to (silent, rebooting, port down)
        self._torque: dict[int, bool] = {}  # what we know of each servo's torque (False: off, e.g. shutdown)
        self._stale: set[int] = set()  # joint indices not read on the last cycle
        self._jobs: collections.deque = collections.deque()  # loop-thread work, one step per cycle
        self._parked = False
        self.jitter = Histogram()  # |actual - nominal| loop period
        self.cycle_time = Histogram()
        self.cycles = 0
        self.cpu_wait = 0.0  # s the loop thread spent runnable but not running (Linux; 0 elsewhere)
        self._cpu_clock: ThreadCpuWait | None = None
        self._cpu_mark = 0.0  # its reading at the previous bus-watchdog check
        self.clipped: list[str] = []
        self.t0 = time.monotonic()
        self.last_read = self.t0
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

    def _check_rest_pose(self) -> None:
        """The rest pose is where close drives the arm: it must be a pose the safety layer allows."""
        if self.rest_pose == "none":
            return
        torso, arm = (TUCK_TORSO, TUCK_ARM) if self.rest_pose == "tuck" else (READY_TORSO, READY_ARM)
        pos = fk_frames(torso, list(arm))[0]
        if self.ctl.guard.excess(pos) > 0.0:
            raise ConfigError(f"[server.dynamixel] rest_pose {self.rest_pose!r} puts the gripper at "
                              f"{[round(p, 3) for p in pos]}, outside [server.safety] workspace_min/max and "
                              "floor_height: the arm could not reach it on close; widen the workspace or "
                              "choose another rest pose")

    def _start_servos(self) -> None:
        bus = self.bus
        for s in self.cal.servos:
            # Patient at start-up only (a loaded machine or a slow adapter may miss a first reply);
            # a servo that is really missing costs a second before the error.
            deadline = time.monotonic() + STARTUP_PING_PATIENCE
            while True:
                try:
                    model, _fw = bus.ping(s.id)
                    break
                except BusTimeout:
                    if time.monotonic() > deadline:
                        raise ConfigError(f"servo {s.id} ({s.joint}) does not answer on {bus.port}: check power, "
                                          "wiring, id and baud rate") from None
            if model != s.model_number:
                name = ct.MODELS.get(model, f"model {model}")
                raise ConfigError(f"servo {s.id} ({s.joint}) is a {name}, the calibration says {s.model}")
        for s in self.cal.servos:
            self._prepare_servo(s)
        q, dq, effort, _ = self._read_state(self.all_ids)
        # Hold where we are: targets and the commanded trajectory start at the measured pose.
        self.q_meas, self.dq_meas, self.effort = q, dq, effort
        self.q_cmd, self.v_cmd = q.copy(), np.zeros(NJ)
        self.wheel_cmd = (0.0, 0.0)
        self.base = [0.0, 0.0, 0.0, 0.0, 0.0]
        self.ctl.reset(q)
        self._write_goals()
        for s in self.cal.servos:
            if not self._servo_faulted(s.id):
                self._torque_on(s)
        self._kin = Kinematics(q)

    def _prepare_servo(self, s: JointServo) -> None:
        """Set a servo up for the loop without ever dropping it.

        Torque off (a fresh servo, one after a power cycle or a reboot): EEPROM (operating mode,
        the servo's own limits, return delay, drive mode) is written as calibrated. Torque on (it
        holds the arm, e.g. after the previous driver died): its EEPROM is checked instead, since
        writing it would need torque off; a mismatch is a start-up error that says what to do.
        RAM settings (profile, goal current) are written either way, and a tripped bus watchdog
        cleared.
        """
        bus = self.bus
        hw = bus.read_field(s.id, "hardware_error_status")
        if hw:
            self._add_fault([s], "hardware_error", f"{s.joint} (servo {s.id}): "
                            + (", ".join(ct.hardware_error_names(hw)) or f"status {hw}"))
        torque = bus.read_field(s.id, "torque_enable")
        self._torque[s.id] = bool(torque)
        wanted = self._eeprom_for(s, bus.read_field(s.id, "drive_mode"))
        if torque:
            wrong = [f"{name} is {got}, wants {want}" for name, want in wanted.items()
                     if (got := bus.read_field(s.id, name)) != want]
            if wrong:
                raise ConfigError(f"servo {s.id} ({s.joint}) holds torque and its settings differ from the "
                                  f"calibration ({'; '.join(wrong)}); changing them needs torque off, which would "
                                  "drop the joint: support the arm, power-cycle the servos (or turn their torque "
                                  "off), then start again")
            bus.write_field(s.id, "bus_watchdog", 0)  # clears a tripped watchdog; re-armed by `_torque_on`
        else:
            bus.write_field(s.id, "bus_watchdog", 0)
            for name, value in wanted.items():
                bus.write_field(s.id, name, value)
        if s.mode == "velocity":
            return
        if s.current_limit:
            bus.write_field(s.id, "goal_current", int(s.current_limit / _CUR_UNIT))
        # We stream the limiter's setpoints (no acceleration profile), but cap the servo's own speed at
        # the joint's limit: with no profile a servo closes each 5 ms setpoint step at up to the EEPROM
        # velocity limit (20 % above the joint's), so it moved in bursts past the limit while tracking.
        shaft = self._shaft_speed(s)
        bus.write_field(s.id, "profile_velocity", min(math.ceil(shaft / _VEL_UNIT), F["profile_velocity"].hi))
        bus.write_field(s.id, "profile_acceleration", 0)

    def _shaft_speed(self, s: JointServo) -> float:
        """The joint's velocity limit as rad/s of the servo's shaft."""
        return self.description.joints[s.index].velocity * s.ticks_per_unit * (2 * math.pi / 4096)

    def _eeprom_for(self, s: JointServo, drive_mode: int) -> dict:
        """The EEPROM values the calibration asks of servo `s` (field -> raw value)."""
        # Drive Mode outlives power cycles: a time-based profile (bit 2) left by another tool would turn
        # the profile velocity into "take N ms per move". Keep only the direction bit (bit 0); the
        # calibration's direction is applied in software on top.
        out = {"return_delay_time": 0,  # the factory 500 µs per reply would halve the loop rate
               "operating_mode": MODES[s.mode], "drive_mode": drive_mode & DRIVE_MODE_REVERSE}
        if s.mode == "velocity":
            out["velocity_limit"] = WHEEL_RAW_MAX
            return out
        lo, hi = s.tick_limits()
        if s.mode in ("position", "current_position"):
            out["min_position_limit"] = max(0, lo)
            out["max_position_limit"] = min(4095, hi)
        out["velocity_limit"] = min(int(self._shaft_speed(s) * 1.2 / _VEL_UNIT) + 1, F["velocity_limit"].hi)
        if s.current_limit:
            out["current_limit"] = int(s.current_limit / _CUR_UNIT)
        return out

    def _torque_on(self, s: JointServo, arm_watchdog: bool = True) -> None:
        """Goal at the present position first (no jump), torque on, bus watchdog armed."""
        bus = self.bus
        if s.mode != "velocity":
            bus.write_field(s.id, "goal_position", bus.read_field(s.id, "present_position"))
        bus.write_field(s.id, "torque_enable", 1)
        self._torque[s.id] = True
        if arm_watchdog:
            self._arm_watchdog(s)

    def _arm_watchdog(self, s: JointServo) -> None:
        if self.bus_watchdog:
            self.bus.write_field(s.id, "bus_watchdog", int(round(self.bus_watchdog / 0.02)))

    # -- the control loop --------------------------------------------------------------------
    def _start_loop(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dynamixel-loop", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self._cpu_clock = ThreadCpuWait.open()
        self._cpu_mark = self._cpu_clock.read() if self._cpu_clock is not None else 0.0
        try:
            self._run_loop()
        finally:
            if self._cpu_clock is not None:
                self._cpu_clock.close()
                self._cpu_clock = None

    def _run_loop(self) -> None:
        period = self.loop_period
        nxt = time.perf_counter()
        last = nxt
        window_start, window_cycles = nxt, 0
        clock = self._cpu_clock
        window_wait = clock.read() if clock is not None else 0.0
        while not self._stop.is_set():
            start = time.perf_counter()
            self.jitter.add(abs((start - last) - period) + 1e-9)
            last = start
            self._cycle(period)
            if self._jobs:
                self._run_job()
            self.cycles += 1
            end = time.perf_counter()
            self.cycle_time.add(end - start + 1e-9)
            window_cycles += 1
            if end - window_start >= LOOP_RATE_WINDOW:
                waited = None
                if clock is not None:
                    total = clock.read()
                    waited, window_wait = total - window_wait, total
                self._check_loop_rate(window_cycles / (end - window_start), end - window_start, waited)
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
            self.q_cmd, self.v_cmd = ctl.advance(self.q_cmd, self.v_cmd, dt, time.monotonic())
            v, w = ctl.base.step(self.wheel_cmd[0], self.wheel_cmd[1], ctl.base_cmd[0], ctl.base_cmd[1], dt)
            self.wheel_cmd = (v, w)
        if self._port_down():
            return  # nothing to talk to; reset_faults reopens
        ids = [i for i in self.all_ids if i not in self._excluded]
        try:
            self._write_goals()
            q, dq, effort, wheels = self._read_state(ids)
        except PortError as exc:
            self._on_bus_failure("port", f"{exc}", self.cal.servos, exclude=True)
            return
        except BusTimeout as exc:
            self._on_silent(exc, ids, dt)
            return
        except BusError as exc:
            self._bus_errors += 1
            if self._bus_errors >= self.max_bus_errors:
                self._on_bus_failure("bus", f"{self._bus_errors} consecutive failed bus cycles: {exc}",
                                     [self.cal.by_id(i) for i in ids])
            return
        self._bus_errors = 0
        for i in ids:
            self._misses.pop(i, None)
        self._take(ids, q, dq, effort, wheels, dt)
        if self.bus.last_alerts:
            self._on_alerts(set(self.bus.last_alerts))
        if self.bus_watchdog and self.cycles % WATCHDOG_CHECK_CYCLES == 0:
            self._check_bus_watchdog()

    def _take(self, ids, q, dq, effort, wheels, dt: float) -> None:
        """Keep what was read this cycle; joints not read keep their last position, marked stale."""
        read = set(ids)
        with self._lock:
            fresh = [s.index for s in self.cal.joints if s.id in read]
            qm, dqm, em = self.q_meas.copy(), self.dq_meas.copy(), self.effort.copy()
            qm[fresh], dqm[fresh], em[fresh] = q[fresh], dq[fresh], effort[fresh]
            self.q_meas, self.dq_meas, self.effort = qm, dqm, em
            self._stale = {s.index for s in self.cal.joints if s.id not in read}
            if len(wheels) == len(self.cal.wheels):
                self._odometry(wheels[0], wheels[1], dt)
            self.last_read = time.monotonic()

    def _on_silent(self, exc: BusTimeout, ids, dt: float) -> None:
        """Some servos did not answer: use the others' replies, fault those silent too long by name."""
        silent = [i for i in exc.ids if i in ids]
        for i in silent:
            self._misses[i] = self._misses.get(i, 0) + 1
        answered = [i for i in ids if i not in silent and i in (exc.partial or {})]
        for i in answered:
            self._misses.pop(i, None)
        if answered:
            q, dq, effort, wheels = self._decode(exc.partial, answered)
            self._take(answered, q, dq, effort, wheels, dt)
        gone = [self.cal.by_id(i) for i in silent if self._misses[i] >= self.max_bus_errors]
        if gone:
            names = ", ".join(f"{s.joint} (servo {s.id})" for s in gone)
            self._on_bus_failure("bus", f"{names} stopped answering ({self.max_bus_errors} cycles in a row): {exc}",
                                 gone, exclude=True)

    def _check_bus_watchdog(self) -> None:
        """A tripped servo watchdog reads 255 (-1) and locks its goals: our loop stalled too long.
        The fault says what the driver knows of its longest pause since the previous check."""
        pause, overrun = self.bus.take_pauses()
        waited = None
        if self._cpu_clock is not None:
            total = self._cpu_clock.read()
            waited, self._cpu_mark = total - self._cpu_mark, total
            self.cpu_wait += waited
        ids = [i for i in self.all_ids if i not in self._excluded]
        try:
            data = self.bus.sync_read(F["bus_watchdog"].address, 1, ids, fast=self.fast_sync)
        except BusError:
            return  # counted by the next cycle's own read
        for sid, raw in data.items():
            if raw[0] == 0xFF:
                s = self.cal.by_id(sid)
                with self._lock:
                    self._fault_stop([s], "bus_watchdog", f"{s.joint} (servo {sid}): the servo's bus watchdog "
                                     f"tripped (the driver was silent > {self.bus_watchdog:g} s); it stopped"
                                     + pause_note(pause, waited, overrun), freeze=True)

    def _write_goals(self) -> None:
        writes = []
        for s in self.cal.joints:
            if self._servo_faulted(s.id) or s.id in self._excluded:
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
            if s.id in self._excluded:
                continue
            raw = int(round(raw * k))
            writes.append((s.id, F["goal_velocity"].address, ct.to_bytes(F["goal_velocity"], raw)))
        if writes:
            self.bus.bulk_write(writes)

    def _read_state(self, ids):
        data = self.bus.sync_read(READ_START, READ_LEN, ids, fast=self.fast_sync)
        return self._decode(data, ids)

    def _decode(self, data: dict, ids):
        q = np.full(NJ, np.nan)
        dq = np.full(NJ, np.nan)
        effort = np.full(NJ, np.nan)
        for s in self.cal.joints:
            if s.id not in data:
                continue
            cur, vel, pos = _unpack(data[s.id])
            q[s.index] = s.to_units(pos)
            dq[s.index] = vel * _VEL_UNIT * 4096 / (2 * math.pi) / (s.direction * s.ticks_per_unit)
            effort[s.index] = cur * _CUR_UNIT
        wheels = []
        for s in self.cal.wheels:
            if s.id in data:
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
    def _servo_faulted(self, sid: int) -> bool:
        return any(sid in f["servos"] for f in self._faults)

    def _port_down(self) -> bool:
        return any(f["code"] == "port" for f in self._faults)

    def _add_fault(self, servos, code: str, message: str) -> None:
        """Every fault names its joints and servos (`joint`/`servo`: the first of them)."""
        servos = list(servos) or list(self.cal.servos)
        fault = {"joint": servos[0].joint, "servo": servos[0].id, "joints": [s.joint for s in servos],
                 "servos": [s.id for s in servos], "code": code, "message": message}
        if not any(f["code"] == code and f["servos"] == fault["servos"] for f in self._faults):
            self._faults.append(fault)
            log.error("fault: %s", fault)

    def _fault_stop(self, servos, code: str, message: str, *, freeze: bool, brake: bool = False) -> None:
        """Record a fault and hold where the arm is measured; the base stops. Call with the lock held.

        `freeze`: the servos stopped by themselves or cannot be reached, so the commanded trajectory
        jumps to the hold too; otherwise the limiter brakes it there as usual. `brake`: the servos
        still follow the commanded trajectory but the measurement is stale, so hold where that
        trajectory can stop instead.
        """
        self._add_fault(servos, code, message)
        if brake:
            self.ctl.hold(self.q_cmd, self.v_cmd, self.loop_period)
        else:
            self.ctl.hold(self.q_meas, np.zeros(NJ), self.loop_period)
        if freeze:
            self.q_cmd, self.v_cmd = self.ctl.target.copy(), np.zeros(NJ)
        self.wheel_cmd = (0.0, 0.0)

    def _check_loop_rate(self, rate: float, window: float, cpu_wait: float | None = None) -> None:
        """Late replies that the retries still catch never count as failed cycles, but they slow the
        loop: the state goes stale and goals reach the servos late. Below the floor that is a fault.
        `cpu_wait`: the loop thread's time runnable but not running in the window (None: unknown);
        a quarter of the window or more means an overloaded machine rather than a late bus."""
        if not self.min_loop_rate or rate >= self.min_loop_rate or self._faults or self._jobs:
            return
        stats = self.bus.stats
        counts = f"{stats.get('timeouts', 0)} timeouts, {stats.get('retries', 0)} retries so far"
        if cpu_wait is not None and cpu_wait >= 0.25 * window:
            why = (f"its thread waited {cpu_wait * 1e3:.0f} ms of that for a CPU: the machine is overloaded "
                   f"(leave the driver a core; {counts})")
        else:
            why = f"the bus answers late ({counts})"
        with self._lock:
            self._fault_stop(self.cal.servos, "slow_loop",
                             f"the control loop ran at {rate:.0f} Hz over the last {window:.1f} s, below the "
                             f"{self.min_loop_rate:g} Hz floor ([server.dynamixel] min_loop_fraction of loop_rate): "
                             + why, freeze=False, brake=True)

    def _on_bus_failure(self, code: str, message: str, servos, exclude: bool = False) -> None:
        with self._lock:
            ids = sorted(s.id for s in servos)
            if any(f["code"] == code and sorted(f["servos"]) == ids for f in self._faults):
                # Already latched and holding: one fault, not one more (and a re-hold at a possibly
                # stale measured pose) per failed cycle for as long as the bus stays down.
                return
            self._fault_stop(servos, code, message, freeze=True)
            if exclude:
                self._excluded |= set(ids)
                self._stale |= {s.index for s in servos if s.index >= 0}

    def _on_alerts(self, ids: set[int]) -> None:
        for sid in sorted(ids):
            s = self.cal.by_id(sid)
            if any(f["code"] == "hardware_error" and sid in f["servos"] for f in self._faults):
                continue
            try:
                hw = self.bus.read_field(sid, "hardware_error_status")
                self._torque[sid] = bool(self.bus.read_field(sid, "torque_enable"))
            except BusError as exc:
                hw, names = -1, f"alert set, status unreadable: {exc}"
            else:
                names = ", ".join(ct.hardware_error_names(hw)) or f"status {hw}"
            with self._lock:
                self._fault_stop([s], "hardware_error", f"{s.joint} (servo {sid}): {names}", freeze=False)

    # -- loop-thread jobs --------------------------------------------------------------------
    def _run_job(self) -> None:
        """One step of the job at the head of the queue (a generator: each step is a few bus
        transactions, so the loop keeps feeding every other servo's watchdog meanwhile)."""
        job = self._jobs[0]
        try:
            if job.cancelled is not None:
                raise RequestError("cancelled", f"{job.what} cancelled by {job.cancelled}")
            next(job.steps)
        except StopIteration:
            job.done = True
        except RequestError as exc:
            job.error, job.done = exc, True
        except (BusError, ConfigError) as exc:
            job.error = RequestError("reset_faults_failed", f"{job.what} failed: {exc}")
            job.done = True
        except Exception as exc:  # a bug: report it on the request, keep the loop alive
            log.exception("%s failed", job.what)
            job.error, job.done = RequestError("internal", f"{type(exc).__name__}: {exc}"), True
        if job.done:
            self._jobs.popleft()
            if job.error is not None and job.on_failure is not None:
                job.on_failure()

    # -- Backend interface -------------------------------------------------------------------
    @property
    def faults(self) -> list:
        return list(self._faults)

    def apply(self, command: dict, robots=None) -> list[str]:
        if self._faults:
            raise RequestError("fault", f"robot faulted ({self._faults[0]['message']}); send reset_faults")
        with self._lock:
            kin = Kinematics(self.q_meas)
            self.clipped = self.ctl.apply(command, kin, time.monotonic())
        return self.clipped

    def advance(self, dt: float) -> None:
        """Time is the wall clock's: the loop thread moves the servos. Only check the thread lives."""
        if self._thread is not None and not self._thread.is_alive() and not self._closed:
            with self._lock:
                self._add_fault(self.cal.servos, "driver", "the control loop thread died")

    def hold(self) -> None:
        with self._lock:
            self.ctl.hold(self.q_cmd, self.v_cmd, self.loop_period)

    def state(self) -> dict:
        with self._lock:
            q, dq, effort = self.q_meas, self.dq_meas.copy(), self.effort.copy()
            stale = sorted(self._stale)
            base = list(self.base)
            target = self.ctl.target.copy()
            flags = self.clipped + self.ctl.motion_flags if self.ctl.motion_flags else self.clipped
        if stale:  # not read on the last cycle: the last position is kept, but no velocity or effort
            dq[stale] = np.nan
            effort[stale] = np.nan
        kin = Kinematics(q)
        st = {
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
            "clipped": dict.fromkeys(flags, (0,)),
            "diagnostics": self.diagnostics(),
        }
        if stale:
            st["stale"] = [self.description.joints[i].name for i in stale]
        return st

    def diagnostics(self) -> dict:
        """Control-loop health: achieved rate, cycle time and jitter (ms), bus counters, sample age."""
        now = time.monotonic()
        elapsed = now - self.t0
        return {"loop_hz": self.cycles / elapsed if elapsed > 0 else 0.0,
                "cycle_p50_ms": 1e3 * self.cycle_time.percentile(50),
                "cycle_p99_ms": 1e3 * self.cycle_time.percentile(99),
                "jitter_p99_ms": 1e3 * self.jitter.percentile(99),
                "sample_age_ms": 1e3 * (now - self.last_read),
                "loop_cpu_wait_ms": 1e3 * self.cpu_wait,
                "bus": dict(self.bus.stats)}

    def reset(self, seed, options, robots=None) -> Operation:
        """The real arm cannot teleport: the start pose is checked, then reached by a move the
        server polls (`Operation`) while it keeps serving."""
        if self._faults:
            raise RequestError("fault", f"robot faulted ({self._faults[0]['message']}); send reset_faults")
        arm = options.get("initial_arm_position", READY_ARM)
        torso = options.get("initial_torso", READY_TORSO)
        return self._move_to(torso, arm, "the reset's move to the start pose")

    def _move_to(self, torso: float, arm, what: str, via=()) -> "_Move":
        """A move to (torso, arm), through the (torso, arm) poses in `via` first; every pose is
        checked before anything moves."""
        with self._lock:
            base = self.q_cmd.copy()
        targets = []
        for t, a in (*via, (torso, arm)):
            target = base.copy()
            target[TORSO] = t
            target[ARM] = a
            check_start_pose(self.ctl, target)
            targets.append(target)
        op = _Move(self, targets, what, time.monotonic() + self.move_timeout)
        op.start()
        return op

    def reset_faults(self, reboot=()) -> Operation | None:
        """Recover only what is faulted, in the loop thread (`_recover`); see the module docstring."""
        if not self._faults:
            return None
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._start_loop()
        need = sorted({sid for f in self._faults if f["code"] == "hardware_error" for sid in f["servos"]})
        agreed = set(reboot)
        holding = [self.cal.by_id(i) for i in need if self._torque.get(i, True)
                   and "*" not in agreed and self.cal.by_id(i).joint not in agreed]
        if holding:
            names = ", ".join(f"{s.joint} (servo {s.id})" for s in holding)
            raise RequestError("reboot_required", f"reset_faults refused: {names} report a hardware error that only "
                                                  "a reboot clears, and still hold torque: a reboot turns it off "
                                                  "for about a second, so the joint goes limp (a loaded shoulder or "
                                                  "elbow drops). Support or park the arm, then call "
                                                  f"reset_faults(reboot={[s.joint for s in holding]}). Nothing was done")
        for i in need:
            log.warning("reset_faults will reboot %s (servo %d): its torque is %s", self.cal.by_id(i).joint, i,
                        "on (agreed by the caller)" if self._torque.get(i, True) else "already off (shutdown)")
        job = _Job("reset_faults", None)
        job.steps = self._recover(job, [dict(f) for f in self._faults])
        had_torque = {i for i, on in self._torque.items() if on}
        job.on_failure = lambda: self._restore_torque(had_torque)
        self._jobs.append(job)
        return _JobOperation(job)

    def _recover(self, job: "_Job", faults: list):
        """The recovery, a step per loop cycle. Only faulted servos are touched; the others keep
        holding (their goals and watchdogs are fed by the cycles in between)."""
        bus = self.bus
        codes = {f["code"] for f in faults}
        if "port" in codes:
            bus.close()
            bus.open()
            yield
        if codes & {"port", "bus"}:
            self._bus_errors = 0
        todo: dict[int, str] = {}  # servo id -> what to do: reboot, rejoin, watchdog
        for f in faults:
            for sid in f["servos"]:
                how = {"hardware_error": "reboot", "bus_watchdog": "watchdog"}.get(f["code"], "rejoin")
                if f["code"] in ("slow_loop", "driver"):
                    continue
                if todo.get(sid) != "reboot":
                    todo[sid] = how
        job.rebooted = [self.cal.by_id(i).joint for i, how in todo.items() if how == "reboot"]
        for sid, how in sorted(todo.items()):
            s = self.cal.by_id(sid)
            self._excluded.add(sid)
            if how == "reboot":
                bus.reboot(sid)
                self._torque[sid] = False
                deadline = time.monotonic() + REBOOT_TIMEOUT
                while True:  # deaf while it boots: ask once per cycle
                    yield
                    try:
                        bus.ping(sid)
                        break
                    except BusTimeout:
                        if time.monotonic() > deadline:
                            raise RequestError("reset_faults_failed", f"{s.joint} (servo {sid}) did not come back "
                                                                      f"within {REBOOT_TIMEOUT:g} s of its reboot") from None
            else:
                try:
                    bus.ping(sid)
                except BusTimeout:
                    raise RequestError("reset_faults_failed", f"{s.joint} (servo {sid}) still does not answer") from None
            yield
            if how == "watchdog" and bus.read_field(sid, "torque_enable"):
                bus.write_field(sid, "bus_watchdog", 0)  # clears it; the servo kept its torque
            else:
                hw = bus.read_field(sid, "hardware_error_status")
                if hw:
                    raise RequestError("reset_faults_failed", f"{s.joint} (servo {sid}) reports "
                                       f"{', '.join(ct.hardware_error_names(hw)) or hw}: reset_faults again "
                                       f"(with reboot=[{s.joint!r}] if it holds torque)")
                self._prepare_servo(s)
            yield
            # No goals reach a servo until its fault clears at the end: arm its watchdog only then,
            # or one recovered early would trip while the others are still being recovered.
            self._torque_on(s, arm_watchdog=False)
            self._excluded.discard(sid)
            self._misses.pop(sid, None)
            yield
        # Everyone answers: hold where the arm is now, and clear what was recovered.
        q, dq, effort, wheels = self._read_state(self.all_ids)
        self._take(self.all_ids, q, dq, effort, wheels, self.loop_period)
        with self._lock:
            self.q_cmd, self.v_cmd = self.q_meas.copy(), np.zeros(NJ)
            self.wheel_cmd = (0.0, 0.0)
            self.ctl.reset(self.q_meas)
            self._faults = [f for f in self._faults if f not in faults]
        self._write_goals()  # the recovered servos get goals again before their watchdogs run
        for sid in sorted(todo):
            self._arm_watchdog(self.cal.by_id(sid))
        self.bus.reset_stats()

    def _restore_torque(self, servos: set[int]) -> None:
        """After a failed recovery: every servo that held torque before it holds it again."""
        for sid in sorted(servos):
            s = self.cal.by_id(sid)
            try:
                if not self.bus.read_field(sid, "torque_enable"):
                    self._torque_on(s)
                    log.warning("reset_faults failed; torque restored on %s (servo %d)", s.joint, sid)
            except BusError as exc:
                log.error("reset_faults failed; cannot restore torque on %s (servo %d): %s", s.joint, sid, exc)

    def park(self) -> Operation | None:
        """Move to the rest pose before close (the arm has no brakes); `close` turns torque off only
        after this completed."""
        if self.rest_pose == "none":
            self._parked = True
            return None
        if self._faults:
            log.error("faulted (%s): not moving to the rest pose; torque stays on", self._faults[0]["message"])
            return None
        torso, arm = (TUCK_TORSO, TUCK_ARM) if self.rest_pose == "tuck" else (READY_TORSO, READY_ARM)
        # Through the ready pose: a straight joint-space path from a stretched arm to the tuck sweeps
        # the gripper behind the base and near the floor, which the workspace guard would stop.
        with self._lock:
            near_rest = np.abs(self.q_cmd[ARM] - np.array(arm)).max() < 0.3
        via = () if self.rest_pose == "ready" or near_rest else ((READY_TORSO, READY_ARM),)
        op = self._move_to(torso, arm, f"the move to the rest pose ({self.rest_pose})", via)
        op.on_done = lambda: setattr(self, "_parked", True)
        return op

    def close(self) -> None:
        """Torque off only after a completed `park` (or with rest_pose "none"); the bus watchdog off last."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        try:
            if self.torque_off_on_close and self._parked and not self._faults:
                for s in self.cal.servos:
                    self.bus.write_field(s.id, "torque_enable", 0)
            else:
                log.warning("leaving torque on: the servos hold the arm (%s)",
                            "not parked" if not self._parked else "faulted" if self._faults else "configured")
            for s in self.cal.servos:
                if s.id not in self._excluded:
                    self.bus.write_field(s.id, "bus_watchdog", 0)
        except BusError as exc:
            log.error("close: %s", exc)
        self.bus.close()


class _Move(Operation):
    """A move of the real arm through poses, polled by the server: done when the arm is at the
    last one and still."""

    def __init__(self, backend: DynamixelBackend, targets: list, what: str, deadline: float, tol: float = 0.01):
        self.b, self.targets, self.what, self.deadline, self.tol = backend, list(targets), what, deadline, tol
        self.t0 = time.monotonic()
        self.error: RequestError | None = None
        self.finished = False
        self.on_done = None
        self.target = None

    def start(self) -> None:
        """Aim at the next pose (the limiter and the guard take it from where the arm is)."""
        b = self.b
        self.target = self.targets.pop(0)
        with b._lock:
            b.ctl.reset(b.q_cmd)
            b.ctl.target = self.target.copy()
            b.ctl.base_cmd = (0.0, 0.0)

    def poll(self) -> bool:
        if self.finished:
            return True
        b = self.b
        if b._faults:
            return self._fail("fault", f"{self.what} stopped by a fault: {b._faults[0]['message']}")
        with b._lock:
            err = np.abs(b.q_meas - self.target)
            reached = err.max() < self.tol and np.abs(b.v_cmd).max() < 1e-6
            braked = bool(b.ctl.vel_mode[:8].any()) or not np.array_equal(b.ctl.target, self.target)
            flags = list(b.ctl.motion_flags)
        if reached and self.targets:
            self.start()
            return False
        if reached:
            self.finished = True
            if self.on_done is not None:
                self.on_done()
            return True
        if braked:
            return self._fail("move_stopped", f"{self.what} was stopped by the safety layer ({', '.join(flags) or 'hold'})"
                                              f"; the arm holds where it stopped")
        if time.monotonic() > self.deadline:
            worst = b.description.joints[int(np.nanargmax(err))].name
            b.hold()
            return self._fail("move_timeout", f"{self.what} did not finish within {self.deadline - self.t0:g} s "
                                              f"({worst} is {np.nanmax(err):.3f} away); the arm holds")
        return False

    def _fail(self, code: str, message: str) -> bool:
        self.error = RequestError(code, message)
        self.finished = True
        return True

    def cancel(self, reason: str) -> None:
        if self.finished:
            return
        self.b.hold()
        self._fail("cancelled", f"{self.what} was cancelled by {reason} after {time.monotonic() - self.t0:.2f} s; "
                                "the arm holds where it stopped")

    def result(self):
        if self.error is not None:
            raise self.error
        return None


class _Job:
    """Work for the loop thread: `steps` is a generator, advanced once per cycle."""

    def __init__(self, what: str, steps):
        self.what, self.steps = what, steps
        self.done = False
        self.error: RequestError | None = None
        self.cancelled: str | None = None
        self.on_failure = None
        self.rebooted: list[str] = []


class _JobOperation(Operation):
    def __init__(self, job: _Job):
        self.job = job
        self.what = job.what

    def poll(self) -> bool:
        return self.job.done

    def cancel(self, reason: str) -> None:
        self.job.cancelled = reason

    def result(self):
        if self.job.cancelled is not None and self.job.error is None:
            raise RequestError("cancelled", f"{self.what} cancelled by {self.job.cancelled}")
        if self.job.error is not None:
            raise self.job.error
        return {"rebooted": self.job.rebooted}


WATCHDOG_CHECK_CYCLES = 50
REBOOT_TIMEOUT = 3.0  # s a rebooted servo may stay deaf
STARTUP_PING_PATIENCE = 1.0  # s a servo may take to answer its first ping at start-up
# Wheel speed at full twist (1 m/s + 4.5 rad/s) is ~31 rad/s; an X-series servo tops out at raw 1023
# (~24.5 rad/s, ~1.5 m/s at the rim): that is the wheels' limit, and goals saturate there.
WHEEL_RAW_MAX = ct.FIELDS["velocity_limit"].hi
LOOP_RATE_WINDOW = 1.0  # s over which the loop rate is held against min_loop_fraction
DRIVE_MODE_REVERSE = 0x01  # Drive Mode bit 0; bit 2 (0x04) would make the profile time-based


class ThreadCpuWait:
    """The calling thread's time spent runnable but not running (waiting for a CPU), from Linux's
    /proc/thread-self/schedstat. `open()` from the thread to measure; None where unavailable."""

    def __init__(self, fd: int):
        self._fd = fd
        self._last = self._read()

    @classmethod
    def open(cls) -> "ThreadCpuWait | None":
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except (OSError, AttributeError):
            return None
        try:
            return cls(fd)
        except (OSError, ValueError, IndexError):
            os.close(fd)
            return None

    def _read(self) -> float:
        return int(os.pread(self._fd, 128, 0).split()[1]) * 1e-9

    def read(self) -> float:
        """Seconds the thread has waited for a CPU in all (never decreasing)."""
        try:
            self._last = max(self._last, self._read())
        except (OSError, ValueError, IndexError):
            pass
        return self._last

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


def pause_note(pause: float, cpu_wait: float | None, overrun: float) -> str:
    """For a bus-watchdog fault: the driver's longest pause between bus instructions since the
    previous check and where that time went, as far as the driver can tell. Seconds in (`cpu_wait`:
    the loop thread's time runnable but not running over the same window, None if unknown;
    `overrun`: the longest poll held past its timeout); a clause for the message out."""
    note = f"; the driver's longest pause between bus instructions was {pause * 1e3:.0f} ms"
    if cpu_wait is not None and cpu_wait >= 0.5 * pause:
        return (note + f" and its control loop waited {cpu_wait * 1e3:.0f} ms for a CPU meanwhile: the "
                       "machine is overloaded (leave the driver a core)")
    if overrun >= 0.5 * pause:
        return (note + f", {overrun * 1e3:.0f} ms of it in a serial-port poll held past its timeout (the "
                       "kernel's tty worker thread, or the GIL's holder, was not scheduled): the machine is overloaded")
    waited = "" if cpu_wait is None else f" while its control loop waited {cpu_wait * 1e3:.0f} ms for a CPU"
    return note + f"{waited}: the loop was blocked (a lock, the GIL, a slow call)"


def _unpack(data: bytes) -> tuple[int, int, int]:
    """present_current (2, signed), present_velocity (4, signed), present_position (4, signed)."""
    return (int.from_bytes(data[0:2], "little", signed=True),
            int.from_bytes(data[2:6], "little", signed=True),
            int.from_bytes(data[6:10], "little", signed=True))
