"""Calibration: which servo drives which joint, and how ticks map to joint units.

ticks = zero + direction × ticks_per_unit × position. Read from TOML (see the shipped
`fetch_dynamixel_calibration.toml`); every error names the file and the joint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from robot_env.errors import ConfigError
from robot_env.model.description import FETCH, RobotDescription

from . import control_table as ct

MODES = {"position": ct.MODE_POSITION, "extended_position": ct.MODE_EXTENDED_POSITION,
         "current_position": ct.MODE_CURRENT_POSITION, "velocity": ct.MODE_VELOCITY}
MODEL_NUMBERS = {name: number for number, name in ct.MODELS.items()}
TICKS_PER_TURN = 4096


@dataclass(frozen=True)
class JointServo:
    joint: str
    index: int  # position in the description's joint order; -1 for wheels
    id: int
    model: str
    mode: str
    direction: int
    zero: int
    ticks_per_unit: float
    lower: float  # joint units, the tighter of the URDF limit, the calibration and the servo's range
    upper: float
    current_limit: float | None = None  # A

    @property
    def model_number(self) -> int:
        return MODEL_NUMBERS[self.model]

    def to_ticks(self, position: float) -> int:
        return int(round(self.zero + self.direction * self.ticks_per_unit * position))

    def to_units(self, ticks: int) -> float:
        return (ticks - self.zero) / (self.direction * self.ticks_per_unit)

    def tick_limits(self) -> tuple[int, int]:
        a, b = self.to_ticks(self.lower), self.to_ticks(self.upper)
        return min(a, b), max(a, b)


@dataclass(frozen=True)
class Calibration:
    path: str
    joints: tuple[JointServo, ...]  # in description order
    wheels: tuple[JointServo, ...]  # left, right

    @property
    def servos(self) -> tuple[JointServo, ...]:
        return self.joints + self.wheels

    def by_id(self, servo_id: int) -> JointServo:
        for s in self.servos:
            if s.id == servo_id:
                return s
        raise KeyError(servo_id)


def load_calibration(path: str | Path, description: RobotDescription = FETCH) -> Calibration:
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"calibration file {where!r} does not exist")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    unknown = set(raw) - {"joints", "wheels"}
    if unknown:
        raise ConfigError(f"{where}: unknown table(s) {sorted(unknown)}; expected [joints.*] and [wheels.*]")
    tables = raw.get("joints", {})
    joints = []
    for index, joint in enumerate(description.joints):
        t = tables.pop(joint.name, None)
        if t is None:
            raise ConfigError(f"{where}: no [joints.{joint.name}] table")
        joints.append(_servo(where, joint.name, index, t, joint.lower, joint.upper))
    if tables:
        raise ConfigError(f"{where}: [joints] names unknown joints {sorted(tables)}")
    wheel_tables = raw.get("wheels", {})
    if len(wheel_tables) != 2:
        raise ConfigError(f"{where}: [wheels] needs exactly two wheels (left first), got {len(wheel_tables)}")
    wheels = [_servo(where, name, -1, dict(t, mode="velocity"), -math.inf, math.inf)
              for name, t in wheel_tables.items()]
    cal = Calibration(where, tuple(joints), tuple(wheels))
    ids = [s.id for s in cal.servos]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError(f"{where}: servo id(s) {sorted(dup)} used twice")
    return cal


def _servo(where, name, index, t, lower, upper) -> JointServo:
    allowed = {"id", "model", "mode", "direction", "zero", "ticks_per_unit", "lower", "upper", "current_limit"}
    extra = set(t) - allowed
    if extra:
        raise ConfigError(f"{where}: [{name}] unknown key(s) {sorted(extra)}; known: {sorted(allowed)}")

    def get(key, typ, default=None):
        if key not in t:
            if default is None:
                raise ConfigError(f"{where}: [{name}] needs {key!r}")
            return default
        v = t[key]
        if isinstance(v, bool) or not isinstance(v, typ):
            raise ConfigError(f"{where}: [{name}] {key}: wrong type {type(v).__name__}")
        return v

    sid = get("id", int)
    if not 0 <= sid <= 252:
        raise ConfigError(f"{where}: [{name}] id: {sid} is not a valid Dynamixel id (0..252)")
    model = get("model", str)
    if model not in MODEL_NUMBERS:
        raise ConfigError(f"{where}: [{name}] model: {model!r} unknown; known: {sorted(MODEL_NUMBERS)}")
    mode = get("mode", str)
    if mode not in MODES:
        raise ConfigError(f"{where}: [{name}] mode: {mode!r}; expected one of {sorted(MODES)}")
    direction = get("direction", int, 1)
    if direction not in (1, -1):
        raise ConfigError(f"{where}: [{name}] direction must be 1 or -1")
    if mode == "velocity":
        return JointServo(name, index, sid, model, mode, direction, 0, 1.0, lower, upper)
    zero = get("zero", int)
    tpu = float(get("ticks_per_unit", (int, float)))
    if not tpu > 0:
        raise ConfigError(f"{where}: [{name}] ticks_per_unit must be > 0")
    lo = max(lower, float(get("lower", (int, float), lower)))
    hi = min(upper, float(get("upper", (int, float), upper)))
    if mode != "extended_position":
        # A one-turn position mode can only reach ticks 0..4095: narrow the joint range to that.
        ends = sorted(((0 - zero) / (direction * tpu), (TICKS_PER_TURN - 1 - zero) / (direction * tpu)))
        lo, hi = max(lo, ends[0]), min(hi, ends[1])
    if not lo < hi:
        raise ConfigError(f"{where}: [{name}] leaves no range: lower {lo} >= upper {hi}")
    current = t.get("current_limit")
    if current is not None and (isinstance(current, bool) or not isinstance(current, (int, float)) or current <= 0):
        raise ConfigError(f"{where}: [{name}] current_limit must be a positive number (A)")
    return JointServo(name, index, sid, model, mode, direction, zero, tpu, lo, hi,
                      float(current) if current is not None else None)
