"""`robot-env plot FILE.mcap --rrd OUT.rrd`: a recording as a Rerun file, on the recording's own stamps.

Every valid state, applied command and camera frame goes through the same mapping as the live view
(`rerun_log.RerunLog`), so a recording opened in Rerun looks like the session did live. Frames sit on
the state sampled just before them (their ``seq`` and backend time). The file is written next to
`out` and renamed into place when complete: a failed conversion leaves no half-written .rrd.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import Recording, RecordingError, read_recording
from .rerun_log import RerunLog, new_stream


@dataclass
class RrdResult:
    path: Path
    states: int
    commands: int
    frames: dict  # camera -> frames written

    def __str__(self) -> str:
        cams = ", ".join(f"{n} {c} frames" for c, n in self.frames.items())
        return (f"wrote {self.path}: {self.states} states, {self.commands} commands"
                + (f", {cams}" if cams else ""))


def recording_to_rrd(source, out, *, robot: int = 0) -> RrdResult:
    """Convert a recording (a path or a `Recording`) to an .rrd file at `out`."""
    rec = source if isinstance(source, Recording) else read_recording(source)
    if not rec.states:
        raise RecordingError(f"{rec.path}: no valid state recorded; nothing to convert"
                             + (f" ({rec.skip_summary()})" if rec.skipped else ""))
    robots = rec.batch or 1
    if not 0 <= robot < robots:
        raise RecordingError(f"{rec.path}: robot {robot} not recorded; it holds robot(s) 0..{robots - 1}"
                             if robots > 1 else f"{rec.path}: a one-robot recording; there is no robot {robot}")
    out = Path(out)
    if out.is_dir():
        raise RecordingError(f"--rrd {out} is a directory; give an .rrd file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordingError(f"cannot write {out}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK):
        raise RecordingError(f"cannot write {out}: its directory is not writable")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    info = dict(rec.info)
    info.setdefault("num_robots", robots)
    stream = new_stream(recording_id=f"{Path(rec.path).name}")
    try:
        log = RerunLog(stream, info, robot=robot)
        cameras = rec.cameras
        stream.save(tmp, default_blueprint=log.blueprint(cameras))
        log.setup()
        for st in rec.states:
            log.state(st)
        commands = sum(log.command(c) for c in rec.commands)
        ts = rec.array("ts")
        order = np.argsort(ts, kind="stable")
        written = {}
        for cam in cameras:
            times, frames = rec.frames(cam)
            idx = np.clip(np.searchsorted(ts[order], times, side="right") - 1, 0, len(ts) - 1)
            n = 0
            for t, i, frame in zip(times, idx, frames):
                st = rec.states[order[i]]
                n += log.frames({cam: frame}, t, st.get("seq"), st.get("time"))
            written[cam] = n
        log.flush()
        stream.flush(timeout_sec=60.0)
        stream.disconnect()  # closes the file sink: the footer is written
        os.replace(tmp, out)
    except BaseException:
        try:
            stream.disconnect()
        finally:
            tmp.unlink(missing_ok=True)
        raise
    return RrdResult(out, log.states, commands, written)
