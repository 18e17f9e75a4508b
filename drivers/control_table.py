"""The Dynamixel X-series (XM430/XM540) control table as data: address, size, access, area, unit.

One table serves the driver (what to read/write and how to convert) and the bus emulator (what a
servo holds), so both agree by construction. Values are little-endian; signed where `signed`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str
    address: int
    size: int
    access: str  # "R" or "RW"
    default: int = 0
    signed: bool = False
    unit: float = 1.0  # SI per raw count (rad, rad/s, A, V, °C, s)
    lo: int | None = None  # writable range (data range error outside)
    hi: int | None = None

    @property
    def eeprom(self) -> bool:
        """EEPROM fields (below 64) are writable only while torque is off."""
        return self.address < 64


RPM = 2 * math.pi / 60
TICK = 2 * math.pi / 4096  # rad per position tick (4096 per turn)

_FIELDS = (
    Field("model_number", 0, 2, "R", 1020),
    Field("model_information", 2, 4, "R"),
    Field("firmware_version", 6, 1, "R", 45),
    Field("id", 7, 1, "RW", 1, lo=0, hi=252),
    Field("baud_rate", 8, 1, "RW", 1, lo=0, hi=7),
    Field("return_delay_time", 9, 1, "RW", 250, unit=2e-6, lo=0, hi=254),
    Field("drive_mode", 10, 1, "RW", 0, lo=0, hi=13),
    Field("operating_mode", 11, 1, "RW", 3, lo=0, hi=16),
    Field("secondary_id", 12, 1, "RW", 255, lo=0, hi=255),
    Field("protocol_type", 13, 1, "RW", 2, lo=1, hi=2),
    Field("homing_offset", 20, 4, "RW", 0, signed=True, unit=TICK, lo=-1044479, hi=1044479),
    Field("moving_threshold", 24, 4, "RW", 10, unit=0.229 * RPM, lo=0, hi=1023),
    Field("temperature_limit", 31, 1, "RW", 80, unit=1.0, lo=0, hi=100),
    Field("max_voltage_limit", 32, 2, "RW", 160, unit=0.1, lo=95, hi=160),
    Field("min_voltage_limit", 34, 2, "RW", 95, unit=0.1, lo=95, hi=160),
    Field("pwm_limit", 36, 2, "RW", 885, lo=0, hi=885),
    Field("current_limit", 38, 2, "RW", 1193, unit=2.69e-3, lo=0, hi=2047),
    Field("velocity_limit", 44, 4, "RW", 200, unit=0.229 * RPM, lo=0, hi=1023),
    Field("max_position_limit", 48, 4, "RW", 4095, unit=TICK, lo=0, hi=4095),
    Field("min_position_limit", 52, 4, "RW", 0, unit=TICK, lo=0, hi=4095),
    Field("shutdown", 63, 1, "RW", 52, lo=0, hi=255),
    Field("torque_enable", 64, 1, "RW", 0, lo=0, hi=1),
    Field("led", 65, 1, "RW", 0, lo=0, hi=1),
    Field("status_return_level", 68, 1, "RW", 2, lo=0, hi=2),
    Field("registered_instruction", 69, 1, "R"),
    Field("hardware_error_status", 70, 1, "R"),
    Field("velocity_i_gain", 76, 2, "RW", 1920, lo=0, hi=16383),
    Field("velocity_p_gain", 78, 2, "RW", 100, lo=0, hi=16383),
    Field("position_d_gain", 80, 2, "RW", 0, lo=0, hi=16383),
    Field("position_i_gain", 82, 2, "RW", 0, lo=0, hi=16383),
    Field("position_p_gain", 84, 2, "RW", 800, lo=0, hi=16383),
    Field("bus_watchdog", 98, 1, "RW", 0, unit=0.02, lo=0, hi=127),
    Field("goal_pwm", 100, 2, "RW", 0, signed=True, lo=-885, hi=885),
    Field("goal_current", 102, 2, "RW", 0, signed=True, unit=2.69e-3, lo=-2047, hi=2047),
    Field("goal_velocity", 104, 4, "RW", 0, signed=True, unit=0.229 * RPM, lo=-1023, hi=1023),
    Field("profile_acceleration", 108, 4, "RW", 0, unit=214.577 * RPM / 60, lo=0, hi=32767),
    Field("profile_velocity", 112, 4, "RW", 0, unit=0.229 * RPM, lo=0, hi=32767),
    Field("goal_position", 116, 4, "RW", 0, signed=True, unit=TICK, lo=-1048575, hi=1048575),
    Field("realtime_tick", 120, 2, "R", unit=1e-3),
    Field("moving", 122, 1, "R"),
    Field("moving_status", 123, 1, "R"),
    Field("present_pwm", 124, 2, "R", signed=True),
    Field("present_current", 126, 2, "R", signed=True, unit=2.69e-3),
    Field("present_velocity", 128, 4, "R", signed=True, unit=0.229 * RPM),
    Field("present_position", 132, 4, "R", signed=True, unit=TICK),
    Field("velocity_trajectory", 136, 4, "R", signed=True, unit=0.229 * RPM),
    Field("position_trajectory", 140, 4, "R", signed=True, unit=TICK),
    Field("present_input_voltage", 144, 2, "R", 120, unit=0.1),
    Field("present_temperature", 146, 1, "R", 30, unit=1.0),
)

FIELDS: dict[str, Field] = {f.name: f for f in _FIELDS}
BY_ADDRESS: dict[int, Field] = {f.address: f for f in _FIELDS}
TABLE_SIZE = 147 + 1  # through present_temperature

# Operating modes (address 11)
MODE_CURRENT = 0
MODE_VELOCITY = 1
MODE_POSITION = 3
MODE_EXTENDED_POSITION = 4
MODE_CURRENT_POSITION = 5
MODE_PWM = 16
OPERATING_MODES = {MODE_CURRENT, MODE_VELOCITY, MODE_POSITION, MODE_EXTENDED_POSITION,
                   MODE_CURRENT_POSITION, MODE_PWM}

# Hardware Error Status bits (address 70)
HARDWARE_ERRORS = {0: "input_voltage", 2: "overheating", 3: "motor_encoder", 4: "electrical_shock",
                   5: "overload"}

# Baud Rate field (address 8) -> bits per second
BAUD_RATES = {0: 9600, 1: 57600, 2: 115200, 3: 1_000_000, 4: 2_000_000, 5: 3_000_000, 6: 4_000_000,
              7: 4_500_000}
BAUD_CODES = {v: k for k, v in BAUD_RATES.items()}

MODELS = {1020: "XM430-W350", 1030: "XM430-W210", 1120: "XM540-W270", 1130: "XM540-W150"}


def hardware_error_names(status: int) -> list[str]:
    return [name for bit, name in HARDWARE_ERRORS.items() if status & (1 << bit)]


def to_bytes(field: Field, value: int) -> bytes:
    return int(value).to_bytes(field.size, "little", signed=field.signed)


def from_bytes(field: Field, data: bytes) -> int:
    return int.from_bytes(data[:field.size], "little", signed=field.signed)


def span(*names: str) -> tuple[int, int]:
    """(address, length) covering consecutive fields, for one sync/bulk read of several of them."""
    fs = sorted((FIELDS[n] for n in names), key=lambda f: f.address)
    start = fs[0].address
    return start, fs[-1].address + fs[-1].size - start
