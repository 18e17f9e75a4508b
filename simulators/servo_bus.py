"""A Dynamixel Protocol 2.0 servo bus on a pseudo-terminal: X-series servos without the hardware.

`ServoBusEmulator` opens a pty and answers, from a thread, the instructions a controller sends to
the slave side (`/dev/pts/N`, or a stable symlink) exactly as a bus of real servos would: PING
(also broadcast), READ, WRITE, REG_WRITE + ACTION, REBOOT, FACTORY_RESET, CLEAR, SYNC_READ (one
status packet per servo, in request order), SYNC_WRITE, FAST_SYNC_READ (one packet), BULK_READ,
FAST_BULK_READ and BULK_WRITE, with the status return level, the alert bit and the error codes a
real servo uses.

Each servo holds its control table as bytes, built from `drivers.control_table` (so the driver and
the emulator agree by construction), and moves over time: with torque on, position modes follow a
trapezoidal profile (profile velocity/acceleration; 0 = the velocity limit / infinite
acceleration: then a P position loop, `POSITION_TAU`), velocity mode ramps to the goal velocity; present position, velocity, current and
the moving flags are updated. The bus watchdog (address 98) stops a servo that hears nothing.

Things a real bus does that the emulator reproduces on purpose:
- A packet with a bad CRC gets no reply at all (real servos ignore it).
- The servos listen at their Baud Rate (address 8). The emulator reads the baud rate the driver
  set on the pty (termios) and a servo whose rate differs hears only noise: no reply. So a driver
  opening the bus at the wrong baud sees timeouts, as on hardware.
- A rebooting servo is deaf for `reboot_time` seconds.
- With `timing=True` replies wait for the return delay time (address 9, ×2 µs) and are paced at
  the baud rate (10 bits per byte, the instruction's own bytes included), so rates measured
  against the emulator are the wire-limited rates of a real bus.

Emulator choices where the e-Manual is silent (documented so nobody mistakes them for facts):
- Enabling torque does not move Goal Position to Present Position: a driver must write the goal
  before torque on (which is what avoids a jump on hardware too).
- Writing Torque Enable = 1 while a shutdown hardware error is latched answers result_fail.
- Broadcast PING replies come back in ID order, back to back.
- A WRITE to the ID field is answered from the old ID (what the official SDK waits for); a WRITE
  that lowers the Status Return Level is answered (or not) at the new level.
- The bus watchdog counts any instruction addressed to the servo or broadcast (sync/bulk too). It
  judges silence only on a pass that follows the previous one within `STALL` (20 ms): after this
  emulator's own thread was descheduled, the bytes waiting are read first, as a real servo would
  have heard them on time. So a trip means the driver really sent nothing for that long (to within
  20 ms); it is logged with the silence and the emulator's own longest gap between passes, and
  counted in `stats["watchdog_trips"]`.
- Goal Velocity beyond the Velocity Limit (but within ±1023) is clipped; beyond ±1023 it is a
  data range error, like every value outside a field's range.
- Drive Mode (reverse direction, time-based profile) is stored but not applied; the table ends
  at Present Temperature (147): indirect addresses answer access_error.

Fault injection (thread-safe): `corrupt(rate)`, `drop(rate)`, `delay(seconds)`, `silence(ids)` /
`unsilence(ids)`, `set_hardware_error(id, bits)`, `close_port()` (the adapter unplugged: the pty
master closes, the driver gets EIO) and `reopen()` (a new pty; the `link` symlink is re-pointed).

The emulator keeps its own descriptor on the slave open, so the driver can close and reopen the
port any number of times (a pty master with no slave open reports hang-ups instead of waiting).
"""
from __future__ import annotations

import array
import errno
import fcntl
import logging
import math
import os
import random
import select
import struct
import termios
import threading
import time
import tty

from drivers import control_table as ct
from drivers import protocol2 as p2
from robot_env.bridge.spawn import ChildProcess

log = logging.getLogger("simulators.servo_bus")

F = ct.FIELDS
VEL_TICKS = 0.229 * 4096 / 60  # position ticks/s per velocity unit (0.229 rpm)
ACC_TICKS = 214.577 * 4096 / 3600  # ticks/s² per profile acceleration unit (214.577 rev/min²)
SUBSTEP = 0.002  # s, motion integration step
# Position loop with no acceleration profile: a P controller, velocity = error / τ (capped by the
# profile velocity or the velocity limit), τ = POSITION_TAU at the default Position P Gain (800) and
# inversely proportional to it. A real servo tracks a stream of setpoints smoothly, lagging a little;
# an instant jump to each setpoint would report zero velocity while the horn moves.
POSITION_TAU = 0.015  # s
GOALS = ("goal_pwm", "goal_current", "goal_velocity", "goal_position")
FAST_BULK_READ = 0x9A  # not in protocol2.Inst: only the official SDK sends it

E_RESULT, E_INST, E_CRC, E_RANGE, E_LENGTH, E_LIMIT, E_ACCESS = 1, 2, 3, 4, 5, 6, 7

# byte address -> the field covering it (None for reserved gaps)
_FIELD_AT: list = [None] * ct.TABLE_SIZE
for _f in F.values():
    for _a in range(_f.address, _f.address + _f.size):
        _FIELD_AT[_a] = _f

_DEFAULT_TABLE = bytearray(ct.TABLE_SIZE)
for _f in F.values():
    _DEFAULT_TABLE[_f.address:_f.address + _f.size] = ct.to_bytes(_f, _f.default)

_S16 = struct.Struct("<h")
_S32 = struct.Struct("<i")
_U16 = struct.Struct("<H")

# TCGETS2 (asm-generic: _IOR('T', 0x2A, struct termios2), 44 bytes): the exact line speed, BOTHER too.
_TCGETS2 = 0x802C542A
_BAUD_CONSTANTS = {getattr(termios, f"B{b}"): b for b in (
    9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000,
    1500000, 2000000, 2500000, 3000000, 3500000, 4000000) if hasattr(termios, f"B{b}")}


def line_baud(fd: int) -> int | None:
    """The baud rate the pty's user (the driver) configured, or None if it cannot be read."""
    try:
        buf = array.array("I", [0] * 11)
        fcntl.ioctl(fd, _TCGETS2, buf, True)
        if buf[9]:
            return int(buf[9])
    except OSError:
        pass
    try:
        return _BAUD_CONSTANTS.get(termios.tcgetattr(fd)[4])
    except termios.error:
        return None


STALL = 0.02  # s between motion updates beyond which the emulator itself, not the bus, was silent


class EmulatedServo:
    """One X-series servo: its control table (bytes) and the physical state behind it."""

    def __init__(self, servo_id: int, model: int, baud_code: int, position: int = 2048):
        self.model = model
        self.table = bytearray(_DEFAULT_TABLE)
        self.table[7] = servo_id
        self.table[8] = baud_code
        _U16.pack_into(self.table, 0, model)
        self.pos = float(position)  # ticks, in Present Position's frame (homing offset included)
        self.vel = 0.0  # ticks/s
        self.acc = 0.0  # ticks/s², last step
        self.t_last = time.monotonic()
        self.last_rx = self.t_last  # last instruction heard (bus watchdog)
        self.booting_until = 0.0
        self.registered: tuple[int, bytes] | None = None
        self.wd_error = False
        self.silent = False
        # Test evidence: how often a WRITE (not a reboot or a shutdown) turned this servo's torque off.
        self.torque_off_writes = 0
        self._set_goal_position(int(position))
        self._publish(0.0)

    # -- table access ------------------------------------------------------------------------
    @property
    def id(self) -> int:
        return self.table[7]

    @property
    def baud(self) -> int:
        return ct.BAUD_RATES.get(self.table[8], 57600)

    @property
    def return_delay(self) -> float:
        return self.table[9] * 2e-6

    @property
    def status_return_level(self) -> int:
        return self.table[68]

    def get(self, name: str) -> int:
        f = F[name]
        return ct.from_bytes(f, self.table[f.address:f.address + f.size])

    def set(self, name: str, value: int) -> None:
        """Set a field directly, as the servo itself would (no checks). `present_position` moves
        the horn (as by hand), so motion continues from there."""
        f = F[name]
        self.table[f.address:f.address + f.size] = ct.to_bytes(f, value)
        if name == "present_position":
            self.pos = float(value)

    def _set_goal_position(self, value: int) -> None:
        _S32.pack_into(self.table, 116, value)

    @property
    def alert(self) -> int:
        return p2.ALERT if self.table[70] else 0

    def status(self, error: int = 0, data: bytes = b"") -> bytes:
        return p2.status(self.id, error | self.alert, data)

    # -- instructions ------------------------------------------------------------------------
    def check_write(self, address: int, data: bytes) -> int:
        """The error code a WRITE of `data` at `address` earns, 0 if it is accepted."""
        end = address + len(data)
        if not data:
            return E_LENGTH
        if address < 0 or end > ct.TABLE_SIZE:
            return E_ACCESS
        t = self.table
        torque = t[64]
        a = address
        while a < end:
            f = _FIELD_AT[a]
            if f is None:
                a += 1
                continue
            if f.address < address or f.address + f.size > end:
                return E_LENGTH  # a multi-byte field written in part
            if f.access != "RW" or (f.eeprom and torque):
                return E_ACCESS
            v = ct.from_bytes(f, data[f.address - address:f.address - address + f.size])
            if self.wd_error and f.name in GOALS:
                return E_RANGE  # goals are read-only while the bus watchdog error is latched
            if f.name == "bus_watchdog" and self.wd_error and v != 0:
                return E_RANGE  # only 0 clears the error
            if f.lo is not None and not f.lo <= v <= f.hi:
                return E_RANGE
            if f.name == "operating_mode" and v not in ct.OPERATING_MODES:
                return E_RANGE
            if f.name == "torque_enable" and v and t[70] & t[63]:
                return E_RESULT  # latched shutdown: torque stays off until a reboot
            if f.name == "goal_position" and t[11] == ct.MODE_POSITION:
                lo, hi = self.get("min_position_limit"), self.get("max_position_limit")
                if not lo <= v <= hi:
                    return E_LIMIT
            a = f.address + f.size
        return 0

    def apply_write(self, address: int, data: bytes, now: float) -> None:
        t = self.table
        end = address + len(data)
        old_offset = self.get("homing_offset")
        old_torque = t[64]
        for i, b in enumerate(data):
            if _FIELD_AT[address + i] is not None:
                t[address + i] = b
        if address <= 64 < end:
            if not t[64]:
                self.vel = self.acc = 0.0
                if old_torque:
                    self.torque_off_writes += 1
            elif not old_torque:
                self.last_rx = now
        if address <= 20 < end:
            self.pos += self.get("homing_offset") - old_offset
        if address <= 98 < end and t[98] == 0:
            self.wd_error = False
        self._publish(now)

    def reboot(self, now: float, boot_time: float) -> None:
        """RAM back to defaults, hardware error and watchdog error cleared, torque off."""
        self.table[64:] = _DEFAULT_TABLE[64:]
        self.vel = self.acc = 0.0
        self.wd_error = False
        self.registered = None
        self._set_goal_position(int(round(self.pos)))
        self.booting_until = now + boot_time
        self._publish(now)

    def factory_reset(self, keep: int, now: float, boot_time: float) -> None:
        sid, baud = self.table[7], self.table[8]
        offset = self.get("homing_offset")
        self.table[:] = _DEFAULT_TABLE
        _U16.pack_into(self.table, 0, self.model)
        if keep in (0x01, 0x02):
            self.table[7] = sid
        if keep == 0x02:
            self.table[8] = baud
        self.pos -= offset
        self.reboot(now, boot_time)

    # -- physics -----------------------------------------------------------------------------
    def advance(self, now: float, watchdog: bool = True) -> None:
        dt = now - self.t_last
        if dt <= 0:
            return
        self.t_last = now
        t = self.table
        torque = t[64]
        # dt < STALL: if *this* thread was descheduled, bytes the driver sent meanwhile may still sit
        # unread in the pty; a real servo hears them on time, so judge silence on the next pass.
        if (watchdog and dt < STALL and torque and 0 < t[98] <= 127 and not self.wd_error
                and now - self.last_rx > t[98] * 0.02):
            self._trip_watchdog()
        if not torque:
            if self.vel or self.acc or t[122] or t[126] or t[127]:
                self.vel = self.acc = 0.0
                self._publish(now)
            else:
                _U16.pack_into(t, 120, int(now * 1000) % 32768)
            return
        mode = t[11]
        vlim = self.get("velocity_limit") * VEL_TICKS or 1023 * VEL_TICKS
        pa = self.get("profile_acceleration")
        amax = pa * ACC_TICKS if pa else math.inf
        n = max(1, min(1000, math.ceil(dt / SUBSTEP)))
        h = dt / n
        v0 = self.vel
        if mode in (ct.MODE_POSITION, ct.MODE_EXTENDED_POSITION, ct.MODE_CURRENT_POSITION):
            goal = float(_S32.unpack_from(t, 116)[0])
            if goal == self.pos and self.vel == 0.0:
                if self.acc:
                    self.acc = 0.0
                    self._publish(now)
                else:
                    _U16.pack_into(t, 120, int(now * 1000) % 32768)
                return
            pv = self.get("profile_velocity")
            vmax = min(pv * VEL_TICKS, vlim) if pv else vlim
            kp = self.get("position_p_gain")
            tau = POSITION_TAU * 800.0 / kp if kp else math.inf
            pos, vel = self.pos, self.vel
            for _ in range(n):
                d = goal - pos
                if amax == math.inf:
                    vel = max(-vmax, min(vmax, d / max(tau, h)))
                else:
                    speed = min(vmax, math.sqrt(2.0 * amax * abs(d)), abs(d) / h)
                    v_des = math.copysign(speed, d)
                    dv = max(-amax * h, min(amax * h, v_des - vel))
                    vel += dv
                new = pos + vel * h
                if (goal - new) * d <= 0 or abs(goal - new) < 0.05:  # reached (never crossed: |v| <= |d|/h)
                    new, vel = goal, 0.0
                pos = new
            self.pos, self.vel = pos, vel
        elif mode == ct.MODE_VELOCITY:
            gv = 0.0 if self.wd_error else _S32.unpack_from(t, 104)[0] * VEL_TICKS
            gv = max(-vlim, min(vlim, gv))
            if amax == math.inf:
                self.vel = gv
            else:
                step = amax * dt
                self.vel += max(-step, min(step, gv - self.vel))
            self.pos += 0.5 * (v0 + self.vel) * dt
        else:  # current / PWM control: no load model, the horn stays put
            self.vel = 0.0
        self.acc = (self.vel - v0) / dt
        self._publish(now)

    def _trip_watchdog(self) -> None:
        """The e-Manual: the servo stops, profiles applied as 0, Bus Watchdog reads -1, goals locked."""
        self.wd_error = True
        self.table[98] = 0xFF
        self._set_goal_position(int(round(self.pos)))
        _S32.pack_into(self.table, 104, 0)
        self.vel = self.acc = 0.0

    def _publish(self, now: float) -> None:
        """Present values into the table."""
        t = self.table
        pos = int(round(self.pos))
        pos = max(-2**31, min(2**31 - 1, pos))
        vel_raw = int(round(self.vel / VEL_TICKS))
        _S32.pack_into(t, 132, pos)
        _S32.pack_into(t, 128, vel_raw)
        _S32.pack_into(t, 140, pos)
        _S32.pack_into(t, 136, vel_raw)
        if t[64]:
            # A plausible load: friction in the direction of motion, viscous and inertial terms.
            cur = (15.0 * (1 if self.vel > 0 else -1 if self.vel < 0 else 0) + 0.2 * vel_raw
                   + 2.0 * self.acc / ACC_TICKS)
            lim = self.get("current_limit")
            if t[11] == ct.MODE_CURRENT_POSITION:
                lim = min(lim, abs(self.get("goal_current")))
            cur = int(max(-lim, min(lim, cur)))
        else:
            cur = 0
        _S16.pack_into(t, 126, cur)
        _S16.pack_into(t, 124, int(cur * 0.3))
        moving = abs(vel_raw) > self.get("moving_threshold")
        t[122] = 1 if moving else 0
        goal = _S32.unpack_from(t, 116)[0]
        in_pos = abs(goal - pos) <= self.get("moving_threshold") if t[11] != ct.MODE_VELOCITY else True
        t[123] = (1 if in_pos else 0) | (2 if moving else 0)
        _U16.pack_into(t, 120, int(now * 1000) % 32768)


class ServoBusEmulator:
    """A bus of emulated servos behind a pty. `servos` maps ID -> model number (control_table.MODELS)."""

    TICK = 0.002  # s between motion updates when the bus is idle

    def __init__(self, servos: dict[int, int], *, baud: int = 1_000_000, timing: bool = False,
                 link: str | None = None, initial_positions: dict[int, int] | None = None,
                 reboot_time: float = 0.05, seed: int | None = None):
        if baud not in ct.BAUD_CODES:
            raise ValueError(f"baud {baud} is not a Dynamixel baud rate ({sorted(ct.BAUD_CODES)})")
        for sid, model in servos.items():
            if not 0 <= int(sid) <= p2.MAX_ID:
                raise ValueError(f"servo id {sid} out of range 0..{p2.MAX_ID}")
            if model not in ct.MODELS:
                raise ValueError(f"servo {sid}: unknown model number {model} (known: {ct.MODELS})")
        self.baud = baud
        self.timing = timing
        self.link = os.path.abspath(link) if link else None
        self.reboot_time = reboot_time
        initial_positions = initial_positions or {}
        code = ct.BAUD_CODES[baud]
        self._servos = [EmulatedServo(int(i), m, code, int(initial_positions.get(i, 2048)))
                        for i, m in sorted(servos.items())]
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._corrupt = 0.0
        self._drop = 0.0
        self._delay = 0.0
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name: str | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._wake_r, self._wake_w = -1, -1
        self._commands: list = []
        self._reader = p2.PacketReader()
        self._line_free = 0.0
        self.stats = {"instructions": 0, "replies": 0, "dropped": 0, "corrupted": 0, "crc_errors": 0,
                      "wrong_baud": 0, "overflow": 0, "watchdog_trips": 0}
        self._pass_at = 0.0  # when this thread last ran a pass (its own scheduling, for trip reports)
        self._own_gap = 0.0  # its longest gap between passes since it last heard anything

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> str:
        if self._running:
            return self.path
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._open_pty()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="servo-bus-emulator", daemon=True)
        self._thread.start()
        return self.path

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._wake()
        if self._thread is not None:
            self._thread.join(5.0)
        self._close_pty(remove_link=True)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> "ServoBusEmulator":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def path(self) -> str:
        """Where a driver opens the bus: the stable link if one was given, else the pty slave."""
        return self.link or self._slave_name or ""

    @property
    def slave_name(self) -> str | None:
        return self._slave_name

    def servo(self, servo_id: int) -> EmulatedServo:
        for s in self._servos:
            if s.id == servo_id:
                return s
        raise KeyError(f"no emulated servo with id {servo_id}")

    @property
    def servos(self) -> list[EmulatedServo]:
        return list(self._servos)

    # -- fault injection ---------------------------------------------------------------------
    def corrupt(self, rate: float) -> None:
        """Flip a byte in this fraction of the reply packets."""
        with self._lock:
            self._corrupt = _rate(rate)

    def drop(self, rate: float) -> None:
        """Send no reply for this fraction of the reply packets (the instruction still acts)."""
        with self._lock:
            self._drop = _rate(rate)

    def delay(self, seconds: float) -> None:
        """Hold every reply back by this long (late replies)."""
        if not seconds >= 0:
            raise ValueError("delay must be >= 0 s")
        with self._lock:
            self._delay = float(seconds)

    def silence(self, ids) -> None:
        """These servos stop hearing and answering (a cut cable)."""
        with self._lock:
            for i in _ids(ids):
                self.servo(i).silent = True

    def unsilence(self, ids) -> None:
        with self._lock:
            for i in _ids(ids):
                self.servo(i).silent = False

    def set_hardware_error(self, servo_id: int, bits: int) -> None:
        """Latch Hardware Error Status bits (e.g. 1 << 5 overload); shutdown bits turn torque off."""
        with self._lock:
            s = self.servo(servo_id)
            now = time.monotonic()
            s.advance(now)
            s.table[70] = bits & 0xFF
            if bits & s.table[63]:
                s.table[64] = 0
                s.vel = s.acc = 0.0
            s._publish(now)

    def close_port(self) -> None:
        """The adapter is unplugged: the pty goes away (the driver reads EIO), the link is removed."""
        self._command("close")

    def reopen(self) -> str:
        """Plugged back in: a new pty, the link re-pointed to it. Returns the new path."""
        self._command("open")
        return self.path

    # -- pty plumbing ------------------------------------------------------------------------
    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no CR/NL translation, no XON/XOFF: 0x0D, 0x11, 0x13 pass unaltered
        attrs = termios.tcgetattr(slave)
        attrs[0] &= ~(termios.IXON | termios.IXOFF | termios.ICRNL | termios.INLCR | termios.IGNCR)
        attrs[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._slave_name = os.ttyname(slave)
        self._reader.clear()
        if self.link:
            tmp = f"{self.link}.{os.getpid()}.tmp"
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.symlink(self._slave_name, tmp)
            os.replace(tmp, self.link)

    def _close_pty(self, remove_link: bool) -> None:
        if remove_link and self.link:  # first: once the fds close, a driver may look for the device
            try:
                if os.path.islink(self.link) and os.readlink(self.link) == self._slave_name:
                    os.unlink(self.link)
            except OSError:
                pass
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None

    def _command(self, what: str) -> None:
        """Run a pty change on the emulator thread (it owns the descriptors), and wait for it."""
        if not self._running:
            if what == "close":
                self._close_pty(remove_link=True)
            else:
                self._close_pty(remove_link=False)
                self._open_pty()
            return
        done = threading.Event()
        with self._lock:
            self._commands.append((what, done))
        self._wake()
        if not done.wait(5.0):
            raise RuntimeError(f"servo bus emulator did not complete {what!r}")

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # -- the bus thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while self._running:
            fd = self._master
            rlist = [self._wake_r] if fd is None else [self._wake_r, fd]
            try:
                ready, _, _ = select.select(rlist, [], [], self.TICK)
            except (OSError, ValueError):
                ready = []
            now = time.monotonic()
            if self._commands:
                self._run_commands()
                continue
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
            data = b""
            if fd is not None and fd in ready:
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        log.warning("servo bus emulator: read failed: %s", exc)
                    time.sleep(self.TICK)
            if self._pass_at:
                self._own_gap = max(self._own_gap, now - self._pass_at)
            self._pass_at = now
            with self._lock:
                # Bytes waiting after a stall of *this* thread were heard on time by a real servo:
                # don't let our own lateness trip its bus watchdog (the instructions refresh it).
                self._advance(now, watchdog=not data)
                if data:
                    self._own_gap = 0.0
                    replies = self._on_bytes(data, now, fd)
                else:
                    replies = None
            if replies:
                self._send(replies, now)

    def _run_commands(self) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
        for what, done in commands:
            try:
                if what == "close":
                    self._close_pty(remove_link=True)
                elif what == "open":
                    self._close_pty(remove_link=False)
                    self._open_pty()
            finally:
                done.set()

    def _advance(self, now: float, watchdog: bool = True) -> None:
        tripped = []
        for s in self._servos:
            was, limit = s.wd_error, s.table[98]
            s.advance(now, watchdog)
            if s.wd_error and not was:
                tripped.append((s, limit))
        if tripped:
            # A real servo would have tripped too: every byte sent before this pass's select has been
            # read (a pty's poll waits for the kernel to hand them over), so the driver was silent
            # that long. The emulator's own longest gap between passes says how much of the silence
            # this thread itself spent unscheduled.
            self.stats["watchdog_trips"] += len(tripped)
            log.warning("bus watchdog tripped on servo%s %s: nothing heard for %.0f ms (limit %d ms); this "
                        "emulator's own longest gap between passes meanwhile: %.0f ms",
                        "s" if len(tripped) > 1 else "", ", ".join(str(s.id) for s, _ in tripped),
                        (now - min(s.last_rx for s, _ in tripped)) * 1e3, tripped[0][1] * 20, self._own_gap * 1e3)

    def _on_bytes(self, data: bytes, now: float, fd: int):
        """Parse instructions; returns [(instruction length, [(servo, reply bytes)])] to send."""
        reader = self._reader
        crc_before = reader.crc_errors
        packets = reader.feed(data)
        self.stats["crc_errors"] += reader.crc_errors - crc_before
        if not packets:
            return None
        baud = line_baud(fd)
        out = []
        for pkt in packets:
            if pkt.inst == p2.STATUS:
                continue  # another device's reply (or an adapter's echo)
            self.stats["instructions"] += 1
            hearing = [s for s in self._servos
                       if not s.silent and now >= s.booting_until and (baud is None or s.baud == baud)]
            if baud is not None and len(hearing) < len(self._servos):
                self.stats["wrong_baud"] += sum(1 for s in self._servos if s.baud != baud)
            replies = self._dispatch(pkt, hearing, now)
            out.append((len(pkt.params) + 10, replies))
        return out

    def _dispatch(self, pkt: p2.Packet, hearing: list, now: float) -> list:
        inst, params, target = pkt.inst, pkt.params, pkt.id
        bcast = target == p2.BROADCAST_ID
        by_id = {s.id: s for s in hearing}
        if bcast:
            for s in hearing:
                s.last_rx = now
            addressed = hearing
        else:
            s = by_id.get(target)
            if s is None:
                return []
            s.last_rx = now
            addressed = [s]
        replies: list = []

        def reply(s, err=0, data=b"", level=2, sid=None):
            if s.status_return_level >= level:  # as it is after the instruction (a WRITE to 68 too)
                replies.append((s, p2.status(s.id if sid is None else sid, err | s.alert, data)))

        if inst == p2.Inst.PING:
            for s in sorted(addressed, key=lambda s: s.id):
                replies.append((s, s.status(0, _U16.pack(s.model) + bytes((s.table[6],)))))
        elif inst == p2.Inst.READ:
            if bcast:
                return []
            s = addressed[0]
            if len(params) != 4:
                reply(s, E_LENGTH, level=1)
            else:
                addr, n = struct.unpack("<HH", params)
                if n == 0 or addr + n > ct.TABLE_SIZE:
                    reply(s, E_ACCESS, level=1)
                else:
                    reply(s, 0, bytes(s.table[addr:addr + n]), level=1)
        elif inst in (p2.Inst.WRITE, p2.Inst.REG_WRITE):
            for s in addressed:
                sid = s.id  # a WRITE to the ID field is answered from the old ID
                if len(params) < 3:
                    err = E_LENGTH
                else:
                    addr = params[0] | params[1] << 8
                    data = bytes(params[2:])
                    err = s.check_write(addr, data)
                    if not err:
                        if inst == p2.Inst.WRITE:
                            s.apply_write(addr, data, now)
                        else:
                            s.registered = (addr, data)
                            s.table[69] = 1
                if not bcast:
                    reply(s, err, sid=sid)
        elif inst == p2.Inst.ACTION:
            for s in addressed:
                if s.registered is not None:
                    addr, data = s.registered
                    s.registered = None
                    s.table[69] = 0
                    if not s.check_write(addr, data):
                        s.apply_write(addr, data, now)
                if not bcast:
                    reply(s)
        elif inst == p2.Inst.REBOOT:
            for s in addressed:
                if not bcast:
                    reply(s)
                s.reboot(now, self.reboot_time)
        elif inst == p2.Inst.FACTORY_RESET:
            if bcast:
                return []
            s = addressed[0]
            keep = params[0] if len(params) == 1 else None
            if keep not in (0xFF, 0x01, 0x02):
                reply(s, E_LENGTH if keep is None else E_RANGE)
            elif s.table[64]:
                reply(s, E_ACCESS)
            else:
                reply(s)
                s.factory_reset(keep, now, self.reboot_time)
        elif inst == p2.Inst.CLEAR:
            if bcast:
                return []
            s = addressed[0]
            if params != b"\x01\x44\x58\x4c\x22":
                reply(s, E_RANGE if len(params) == 5 else E_LENGTH)
            elif s.vel != 0.0:
                reply(s, E_RESULT)  # only while stopped
            else:
                s.pos = float(int(round(s.pos)) % 4096)
                s._set_goal_position(int(s.pos))
                s._publish(now)
                reply(s)
        elif inst in (p2.Inst.SYNC_READ, p2.Inst.FAST_SYNC_READ):
            if not bcast or len(params) < 5:
                return []
            addr, n = struct.unpack_from("<HH", params)
            ids = params[4:]
            ok = n > 0 and addr + n <= ct.TABLE_SIZE
            if inst == p2.Inst.SYNC_READ:
                for i in ids:
                    s = by_id.get(i)
                    if s is not None:
                        if ok:
                            reply(s, 0, bytes(s.table[addr:addr + n]), level=1)
                        else:
                            reply(s, E_ACCESS, level=1)
            else:
                replies.extend(self._fast_sync(ids, addr, n, ok, by_id))
        elif inst == p2.Inst.SYNC_WRITE:
            if not bcast or len(params) < 5:
                return []
            addr, n = struct.unpack_from("<HH", params)
            body = params[4:]
            if n == 0 or len(body) % (n + 1):
                return []
            for k in range(0, len(body), n + 1):
                s = by_id.get(body[k])
                if s is not None:
                    data = bytes(body[k + 1:k + 1 + n])
                    if not s.check_write(addr, data):
                        s.apply_write(addr, data, now)
        elif inst == FAST_BULK_READ:
            if not bcast or not params or len(params) % 5:
                return []
            reqs = [struct.unpack_from("<BHH", params, k) for k in range(0, len(params), 5)]
            replies.extend(self._fast_bulk(reqs, by_id))
        elif inst == p2.Inst.BULK_READ:
            if not bcast or not params or len(params) % 5:
                return []
            for k in range(0, len(params), 5):
                i, addr, n = struct.unpack_from("<BHH", params, k)
                s = by_id.get(i)
                if s is not None:
                    if n and addr + n <= ct.TABLE_SIZE:
                        reply(s, 0, bytes(s.table[addr:addr + n]), level=1)
                    else:
                        reply(s, E_ACCESS, level=1)
        elif inst == p2.Inst.BULK_WRITE:
            if not bcast:
                return []
            k = 0
            while k + 5 <= len(params):
                i, addr, n = struct.unpack_from("<BHH", params, k)
                data = bytes(params[k + 5:k + 5 + n])
                k += 5 + n
                s = by_id.get(i)
                if s is not None and len(data) == n and not s.check_write(addr, data):
                    s.apply_write(addr, data, now)
        else:
            if not bcast:
                reply(addressed[0], E_INST)
        return replies

    def _fast_sync(self, ids: bytes, addr: int, n: int, ok: bool, by_id: dict) -> list:
        """One FAST_SYNC_READ status packet. The servos build it in turn on the wire, so a missing
        servo cuts it short at its slot (the driver sees a packet that never completes)."""
        entries = []
        missing_at = None
        for k, i in enumerate(ids):
            s = by_id.get(i)
            if s is None or s.status_return_level < 1:
                if missing_at is None:
                    missing_at = k
                entries.append((0, i, bytes(n)))
            elif ok:
                entries.append((s.alert, i, bytes(s.table[addr:addr + n])))
            else:
                entries.append((E_ACCESS | s.alert, i, bytes(n)))
        if not entries:
            return []
        raw = p2.fast_sync_status(entries)
        first = by_id.get(ids[0])
        if missing_at is not None:
            if missing_at == 0:
                return []
            raw = raw[:8 + missing_at * (n + 4)]
        return [(first, raw)]

    def _fast_bulk(self, reqs: list, by_id: dict) -> list:
        """One FAST_BULK_READ status packet (0x9A, as the official SDK's fastBulkRead() sends):
        entries `ERR ID DATA CRC` in request order, each servo its own address and length."""
        entries, cut, pos = [], None, 8
        for i, addr, n in reqs:
            s = by_id.get(i)
            if s is None or s.status_return_level < 1:
                cut = pos if cut is None else cut
                entries.append((0, i, bytes(n)))
            elif n and addr + n <= ct.TABLE_SIZE:
                entries.append((s.alert, i, bytes(s.table[addr:addr + n])))
            else:
                entries.append((E_ACCESS | s.alert, i, bytes(n)))
            pos += n + 4
        raw = p2.fast_sync_status(entries)
        if cut is not None:
            raw = raw[:cut]
        first = by_id.get(reqs[0][0])
        return [(first, raw)] if raw and first is not None else []

    def _send(self, batches, t_rx: float) -> None:
        """Write the replies, with the faults and (timing=True) the wire time of a real bus."""
        with self._lock:
            corrupt, drop, delay = self._corrupt, self._drop, self._delay
            rng = self._rng
            fd = self._master
        if fd is None:
            return
        bit = 10.0 / self.baud
        if delay:
            time.sleep(delay)
        for instr_len, replies in batches:
            # On the wire: the instruction (after whatever was still on the line), then each
            # servo's return delay and status packet in turn.
            t = max(t_rx, self._line_free) + instr_len * bit
            chunks = []
            for s, data in replies:
                if drop and rng.random() < drop:
                    self.stats["dropped"] += 1
                    continue
                if corrupt and rng.random() < corrupt:
                    data = bytearray(data)
                    data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
                    data = bytes(data)
                    self.stats["corrupted"] += 1
                self.stats["replies"] += 1
                t += s.return_delay + len(data) * bit
                chunks.append(data)
            self._line_free = t
            if chunks:
                if self.timing:
                    # One sleep to the end of the last reply, then all of it: never earlier than
                    # a real bus (a per-packet sleep would add the OS's wake-up latency each time).
                    _sleep_until(t)
                self._write(fd, b"".join(chunks))

    def _write(self, fd: int, data: bytes) -> None:
        try:
            n = os.write(fd, data)
            if n < len(data):
                self.stats["overflow"] += 1  # nobody is reading: the rest is lost, as on a wire
        except BlockingIOError:
            self.stats["overflow"] += 1
        except OSError:
            pass  # the port was closed under us


def _sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def _rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    return rate


def _ids(ids) -> list[int]:
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


# -- configuration and remote control (the `robot-env emulate-bus` command) ---------------------


def servos_from_config(name_or_path: str) -> tuple[dict[int, int], dict[int, int], int]:
    """(servos {id: model number}, initial positions {id: ticks}, baud) from a config.

    Either a robot-env config whose `[server.dynamixel] calibration` is read with the driver's own
    calibration loader (each servo starts at its `zero`: joints at 0, wheels still), or a small
    TOML with a `[servos]` table of `"id" = "MODEL"` (and optionally `[server.dynamixel] baud`).
    """
    from drivers.calibration import MODEL_NUMBERS, load_calibration
    from robot_env import config
    from robot_env.errors import ConfigError
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = config.resolve(name_or_path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if "servos" in raw:
        servos = {}
        for key, model in raw.pop("servos").items():
            if not str(key).isdigit():
                raise ConfigError(f"{path}: [servos] {key!r}: keys are servo ids")
            number = model if isinstance(model, int) and model in ct.MODELS else MODEL_NUMBERS.get(model)
            if number is None:
                raise ConfigError(f"{path}: [servos] {key}: unknown model {model!r}; "
                                  f"known: {sorted(MODEL_NUMBERS)} or their model numbers")
            servos[int(key)] = number
        baud = raw.get("server", {}).get("dynamixel", {}).get("baud", 1_000_000)
        return servos, {}, int(baud)
    cfg = config.load(path)
    dyn = cfg["server.dynamixel"]
    cal = load_calibration(dyn["calibration"])
    servos = {s.id: s.model_number for s in cal.servos}
    initial = {s.id: (s.zero if s.mode != "velocity" else 0) for s in cal.servos}
    return servos, initial, dyn["baud"]


CONTROL_OPS = ("corrupt", "drop", "delay", "silence", "unsilence", "set_hardware_error", "close_port",
               "reopen", "field", "set_field", "status")


def control_reply(emu: ServoBusEmulator, msg: dict) -> dict:
    """Apply one remote-control request {"op": ..., ...} to the emulator; the reply map."""
    try:
        op = msg.get("op") if isinstance(msg, dict) else None
        if op == "corrupt":
            emu.corrupt(msg["rate"])
        elif op == "drop":
            emu.drop(msg["rate"])
        elif op == "delay":
            emu.delay(msg["seconds"])
        elif op == "silence":
            emu.silence(msg["ids"])
        elif op == "unsilence":
            emu.unsilence(msg["ids"])
        elif op == "set_hardware_error":
            emu.set_hardware_error(int(msg["id"]), int(msg["bits"]))
        elif op == "close_port":
            emu.close_port()
        elif op == "reopen":
            return {"ok": True, "path": emu.reopen()}
        elif op == "field":
            with emu._lock:
                return {"ok": True, "value": emu.servo(int(msg["id"])).get(msg["name"])}
        elif op == "set_field":
            with emu._lock:
                emu.servo(int(msg["id"])).set(msg["name"], int(msg["value"]))
        elif op == "status":
            with emu._lock:
                off = {s.id: s.torque_off_writes for s in emu.servos}
            return {"ok": True, "path": emu.path, "ids": [s.id for s in emu.servos], "stats": dict(emu.stats),
                    "torque_off_writes": off}
        else:
            return {"ok": False, "error": f"unknown op {op!r}; known: {', '.join(CONTROL_OPS)}"}
        return {"ok": True}
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def serve_control(emu: ServoBusEmulator, endpoint: str, stop: threading.Event) -> None:
    """Answer control requests on a zmq REP socket until `stop` is set (msgpack maps both ways)."""
    import msgpack
    import zmq
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 16)
    sock.bind(endpoint)
    try:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            raw = sock.recv()
            try:
                msg = msgpack.unpackb(raw, raw=False, max_bin_len=1 << 16, max_str_len=1 << 16)
            except Exception as exc:  # noqa: BLE001  (any undecodable request gets an error reply)
                reply = {"ok": False, "error": f"not a msgpack map: {exc}"}
            else:
                reply = control_reply(emu, msg)
            sock.send(msgpack.packb(reply, use_bin_type=True))
    finally:
        sock.close(0)


class EmulatorControl:
    """Client side of `--control`: `EmulatorControl(endpoint).call("drop", rate=0.5)`."""

    def __init__(self, endpoint: str, timeout: float = 5.0):
        import zmq
        self._zmq = zmq
        self.endpoint = endpoint
        self.timeout = timeout
        self._sock = zmq.Context.instance().socket(zmq.REQ)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)

    def call(self, op: str, **kw) -> dict:
        import msgpack
        self._sock.send(msgpack.packb({"op": op, **kw}, use_bin_type=True))
        if not self._sock.poll(int(self.timeout * 1000)):
            raise TimeoutError(f"emulator control at {self.endpoint} did not answer {op!r}")
        reply = msgpack.unpackb(self._sock.recv(), raw=False)
        if not reply.get("ok"):
            raise RuntimeError(f"emulator control {op!r}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        self._sock.close(0)


class EmulatorProcess(ChildProcess):
    """`robot-env emulate-bus` as a child process that dies with us: `.path`, `.control`, `.close()`.

    For tests and demos that want the bus emulator outside their own process (so it does not
    share their CPU time or GIL), e.g. `EmulatorProcess("fetch_dynamixel", control=True)`.
    """

    def __init__(self, config: str, *, link: str | None = None, timing: bool = False,
                 control: bool | str = False, baud: int | None = None, ready_timeout: float = 20.0):
        from robot_env.bridge.endpoints import private_ipc
        self.control = None
        self.control_endpoint = None
        if control:
            self.control_endpoint = control if isinstance(control, str) else private_ipc()[0]
        args = ["emulate-bus", "--config", str(config)]
        if link:
            args += ["--link", str(link)]
        if timing:
            args.append("--timing")
        if baud:
            args += ["--baud", str(baud)]
        if self.control_endpoint:
            args += ["--control", self.control_endpoint]
        super().__init__(args, "robot-env emulate-bus")
        self.path = self.wait_line(ready_timeout)  # its first line is the device path
        self.control = EmulatorControl(self.control_endpoint) if self.control_endpoint else None

    def close(self, timeout: float = 5.0) -> int | None:
        if self.control is not None:
            self.control.close()
            self.control = None
        return super().close(timeout)

    def __enter__(self) -> "EmulatorProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
