"""Wire format: msgpack maps with a protocol version; numpy arrays as raw little-endian buffers.

An array travels as msgpack ext type 1: one byte dtype code (from a whitelist), one byte ndim, ndim
uint32 dims, then the raw bytes. Nothing is ever pickled. Decoding enforces size limits so a
hostile message costs bounded memory, and every failure is a `RequestError` the server can reply with.

State maps (every reply's `state`, and the PUB stream) carry their float64 vectors packed into one
buffer instead of one ext array each, which is several times cheaper to encode and decode:

- ``"arrays"``: bin, the vectors' raw little-endian float64 values (``<f8``) back to back;
- ``"layout"``: str, ``"name:length"`` pairs separated by spaces, in buffer order, e.g.
  ``"q:11 dq:11 effort:11 target:11 ee:7 ee_vel:6 base:5"``;

every other state field (time, mode, faults, clipped, seq, ts, objects) travels as before. `hello`
announces the server's layout as ``state_layout``; each state names its own, so a state decodes
without a hello. `unpack_state` turns a decoded state back into named read-only float64 views
(``st["q"]``, ...), which is what `RobotClient` returns; `pack_state` is the server's side.
"""
from __future__ import annotations

import struct

import msgpack
import numpy as np

from ..errors import RequestError
from .state import VECTORS

VERSION = 2  # 2: `hello` carries the backend spec; `clipped` is {flag: [robots]} for one robot too
ARRAY_EXT = 1
HARD_MAX_MESSAGE = 1 << 20  # ZMQ_MAXMSGSIZE: larger messages cost the sender its connection
SOFT_MAX_MESSAGE = 256 << 10  # larger messages get an error reply
OPS = ("hello", "reset", "step", "command", "state", "estop", "clear_estop", "reset_faults", "close",
       "acquire", "release")
IDEMPOTENT_OPS = frozenset({"hello", "state"})

_DTYPES = ("<f8", "<f4", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4", "<u2", "|u1", "|b1")
_CODE_OF = {np.dtype(d): i for i, d in enumerate(_DTYPES)}
_DTYPE_OF = [np.dtype(d) for d in _DTYPES]
_MAX_NDIM = 4


def _default(obj):
    if isinstance(obj, np.ndarray):
        code = _CODE_OF.get(obj.dtype)
        if code is None:
            code = _CODE_OF.get(obj.dtype.newbyteorder("<"))
            if code is None:
                raise TypeError(f"dtype {obj.dtype} cannot travel on the wire")
            obj = obj.astype(_DTYPE_OF[code])
        head = struct.pack(f"<BB{obj.ndim}I", code, obj.ndim, *obj.shape)
        return msgpack.ExtType(ARRAY_EXT, head + obj.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _ext_hook(code, data):
    if code != ARRAY_EXT or len(data) < 2:
        raise ValueError(f"unknown ext type {code}")
    dcode, ndim = data[0], data[1]
    if dcode >= len(_DTYPE_OF) or ndim > _MAX_NDIM:
        raise ValueError("bad array header")
    off = 2 + 4 * ndim
    if len(data) < off:
        raise ValueError("truncated array header")
    shape = struct.unpack_from(f"<{ndim}I", data, 2)
    dtype = _DTYPE_OF[dcode]
    n = 1
    for s in shape:
        n *= s
    if n * dtype.itemsize != len(data) - off:
        raise ValueError(f"array payload is {len(data) - off} bytes, shape {shape} needs {n * dtype.itemsize}")
    return np.frombuffer(data, dtype, n, off).reshape(shape)


_packer = msgpack.Packer(default=_default, use_bin_type=True)


def encode(obj) -> bytes:
    return _packer.pack(obj)


def decode(data: bytes):
    """Unpack one message with bounded sizes; raise RequestError('malformed', ...) on anything wrong."""
    if len(data) > SOFT_MAX_MESSAGE:
        raise RequestError("too_large", f"message of {len(data)} bytes exceeds the {SOFT_MAX_MESSAGE}-byte limit")
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=True,
                               max_str_len=64 << 10, max_bin_len=SOFT_MAX_MESSAGE,
                               max_array_len=4096, max_map_len=256, max_ext_len=SOFT_MAX_MESSAGE)
    except RequestError:
        raise
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, StackError, ...)
        raise RequestError("malformed", f"undecodable message: {type(exc).__name__}: {exc}") from None


def parse_request(data: bytes) -> dict:
    """Decode and check the envelope every request shares: {v, op, seq, t?, ...}."""
    msg = decode(data)
    if not isinstance(msg, dict):
        raise RequestError("malformed", f"a request must be a map, got {type(msg).__name__}")
    try:
        return _check_envelope(msg)
    except RequestError as exc:
        # Echo a usable seq so the client can match the error reply instead of timing out on it.
        seq = msg.get("seq")
        exc.seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        raise


def _check_envelope(msg: dict) -> dict:
    # Exact type checks before any comparison: a decoded value may be an ndarray (an ext type), whose
    # `==` is elementwise and whose truth value raises.
    v = msg.get("v")
    if v.__class__ is not int or v != VERSION:
        raise RequestError("version", f"protocol version {_short(v)} is not supported (server speaks {VERSION})")
    op = msg.get("op")
    if op.__class__ is not str or op not in OPS:
        raise RequestError("unknown_op", f"unknown op {_short(op)}; known: {', '.join(OPS)}")
    seq = msg.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise RequestError("malformed", "a request needs an integer 'seq'")
    t = msg.get("t", 0.0)
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        raise RequestError("malformed", "'t' (client send time) must be a number")
    token = msg.get("token")  # the control lease's session token (the server checks its length)
    if token is not None and token.__class__ is not str:
        raise RequestError("bad_request", "'token' (the client's session token) must be a string")
    return msg


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def error_reply(seq, code: str, message: str, t=None) -> bytes:
    return encode({"v": VERSION, "seq": seq, "ok": False, "error": {"code": code, "message": message},
                   "t": t})


# -- packed state ------------------------------------------------------------------------------
# The state's float64 vectors, in wire order (see the module docstring). Others travel unpacked.
STATE_ARRAYS = tuple(VECTORS)  # the one state schema (`state.VECTORS`), in buffer order
_F8 = np.dtype("<f8")  # on a little-endian host, the same object as np.dtype(float)
_tobytes = np.ndarray.tobytes
_LAYOUT_OF: dict = {}  # (names, lengths) -> layout string
_SLICES_OF: dict = {}  # layout string -> (((name, start, stop), ...), nbytes)


def pack_state(st: dict) -> dict:
    """Move the state's 1-D float64 vectors (`STATE_ARRAYS`) into ``arrays`` + ``layout``, in place."""
    names, arrays, key = [], [], []
    for k in STATE_ARRAYS:
        v = st.get(k)
        # `is`: float64 is a singleton dtype; anything else (other dtypes, big-endian) stays unpacked
        if v.__class__ is np.ndarray and v.dtype is _F8 and v.ndim == 1:
            names.append(k)
            arrays.append(v)
            key.append(v.shape[0])
            del st[k]
    if not arrays:
        return st
    key = (*names, *key)
    layout = _LAYOUT_OF.get(key)
    if layout is None:
        layout = _LAYOUT_OF[key] = " ".join(f"{k}:{n}" for k, n in zip(names, key[len(names):]))
    st["arrays"] = b"".join(map(_tobytes, arrays))
    st["layout"] = layout
    return st


def _state_slices(layout):
    slices = _SLICES_OF.get(layout)
    if slices is None:
        if not isinstance(layout, str) or len(layout) > 4096:
            raise ValueError("bad state layout")
        out, start = [], 0
        for item in layout.split():
            name, _, length = item.partition(":")
            if not name or not length.isdigit():
                raise ValueError(f"bad state layout item {item!r}")
            out.append((name, start, start + int(length)))
            start += int(length)
        slices = (tuple(out), 8 * start)
        if len(_SLICES_OF) < 64:
            _SLICES_OF[layout] = slices
    return slices


def unpack_state(st):
    """A decoded state with ``arrays``/``layout`` -> the same dict with named float64 views, in place.

    A state without a layout (an older or foreign server) is returned as it is.
    """
    if st.__class__ is not dict or "layout" not in st:
        return st
    slices, nbytes = _state_slices(st.pop("layout"))
    data = st.pop("arrays", None)
    if data.__class__ is not bytes or len(data) != nbytes:
        raise ValueError(f"state arrays hold {len(data) if isinstance(data, bytes) else 'no'} bytes, "
                         f"the layout needs {nbytes}")
    buf = np.frombuffer(data, _F8)
    for name, a, b in slices:
        st[name] = buf[a:b]
    return st
