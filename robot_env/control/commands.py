"""Command channels: what a client may ask for, and strict validation of what arrives off the wire.

Validation only *rejects* (wrong type, shape, non-finite, unknown channel): a rejected command is
never partly applied. Out-of-range but well-formed values pass here and are clipped by the safety layer.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import RequestError

# channel -> shape (() is a scalar)
CHANNELS: dict[str, tuple[int, ...]] = {
    "arm_position": (7,),
    "arm_velocity": (7,),
    "ee_delta": (3,),
    "gripper": (),
    "torso": (),
    "head": (2,),
    "base_twist": (2,),
}


_NUMBER = (int, float)
_isfinite = math.isfinite


def _as_vector(name: str, value, shape: tuple[int, ...]):
    if shape == ():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind == "f":
                value = float(value)
            else:
                raise RequestError("bad_command", f"channel {name!r} takes a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise RequestError("bad_command", f"channel {name!r} has a non-finite value {value}")
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":
            raise RequestError("bad_command", f"channel {name!r} takes numbers, got dtype {value.dtype}")
        arr = value.astype(np.float64)
        if arr.shape != shape:
            raise RequestError("bad_command", f"channel {name!r} takes shape {shape}, got {arr.shape}")
        values = arr.tolist()  # 1-D here: every channel is a scalar or a vector
    elif isinstance(value, (list, tuple)):
        # a float (the common case, checked first), else an int or float subclass but never a bool
        if not all(v.__class__ is float or (isinstance(v, _NUMBER) and not isinstance(v, bool)) for v in value):
            raise RequestError("bad_command", f"channel {name!r} takes a list of numbers")
        if (len(value),) != shape:
            raise RequestError("bad_command", f"channel {name!r} takes shape {shape}, got {(len(value),)}")
        values = value
        arr = None
    else:
        raise RequestError("bad_command", f"channel {name!r} takes an array of shape {shape}, "
                                          f"got {type(value).__name__}")
    # per element, in plain floats: cheaper than np.isfinite(...).all() for a handful of numbers
    if not all(map(_isfinite, values)):
        if arr is None:
            arr = np.array(values, dtype=np.float64)
        raise RequestError("bad_command", f"channel {name!r} has non-finite values {arr.tolist()}")
    return np.array(values, dtype=np.float64) if arr is None else arr


def _check_channels(cmd, channels) -> None:
    if not isinstance(cmd, dict):
        raise RequestError("bad_command", f"command must be a map of channels, got {type(cmd).__name__}")
    if "arm_position" in cmd and "arm_velocity" in cmd:
        raise RequestError("bad_command", "arm_position and arm_velocity are exclusive in one command")
    if "ee_delta" in cmd and ("arm_position" in cmd or "arm_velocity" in cmd):
        raise RequestError("bad_command", "ee_delta cannot be combined with arm_position/arm_velocity")


def parse_command(cmd, channels=None, num_robots: int = 1) -> tuple[dict, np.ndarray | None]:
    """Validate a wire command map against a backend's `channels` ({name: shape}, from its spec; None:
    every channel) for a server of `num_robots`: ({channel: float | float64 array}, robots).

    One robot: each value is that robot's (a number or a vector) and `robots` is None. N robots:
    each value has a leading robot axis, one row per robot, or per robot listed in the command's
    `robots` (returned as an index array). Raises RequestError on any fault; nothing is converted
    in part.
    """
    _check_channels(cmd, channels)
    robots = None
    if num_robots == 1:
        convert = _as_vector
        items = cmd.items()
    else:
        robots = parse_robots(cmd.get("robots"), num_robots)
        rows = num_robots if robots is None else robots.size

        def convert(name, value, shape):
            return _as_batch(name, value, shape, rows)
        items = ((k, v) for k, v in cmd.items() if k != "robots")
    out = {}
    for name, value in items:
        shape = CHANNELS.get(name) if isinstance(name, str) else None
        if shape is None:
            raise RequestError("unknown_channel", f"unknown command channel {name!r}; "
                                                  f"known: {', '.join(CHANNELS)}")
        if channels is not None and name not in channels:
            raise RequestError("unsupported_channel", f"channel {name!r} is not supported by this backend")
        out[name] = convert(name, value, shape)
    return out, robots


def _as_batch(name: str, value, shape: tuple[int, ...], n: int) -> np.ndarray:
    """A batched channel: an array (or nested list) of numbers of shape (n, *shape), all finite."""
    if isinstance(value, (list, tuple)):
        raw = value
        try:
            value = np.array(raw)
        except ValueError:
            raise RequestError("bad_command", f"channel {name!r} takes shape {(n, *shape)}, got ragged lists") from None
        # numpy turns a bool among numbers into 1.0: refuse it, as the single-robot channels do
        if value.dtype.kind in "fiu" and value.shape == (n, *shape) and any(
                x.__class__ is bool for x in np.array(raw, dtype=object).flat):
            raise RequestError("bad_command", f"channel {name!r} takes numbers, got a bool")
    if not isinstance(value, np.ndarray):
        raise RequestError("bad_command", f"channel {name!r} takes an array of shape {(n, *shape)}, "
                                          f"got {type(value).__name__}")
    if value.dtype.kind not in "fiu":
        raise RequestError("bad_command", f"channel {name!r} takes numbers, got dtype {value.dtype}")
    if value.shape != (n, *shape):
        raise RequestError("bad_command", f"channel {name!r} takes shape {(n, *shape)} (one row per robot), "
                                          f"got {value.shape}")
    arr = value.astype(np.float64)
    if not np.isfinite(arr).all():
        bad = sorted({int(i) for i in np.flatnonzero(~np.isfinite(arr).reshape(n, -1).all(axis=1))})
        raise RequestError("bad_command", f"channel {name!r} has non-finite values for robot(s) {bad[:16]}")
    return arr


def parse_robots(value, n: int) -> np.ndarray | None:
    """A batch request's `robots`: distinct indices in [0, n), or nil for all of them."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in value):
            raise RequestError("bad_request", f"'robots' must be a list of robot indices in 0..{n - 1}")
        value = np.array(value, dtype=np.int64)
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in "iu":
        raise RequestError("bad_request", "'robots' must be a list of robot indices")
    idx = value.astype(np.int64)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= n or np.unique(idx).size != idx.size:
        raise RequestError("bad_request", f"'robots' must name distinct robots in 0..{n - 1}, got {idx.tolist()[:16]}")
    return idx


# reset option -> shape; the env's `goal` never reaches the server (it is the env's own task state).
RESET_OPTIONS: dict[str, tuple[int, ...]] = {"initial_arm_position": (7,), "initial_torso": ()}


def parse_reset_options(options, known=None, num_robots: int = 1) -> tuple[dict, np.ndarray | None]:
    """Validate `reset` options like commands, against a backend's `known` options ({name: shape};
    None: `RESET_OPTIONS`): unknown keys, wrong shapes and non-finite values are refused.

    N robots: `robots` (the ones to reset; nil: all), and each option either once for all of them
    (one robot's shape) or one row per reset robot. Returns (options, robots).
    """
    if options is None:
        return {}, None
    if not isinstance(options, dict):
        raise RequestError("bad_options", f"reset options must be a map, got {type(options).__name__}")
    known = RESET_OPTIONS if known is None else known
    robots = None
    convert = _as_vector
    if num_robots > 1:
        try:
            robots = parse_robots(options.get("robots"), num_robots)
        except RequestError as exc:
            raise RequestError("bad_options", exc.message) from None
        rows = num_robots if robots is None else robots.size

        def convert(name, value, shape):
            if isinstance(value, np.ndarray) and value.ndim == len(shape) + 1 or isinstance(value, list) and (
                    not shape or value and isinstance(value[0], (list, np.ndarray))):
                return _as_batch(name, value, shape, rows)
            return np.broadcast_to(np.asarray(_as_vector(name, value, shape)), (rows, *shape))
    out = {}
    for name, value in options.items():
        if num_robots > 1 and name == "robots":
            continue
        shape = known.get(name) if isinstance(name, str) else None
        if shape is None:
            names = (*(("robots",) if num_robots > 1 else ()), *known)
            raise RequestError("bad_options", f"unknown reset option {name!r}; known: {', '.join(names)}")
        try:
            out[name] = convert(name, value, shape)
        except RequestError as exc:
            raise RequestError("bad_options", exc.message) from None
    return out, robots
