"""One emulated X-series servo: its control table (bytes, from `drivers.control_table`) and the
physics behind it (position loop, profiles, velocity mode, the bus watchdog, errors)."""
from __future__ import annotations

import logging
import math
import struct
import time

from drivers import control_table as ct
from drivers import protocol2 as p2

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
