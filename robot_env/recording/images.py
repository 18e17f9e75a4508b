"""Camera frames in a recording: Foxglove's `foxglove.RawImage`, JSON-encoded, so Foxglove and the
MCAP tools show them as images (a topic per camera, `/camera/<name>`).

The JSON encoding carries the pixels base64-encoded (Foxglove's rule for bytes fields in JSON);
`rgb8` for RGB frames, `32FC1` for depth in metres. Reading checks that the pixels are as many as
width × height × channels say: a frame that is not is skipped, not decoded into garbage.
"""
from __future__ import annotations

import base64
import math

import numpy as np

CAMERA_TOPIC = "/camera/"
# Foxglove's RawImage schema (foxglove-sdk schemas/jsonschema/RawImage.json), as this recorder writes it
RAW_IMAGE_SCHEMA = {
    "title": "foxglove.RawImage", "type": "object",
    "description": "A raw image",
    "properties": {
        "timestamp": {"type": "object", "title": "time", "properties": {
            "sec": {"type": "integer", "minimum": 0}, "nsec": {"type": "integer", "minimum": 0, "maximum": 999999999}}},
        "frame_id": {"type": "string", "description": "Frame of reference for the image"},
        "width": {"type": "integer", "minimum": 0, "description": "Image width"},
        "height": {"type": "integer", "minimum": 0, "description": "Image height"},
        "encoding": {"type": "string", "description": "Encoding of the raw image data"},
        "step": {"type": "integer", "minimum": 0, "description": "Byte length of a single row"},
        "data": {"type": "string", "contentEncoding": "base64", "description": "Raw image data"},
    },
}
_ENCODINGS = {("uint8", 3): "rgb8", ("uint8", 1): "mono8", ("float32", 1): "32FC1"}
_DECODINGS = {"rgb8": (np.uint8, 3), "mono8": (np.uint8, 1), "32FC1": (np.dtype("<f4"), 1)}


def encode_frame(frame: np.ndarray, t: float, frame_id: str) -> dict:
    """One (h, w, c) frame as a RawImage message."""
    frame = np.ascontiguousarray(frame)
    h, w, c = frame.shape
    enc = _ENCODINGS.get((frame.dtype.name, c))
    if enc is None:
        raise ValueError(f"cannot record a {frame.dtype} frame of {c} channels (rgb8, mono8 or 32FC1 only)")
    if frame.dtype == np.float32:
        frame = frame.astype("<f4", copy=False)
    sec = math.floor(t)
    return {"timestamp": {"sec": int(sec), "nsec": int((t - sec) * 1e9) % 1_000_000_000}, "frame_id": frame_id,
            "width": w, "height": h, "encoding": enc, "step": w * c * frame.dtype.itemsize,
            "data": base64.b64encode(frame.tobytes()).decode("ascii")}


def decode_frame(msg: dict) -> np.ndarray:
    """A RawImage message back to its (h, w, c) array; ValueError for one that does not add up."""
    try:
        dtype, c = _DECODINGS[msg["encoding"]]
        h, w = int(msg["height"]), int(msg["width"])
        raw = base64.b64decode(msg["data"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a recorded frame: {type(exc).__name__}: {exc}") from None
    dtype = np.dtype(dtype)
    if h <= 0 or w <= 0 or len(raw) != h * w * c * dtype.itemsize:
        raise ValueError(f"a {msg.get('encoding')} frame of {w}x{h} holds {len(raw)} bytes")
    return np.frombuffer(raw, dtype).reshape(h, w, c)
