"""Setting the servos up for the driver's loop without ever dropping one: start-up and re-joining.

A servo found with torque off (fresh, power-cycled, rebooted) gets its EEPROM written as calibrated;
one found with torque on (it holds the arm: the last driver died) keeps it, and its EEPROM is checked
instead (writing it would need torque off). `DynamixelBackend` mixes this in.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

from robot_env.control.targets import Kinematics
from robot_env.errors import ConfigError
from robot_env.model.description import NJ

from . import control_table as ct
from .bus import BusTimeout
from .calibration import MODES, JointServo
from .loop_health import DRIVE_MODE_REVERSE, STARTUP_PING_PATIENCE, WHEEL_RAW_MAX

log = logging.getLogger("drivers.hardware")
F = ct.FIELDS
_VEL_UNIT = F["present_velocity"].unit
_CUR_UNIT = F["present_current"].unit


class ServoSetup:
    """Start-up and per-servo set-up, for `DynamixelBackend` (which owns the bus and the state)."""

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
