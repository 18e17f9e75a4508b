"""Camera frames on the wire: a request's `frames`, checked against the spec; the reply's extra parts.

A `step`, `state` or `reset` request may carry ``frames: [camera names]`` (none by default, so a
state-only client pays nothing). The server checks the names against the cameras its backend
announces before anything moves (`parse_frames`), renders after the step, and sends each camera's
frames as one extra ZeroMQ message part after the msgpack part, raw little-endian bytes, never
copied into msgpack (`reply_parts`). The msgpack reply says where each one is:

    frames: {name: {index: <message part, 1 = the first after the msgpack part>,
                    shape: [n, height, width, channels], dtype: "uint8" | "float32"}}

with ``n`` the server's robots (a one-robot server sends n = 1). The protocol's soft cap (256 KiB)
bounds the msgpack part only; a frame part is bounded by its camera's spec (height × width ×
channels × itemsize × robots), and one reply's frames by `MAX_FRAME_BYTES`. The client
(`decode_frames`) takes the parts as received (``copy=False``) and makes each array with
``np.frombuffer`` on the part's buffer, no copy, after checking the map, the parts and every shape
and dtype against the spec: a truncated or corrupted reply is an error, never an image of garbage.
"""
from __future__ import annotations

import numpy as np

from ..errors import RequestError

FRAME_OPS = frozenset({"step", "state", "reset"})  # the ops that serve frames
MAX_FRAME_NAMES = 16  # cameras in one request (each at most once)
MAX_NAME_LEN = 64
MAX_FRAME_BYTES = 64 << 20  # all the frames of one reply together
_DTYPES = {"uint8": np.dtype("|u1"), "float32": np.dtype("<f4"), "uint16": np.dtype("<u2"),
           "float64": np.dtype("<f8")}  # what a camera's frames may be, by the spec's name


def wire_dtype(name: str) -> np.dtype:
    dt = _DTYPES.get(name)
    if dt is None:
        raise ValueError(f"camera dtype {name!r} cannot travel on the wire; known: {', '.join(_DTYPES)}")
    return dt


def frame_bytes(cam, num_robots: int) -> int:
    """The size of one camera's part: what its spec allows, and exactly what the server sends."""
    return cam.height * cam.width * cam.channels * wire_dtype(cam.dtype).itemsize * num_robots


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_frames(names, cameras: dict, num_robots: int, kind: str) -> tuple | None:
    """A request's `frames` field -> the camera names (a tuple), None when it asks for none.

    Refused (`RequestError`) before anything moves: not a list of strings, duplicates, too many
    (`bad_frames`); a name the spec does not announce, or a backend without cameras
    (`unknown_camera`); more bytes than a reply may carry (`too_large`).
    """
    if names is None:
        return None
    if names.__class__ is not list:
        raise RequestError("bad_frames", f"'frames' must be a list of camera names, got {_short(names)}")
    if not names:
        return None
    if len(names) > MAX_FRAME_NAMES:
        raise RequestError("bad_frames", f"'frames' names {len(names)} cameras; at most {MAX_FRAME_NAMES}")
    for n in names:
        if n.__class__ is not str or not 0 < len(n) <= MAX_NAME_LEN:
            raise RequestError("bad_frames", f"'frames' must hold camera names (strings of 1 to {MAX_NAME_LEN} "
                                             f"characters), got {_short(n)}")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise RequestError("bad_frames", f"'frames' names camera(s) {', '.join(dup)} more than once")
    if not cameras:
        raise RequestError("unknown_camera", f"frames refused: the {kind} backend has no cameras; ask a backend "
                                             "that announces cameras in its hello (mujoco, or the robot with "
                                             "cameras in its config: [server.dynamixel.cameras.<name>])")
    unknown = [n for n in names if n not in cameras]
    if unknown:
        raise RequestError("unknown_camera", f"unknown camera(s) {', '.join(map(_short, unknown))}; the {kind} "
                                             f"backend has {', '.join(cameras)}")
    total = sum(frame_bytes(cameras[n], num_robots) for n in names)
    if total > MAX_FRAME_BYTES:
        raise RequestError("too_large", f"the frames asked for come to {total} bytes for {num_robots} robot(s); "
                                        f"one reply carries at most {MAX_FRAME_BYTES} (ask for fewer cameras)")
    return tuple(names)


def reply_parts(rendered: dict, names: tuple, cameras: dict, num_robots: int) -> tuple[dict, list]:
    """The server's side: a backend's render output -> (the reply's `frames` map, the extra parts).

    Every array must be exactly what the spec announces ((robots, h, w, c), its dtype): anything
    else is a backend bug, raised here rather than sent.
    """
    meta, parts = {}, []
    for name in names:
        cam = cameras[name]
        arr = rendered.get(name)
        shape = (num_robots, cam.height, cam.width, cam.channels)
        dt = wire_dtype(cam.dtype)
        if arr.__class__ is not np.ndarray or arr.shape != shape or arr.dtype != dt:
            got = f"{arr.shape} {arr.dtype}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise RuntimeError(f"the backend rendered camera {name!r} as {got}; its spec says {shape} {cam.dtype}")
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        parts.append(arr)
        meta[name] = {"index": len(parts), "shape": list(shape), "dtype": cam.dtype}
    return meta, parts


def decode_frames(meta, parts: list, cameras: dict | None, num_robots: int | None, asked) -> dict:
    """The client's side: a reply's `frames` map and its extra parts (zmq.Frame, or bytes) ->
    {name: read-only ndarray (n, h, w, c)} viewing the parts' buffers without a copy.

    `cameras` (the hello's spec cameras: name -> {height, width, channels, dtype}) and
    `num_robots` check each shape and dtype when known; `asked`, the names requested, must be
    exactly the names sent. Anything that does not add up is a ValueError.
    """
    if meta.__class__ is not dict:
        raise ValueError(f"the reply's 'frames' must be a map, got {type(meta).__name__}")
    if set(meta) != set(asked):
        raise ValueError(f"asked for frames of {sorted(asked)}, the reply has {sorted(meta)}")
    if len(parts) != len(meta):
        raise ValueError(f"the reply maps {len(meta)} frame part(s) and carries {len(parts)}")
    out, used = {}, set()
    for name, m in meta.items():
        if m.__class__ is not dict:
            raise ValueError(f"frames[{name!r}] must be a map")
        idx, shape, dtname = m.get("index"), m.get("shape"), m.get("dtype")
        if idx.__class__ is not int or not 1 <= idx <= len(parts) or idx in used:
            raise ValueError(f"frames[{name!r}] names part {_short(idx)}; the reply has parts 1..{len(parts)}, "
                             "each used once")
        used.add(idx)
        if (shape.__class__ is not list or len(shape) != 4
                or not all(s.__class__ is int and s > 0 for s in shape)):
            raise ValueError(f"frames[{name!r}] has a bad shape {_short(shape)}")
        if dtname not in _DTYPES:
            raise ValueError(f"frames[{name!r}] has dtype {_short(dtname)}; known: {', '.join(_DTYPES)}")
        if cameras is not None:
            cam = cameras.get(name)
            if cam is None:
                raise ValueError(f"frames of camera {name!r}, which the server's spec does not announce")
            want = [cam["height"], cam["width"], cam["channels"]]
            if shape[1:] != want or dtname != cam["dtype"]:
                raise ValueError(f"frames[{name!r}] is {shape} {dtname}; the spec says (n, {want[0]}, {want[1]}, "
                                 f"{want[2]}) {cam['dtype']}")
        if num_robots is not None and shape[0] != num_robots:
            raise ValueError(f"frames[{name!r}] holds {shape[0]} robot(s); the server hosts {num_robots}")
        dt = _DTYPES[dtname]
        part = parts[idx - 1]
        buf = getattr(part, "buffer", part)  # a zmq.Frame's memoryview: no copy
        need = shape[0] * shape[1] * shape[2] * shape[3] * dt.itemsize
        have = buf.nbytes if buf.__class__ is memoryview else len(buf)
        if have != need:
            raise ValueError(f"frames[{name!r}]: part {idx} holds {have} bytes, {shape} {dtname} needs {need}")
        arr = np.frombuffer(buf, dt).reshape(shape)
        arr.flags.writeable = False
        out[name] = arr
    return out
