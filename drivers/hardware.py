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
import threading
import time

import numpy as np

from robot_env.backends.interface import Backend, Operation
from robot_env.backends.spec import BackendSpec, SafetyParams, ready_gripper
from robot_env.bridge.latency import Histogram
from robot_env.control.commands import CHANNELS, RESET_OPTIONS
from robot_env.control.safety import SafetyConfig
from robot_env.control.targets import Kinematics, TargetController, check_start_pose, ee_velocity
from robot_env.errors import ConfigError, RequestError
from robot_env.model.description import (
    ARM,
    FETCH,
    NJ,
    READY_ARM,
    READY_TORSO,
    TORSO,
    TUCK_ARM,
    TUCK_TORSO,
    WHEEL_RADIUS,
    RobotDescription,
)
from robot_env.model.kinematics import fk_frames, rot_to_quat

from . import control_table as ct
from .bus import BusError, BusTimeout, DynamixelBus, PortError
from .calibration import Calibration, load_calibration
from .cameras import Cameras, check_cameras, resolve_camera_paths
from .loop_health import (  # noqa: F401
    LOOP_RATE_WINDOW,
    WATCHDOG_CHECK_CYCLES,
    WHEEL_RAW_MAX,
    ThreadCpuWait,
    name_thread,
    pause_note,
)
from .operations import _Move
from .recovery import FaultRecovery
from .servo_setup import ServoSetup

log = logging.getLogger("drivers.hardware")

F = ct.FIELDS
READ_START, READ_LEN = ct.span("present_current", "present_velocity", "present_position")
_VEL_UNIT = F["present_velocity"].unit  # rad/s per raw count (of the servo shaft)
_CUR_UNIT = F["present_current"].unit


_num = (int, float)


class DynamixelBackend(ServoSetup, FaultRecovery, Backend):
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
        # [server.dynamixel.cameras.<name>] tables: the robot's cameras (drivers/cameras.py: CAMERA_KEYS)
        "cameras": (dict, {}, check_cameras, "camera tables", resolve_camera_paths),
    }

    def __init__(self, safety: SafetyConfig | None = None, control_period: float = 0.04, *,
                 serial_port: str, baud: int = 1_000_000, calibration: str, loop_rate: float = 200.0,
                 min_loop_fraction: float = 0.25,
                 fast_sync: bool = True, reply_slack: float = 0.02, retries: int = 2,
                 max_bus_errors: int = 5, bus_watchdog: float = 0.1, rest_pose: str = "tuck",
                 torque_off_on_close: bool = True, move_timeout: float = 15.0, cameras: dict | None = None,
                 description: RobotDescription = FETCH):
        self.description = description
        self.period = control_period
        self.cal: Calibration = load_calibration(calibration, description)
        safety = safety or SafetyConfig()
        self.ctl = TargetController(safety, description)
        self.num_robots = 1
        self.cams = Cameras(cameras or {})  # capture threads start once the servo loop runs
        self._shown: dict = {}  # camera -> the frame whose age the last state reported
        self.spec = BackendSpec(kind=self.kind, num_robots=1, channels=dict(CHANNELS),
                                reset_options=dict(RESET_OPTIONS), safety=SafetyParams.of(safety),
                                description=description, realtime_only=True, ready_ee=ready_gripper(),
                                cameras=self.cams.specs())
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
        try:
            self.cams.start()
        except BaseException:
            self.close()
            raise

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

    # -- the control loop --------------------------------------------------------------------
    def _start_loop(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dynamixel-loop", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        name_thread("dynamixel-loop")
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
        if self.cams:
            st["cameras"] = self.cams.status()
            self._shown = {name: cam.latest for name, cam in self.cams.cams.items()}
        return st

    # -- cameras (drivers/cameras.py: each captures on its own thread; nothing here waits) ----
    def check_frames(self, names) -> None:
        """Before anything moves: a camera that is not delivering refuses the request."""
        self.cams.check(names)

    def render(self, cameras, robots=None) -> dict:
        """The latest frame of each camera, the one whose age the state just sampled reported."""
        return self.cams.frames(cameras, self._shown)

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
                "cycles": self.cycles,
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
        self.cams.close()
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


def _unpack(data: bytes) -> tuple[int, int, int]:
    """present_current (2, signed), present_velocity (4, signed), present_position (4, signed)."""
    return (int.from_bytes(data[0:2], "little", signed=True),
            int.from_bytes(data[2:6], "little", signed=True),
            int.from_bytes(data[6:10], "little", signed=True))
