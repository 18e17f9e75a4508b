"""What a valid recording record is: the JSON Schemas the recorder writes into every file, and the
one check the reader applies to every record before anything (plot, replay, `Recording`) sees it.

The schemas are data: the recorder registers them as each channel's MCAP schema (Foxglove and the
`mcap` tools show them), and `check_record` interprets the same dicts. They use a small subset of
JSON Schema (``type``, ``properties``, ``required``, ``items``, ``minItems``/``maxItems``, ``enum``,
``minimum``/``maximum``/``exclusiveMinimum``) plus one annotation of ours, ``x-shape``, which JSON
Schema tools ignore: ``"joints"`` means the recording's joint vector (``(J,)``, or ``(N, J)`` on a
batched server of N robots), ``"rows"`` any vector (``(k,)``, or N rows of k).

A JSON "number" is finite: Python's json module accepts ``NaN`` and ``Infinity``, JSON does not.
Times are bounded by MCAP's own clock (uint64 nanoseconds since the epoch: before 2554), joint
values by a bound far beyond any joint's range, sequence numbers by 2**53 (what JSON readers such as
Foxglove hold exactly).

A command record is further checked by the server's own rules (`robot_env.control.commands.parse_command`,
`parse_reset_options` and their batched forms), through `command_request`, which also builds what a
replay re-sends: a record that passes would not be refused as malformed by a server.
"""
from __future__ import annotations

import math
import re

from ..bridge.state import FIELDS as STATE_FIELDS
from ..bridge.state import VECTORS as STATE_VECTORS
from ..control.commands import parse_command, parse_reset_options
from ..errors import RequestError

MAX_SEQ = 2 ** 53 - 1
MAX_TIME = 2 ** 64 / 1e9  # s since the epoch: MCAP's uint64 nanosecond log/publish times end here
MAX_JOINT = 1e6  # rad or m: far outside any joint's range, so a value beyond it is not a measurement
MAX_SEED = 2 ** 64 - 1  # the largest integer the wire (msgpack) carries

_TIME = {"type": "number", "minimum": 0, "maximum": MAX_TIME}
_SEQ = {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}
_JOINT_VALUE = {"type": "number", "minimum": -MAX_JOINT, "maximum": MAX_JOINT}
_JOINTS = {"type": "array", "x-shape": "joints",
           "items": {"type": ["number", "array"], "minimum": -MAX_JOINT, "maximum": MAX_JOINT, "items": _JOINT_VALUE}}
# other vectors: the recorder writes a non-finite value as null (JSON has no NaN)
_VECTOR = {"type": "array", "x-shape": "rows",
           "items": {"type": ["number", "null", "array"], "items": {"type": ["number", "null"]}}}

STATE_SCHEMA = {  # from the one state schema (`bridge.state`), plus what the recorder adds (t_recv)
    "title": "robot_env.State", "type": "object",
    "required": ["seq", "ts", "t_recv", "q"],
    "properties": {
        "seq": {**_SEQ, "description": STATE_FIELDS["seq"]},
        "ts": {**_TIME, "description": STATE_FIELDS["ts"]},
        "t_recv": {**_TIME, "description": "recorder receive time, s since the epoch"},
        "time": {"type": "number", "minimum": -MAX_TIME, "maximum": MAX_TIME, "description": STATE_FIELDS["time"]},
        "mode": {"type": "string", "description": STATE_FIELDS["mode"]},
        "faults": {"type": "array", "description": STATE_FIELDS["faults"]},
        "clipped": {"type": ["array", "object"], "description": STATE_FIELDS["clipped"]},
        "objects": {"type": "object", "description": STATE_FIELDS["objects"]},
        **{name: {**(_JOINTS if exact else _VECTOR), "description": what}
           for name, (_, exact, what) in STATE_VECTORS.items()},
    },
}
COMMAND_SCHEMA = {
    "title": "robot_env.Command", "type": "object",
    "required": ["op", "cseq", "ta"],
    "properties": {
        "op": {"type": "string", "enum": ["step", "command", "reset"]},
        "cmd": {"type": "object", "description": "applied channels (arm_position, ee_delta, gripper, ...)"},
        "robots": {"type": ["array", "null"], "items": {"type": "integer"},
                   "description": "a batched server: the robots the command or reset was for (null: all)"},
        "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SEED},
        "options": {"type": ["object", "null"]},
        "cseq": {**_SEQ, "description": "server command number (consecutive while subscribed)"},
        "t": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_TIME,
              "description": "client send time, s since the epoch"},
        "client_seq": {"type": ["integer", "null"]},
        "ta": {**_TIME, "description": "time the backend applied it, s since the epoch"},
        "after": {**_SEQ, "description": "seq of the last state sampled before it"},
        "t_recv": {**_TIME, "description": "recorder receive time, s since the epoch"},
    },
}
EVENT_SCHEMA = {"title": "robot_env.Event", "type": "object"}
# The file's metadata records (each value JSON-encoded); a field that fails is dropped, not the file.
INFO_SCHEMA = {
    "title": "robot_env.recording", "type": "object",
    "properties": {
        "backend": {"type": ["string", "null"]},
        "clock": {"type": ["string", "null"], "enum": ["lockstep", "realtime", None]},
        "control_period": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "joint_names": {"type": ["array", "null"], "items": {"type": "string"}, "minItems": 1},
        "channels": {"type": ["array", "null"], "items": {"type": "string"}},
        "description_hash": {"type": ["string", "null"]},
        "num_robots": {"type": ["integer", "null"], "minimum": 1, "maximum": 1 << 16},
        # the backend's reset options ({name: shape}): a recording of objects placed by reset replays
        "reset_options": {"type": ["object", "null"]},
        # the scene's geometry ({table: {center, half_size, top}, objects: {name: {shape, size}}}): drawn by --rrd
        "scene_info": {"type": ["object", "null"]},
    },
}
_COUNT = {"type": "integer", "minimum": 0}
_RANGES = {"type": "array", "items": {"type": "array", "items": _SEQ, "minItems": 2, "maxItems": 2}}
SUMMARY_SCHEMA = {
    "title": "robot_env.summary", "type": "object",
    "properties": {
        **{k: _COUNT for k in ("states", "commands", "events", "state_gaps", "states_lost", "command_gaps",
                               "commands_lost", "restarts", "malformed", "tail_lost")},
        "first_state": {**_SEQ, "type": ["integer", "null"]}, "first_command": {**_SEQ, "type": ["integer", "null"]},
        "started": {"type": "number"}, "stopped": {"type": "number"}, "duration": {"type": "number"},
        "reason": {"type": "string"}, "missing_states": _RANGES, "missing_commands": _RANGES,
    },
}


class Invalid(Exception):
    """A record that fails its schema: `reason` is what kind of failure (records are counted by it),
    `detail` the particulars of this one."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# JSON's types by the exact Python class json.loads gives them
_JSON_TYPE = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean",
              type(None): "null"}


def _is_type(value, types) -> bool:
    kind = _JSON_TYPE.get(value.__class__)
    if kind == "number":
        return "number" in types and math.isfinite(value)
    if kind == "integer":  # an integer is a number too, while it fits a float64
        return "integer" in types or "number" in types and -1e308 < value < 1e308
    return kind in types


_A = {"object": "an object", "array": "an array", "string": "a string", "integer": "an integer",
      "number": "a number", "null": "null", "boolean": "a boolean"}


_FLOAT_INT = {float, int}


def _all_numbers(items: dict, value: list) -> bool:
    """The fast path of `validate` for vectors (most of a recording's bytes): True when every element
    passes `items` being numbers in range, null where allowed, or (nested) such vectors. False means
    "check element by element", which finds the failure and names it."""
    types = items.get("type")
    types = (types,) if isinstance(types, str) else types or ()
    if "number" not in types or not set(types) <= {"number", "null", "array"}:
        return False
    lo, hi = items.get("minimum", -1e308), items.get("maximum", 1e308)
    if not value:
        return True
    if set(map(type, value)) <= _FLOAT_INT:  # a plain vector: checked at C speed
        try:
            return all(map(math.isfinite, value)) and lo <= min(value) and max(value) <= hi
        except OverflowError:  # an integer beyond float64
            return False
    nullable, inner = "null" in types, items.get("items") if "array" in types else None
    for v in value:
        if v.__class__ is float or v.__class__ is int:
            if not lo <= v <= hi:  # NaN fails both
                return False
        elif v is None:
            if not nullable:
                return False
        elif v.__class__ is list and inner is not None:
            if not _all_numbers(inner, v):
                return False
        else:
            return False
    return True


def _name(path: str) -> str:
    """The field a reason names, without element indices: records are counted by reason, so
    'q[3]' and 'q[7]' not being numbers is one reason, "'q[]' is not a number"."""
    return repr(re.sub(r"\[\d+\]", "[]", path)) if path else "the record"


def validate(schema: dict, value, dims: dict | None = None, path: str = "") -> None:
    """Check `value` against `schema` (the subset above); raise `Invalid` at the first failure.

    `dims` gives ``x-shape``: ``{"joints": J, "robots": N or None}`` (None: not a batched server).
    """
    types = schema.get("type")
    if types is not None:
        types = (types,) if types.__class__ is str else types
        if not _is_type(value, types):
            if isinstance(value, float) and "number" in types:
                raise Invalid(f"{_name(path)} is not finite", f"{path} = {value}")
            raise Invalid(f"{_name(path)} is not {' or '.join(_A[t] for t in types)}", f"{path} is {_kind(value)}")
    if "enum" in schema and value not in schema["enum"]:
        raise Invalid(f"{_name(path)} is not one of {', '.join(str(e) for e in schema['enum'] if e is not None)}",
                      f"{path} = {_short(value)}")
    cls = value.__class__
    if cls is float or cls is int:
        lo, hi, above = schema.get("minimum"), schema.get("maximum"), schema.get("exclusiveMinimum")
        if (lo is not None and value < lo) or (hi is not None and value > hi) or (above is not None and value <= above):
            raise Invalid(f"{_name(path)} is out of range", f"{path} = {_short(value)}")
    if cls is dict:
        for key in schema.get("required", ()):
            if key not in value:
                raise Invalid(f"{_name(f'{path}.{key}' if path else key)} is missing")
        props = schema.get("properties")
        if props:
            for key, v in value.items():
                sub = props.get(key)
                if sub is not None:
                    validate(sub, v, dims, key if not path else f"{path}.{key}")
    elif cls is list:
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            raise Invalid(f"{_name(path)} has the wrong number of items", f"{path} has {len(value)}")
        items = schema.get("items")
        if items is not None and not _all_numbers(items, value):
            for i, v in enumerate(value):
                validate(items, v, dims, f"{path}[{i}]")
        shape = schema.get("x-shape")
        if shape is not None and dims is not None:
            _check_shape(value, shape, dims, path)


def _check_shape(value: list, kind: str, dims: dict, path: str) -> None:
    got = shape_of(value)
    robots = dims.get("robots")
    if got is None or len(got) != (1 if robots is None else 2) or (robots is not None and got[0] != robots) or (
            kind == "joints" and got[-1] != dims["joints"]):
        last = "k" if kind == "rows" else dims["joints"]
        want = f"({last},)" if robots is None else f"({robots}, {last})"
        raise Invalid(f"{_name(path)} has the wrong shape",
                      f"{path} has shape {got if got is not None else 'ragged'}, not {want}")


def shape_of(value) -> tuple | None:
    """The shape of nested lists of scalars, () for a scalar, None when ragged."""
    if value.__class__ is not list:
        return ()
    if not value:
        return (0,)
    if value[0].__class__ is not list:  # a vector: no element may be a list
        return None if list in map(type, value) else (len(value),)
    inner = shape_of(value[0])
    if inner is None or any(shape_of(v) != inner for v in value[1:]):
        return None
    return (len(value), *inner)


def _kind(value) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), f"{_short(value)}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- records --------------------------------------------------------------------------------------
RECORD_SCHEMAS = {"state": STATE_SCHEMA, "command": COMMAND_SCHEMA, "event": EVENT_SCHEMA}


def check_record(kind: str, msg, dims: dict | None) -> None:
    """Validate one decoded record of a `kind` in `RECORD_SCHEMAS`; a command also by the server's
    rules. Raises `Invalid`."""
    validate(RECORD_SCHEMAS[kind], msg, dims)
    if kind == "command":
        command_request(msg, dims.get("robots") if dims else None, dims.get("reset_options") if dims else None)


def known_reset_options(info: dict) -> dict | None:
    """The recorded backend's reset options as {name: shape}, or None (the default ones) when the
    metadata has none or they are not names of small shapes."""
    raw = info.get("reset_options")
    if not isinstance(raw, dict) or not raw:
        return None
    out = {}
    for name, shape in raw.items():
        if not (isinstance(name, str) and isinstance(shape, list) and len(shape) <= 2
                and all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 64 for n in shape)):
            return None
        out[name] = tuple(shape)
    return out


def command_request(msg: dict, robots: int | None, known: dict | None = None) -> dict:
    """What re-sending a recorded command takes: ``{"cmd": ...}`` for `step`/`command`, ``{"seed": ...,
    "options": ...}`` for `reset`, validated and converted by the server's own parsers (`robots`: the
    batched server's size, None for a one-robot server). Raises `Invalid` where the server would refuse."""
    op = msg.get("op")
    rows = msg.get("robots")
    try:
        if op in ("step", "command"):
            cmd = msg.get("cmd")
            if robots is None:
                if rows is not None:
                    raise RequestError("bad_command", "'robots' is only for a batched server's recording")
                return {"cmd": parse_command(cmd)[0]}
            if not isinstance(cmd, dict):
                raise RequestError("bad_command", f"command must be a map of channels, got {type(cmd).__name__}")
            parsed, idx = parse_command({**cmd, "robots": rows}, None, robots)
            return {"cmd": parsed if idx is None else {**parsed, "robots": idx.tolist()}}
        options = msg.get("options")
        if robots is None:
            if rows is not None:
                raise RequestError("bad_options", "'robots' is only for a batched server's recording")
            return {"seed": msg.get("seed"), "options": parse_reset_options(options, known)[0]}
        if options is not None and not isinstance(options, dict):
            raise RequestError("bad_options", f"reset options must be a map, got {type(options).__name__}")
        parsed, idx = parse_reset_options({**(options or {}), "robots": rows}, known, robots)
        return {"seed": msg.get("seed"), "options": parsed if idx is None else {**parsed, "robots": idx.tolist()}}
    except RequestError as exc:
        what = "'cmd'" if op in ("step", "command") else "'options'"
        raise Invalid(f"{what} would be refused by the server [{exc.code}]", exc.message) from None
    except (OverflowError, ValueError, TypeError) as exc:  # numbers beyond float64, odd nesting
        what = "'cmd'" if op in ("step", "command") else "'options'"
        raise Invalid(f"{what} would be refused by the server [bad_command]", f"{type(exc).__name__}: {exc}") from None


def check_metadata(schema: dict, meta: dict) -> tuple[dict, list[Invalid]]:
    """A metadata record's fields with each invalid one dropped, and what was wrong with them."""
    out, bad = {}, []
    props = schema["properties"]
    for key, value in meta.items():
        if key in props:
            try:
                validate(props[key], value, None, key)
            except Invalid as exc:
                bad.append(exc)
                continue
        out[key] = value
    return out, bad
