"""Command channels: what a client may ask for, and strict validation of what arrives off the wire.

Validation only *rejects* (wrong type, shape, non-finite, unknown channel): a rejected command is
never partly applied. Out-of-range but well-formed values pass here and are clipped by the safety layer.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import RequestError

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


def parse_command(cmd, supported=None) -> dict:
    """Validate a wire command map into {channel: float | float64 array}; raise RequestError on any fault."""
    if not isinstance(cmd, dict):
        raise RequestError("bad_command", f"command must be a map of channels, got {type(cmd).__name__}")
    if "arm_position" in cmd and "arm_velocity" in cmd:
        raise RequestError("bad_command", "arm_position and arm_velocity are exclusive in one command")
    if "ee_delta" in cmd and ("arm_position" in cmd or "arm_velocity" in cmd):
        raise RequestError("bad_command", "ee_delta cannot be combined with arm_position/arm_velocity")
    out = {}
    for name, value in cmd.items():
        shape = CHANNELS.get(name) if isinstance(name, str) else None
        if shape is None:
            raise RequestError("unknown_channel", f"unknown command channel {name!r}; "
                                                  f"known: {', '.join(CHANNELS)}")
        if supported is not None and name not in supported:
            raise RequestError("unsupported_channel", f"channel {name!r} is not supported by this backend")
        out[name] = _as_vector(name, value, shape)
    return out


# reset option -> shape; the env's `goal` never reaches the server (it is the env's own task state).
RESET_OPTIONS: dict[str, tuple[int, ...]] = {"initial_arm_position": (7,), "initial_torso": ()}


def parse_reset_options(options) -> dict:
    """Validate `reset` options like commands: unknown keys, wrong shapes and non-finite values are refused."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise RequestError("bad_options", f"reset options must be a map, got {type(options).__name__}")
    out = {}
    for name, value in options.items():
        shape = RESET_OPTIONS.get(name) if isinstance(name, str) else None
        if shape is None:
            raise RequestError("bad_options", f"unknown reset option {name!r}; known: {', '.join(RESET_OPTIONS)}")
        try:
            out[name] = _as_vector(name, value, shape)
        except RequestError as exc:
            raise RequestError("bad_options", exc.message) from None
    return out
