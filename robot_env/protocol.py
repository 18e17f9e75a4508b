"""Wire format: msgpack maps with a protocol version; numpy arrays as raw little-endian buffers.

An array travels as msgpack ext type 1: one byte dtype code (from a whitelist), one byte ndim, ndim
uint32 dims, then the raw bytes. Nothing is ever pickled. Decoding enforces size limits so a
hostile message costs bounded memory, and every failure is a `RequestError` the server can reply with.
"""
from __future__ import annotations

import struct

import msgpack
import numpy as np

from .errors import RequestError

VERSION = 1
ARRAY_EXT = 1
HARD_MAX_MESSAGE = 1 << 20  # ZMQ_MAXMSGSIZE: larger messages cost the sender its connection
SOFT_MAX_MESSAGE = 256 << 10  # larger messages get an error reply
OPS = ("hello", "reset", "step", "command", "state", "estop", "clear_estop", "reset_faults", "close")
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
    v = msg.get("v")
    if v != VERSION:
        raise RequestError("version", f"protocol version {v!r} is not supported (server speaks {VERSION})")
    op = msg.get("op")
    if op not in OPS:
        raise RequestError("unknown_op", f"unknown op {op!r}; known: {', '.join(OPS)}")
    seq = msg.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise RequestError("malformed", "a request needs an integer 'seq'")
    t = msg.get("t", 0.0)
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        raise RequestError("malformed", "'t' (client send time) must be a number")
    return msg


def error_reply(seq, code: str, message: str, t=None) -> bytes:
    return encode({"v": VERSION, "seq": seq, "ok": False, "error": {"code": code, "message": message},
                   "t": t})
