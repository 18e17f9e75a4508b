"""`robot-env calibrate`: record zero offsets and joint ranges from the real robot into the calibration file.

Torque is off while you move the arm by hand, so nothing is driven. Step 1: put every joint at
its zero pose (arm straight out, torso down, gripper closed, head level) and press Enter: each
servo's present tick becomes `zero`. Step 2: sweep every joint through the range it may use
and press Enter: the extremes seen become `lower` / `upper` (the safety layer never clips wider
than the URDF limits). The file is edited in place, comments kept; the old one is kept as `.bak`.
"""
from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

from . import control_table as ct
from .bus import DynamixelBus
from .calibration import Calibration, load_calibration

POS = ct.FIELDS["present_position"]


def record(bus: DynamixelBus, cal: Calibration, ask=input, say=print, sample_period: float = 0.02) -> dict:
    """Interactive session; returns {joint: {"zero": ticks, "lower": units, "upper": units}}."""
    joints = [s for s in cal.joints]
    ids = [s.id for s in joints]
    for s in cal.servos:
        bus.write_field(s.id, "torque_enable", 0)
    ask("Torque is OFF. Put every joint at its zero pose (arm straight out, torso down, gripper "
        "closed, head level), then press Enter. ")
    now = _read(bus, ids)
    zeros = {s.joint: now[s.id] for s in joints}
    say("zero ticks: " + ", ".join(f"{j}={t}" for j, t in zeros.items()))
    seen = {s.id: [now[s.id], now[s.id]] for s in joints}
    stop = threading.Event()

    def sample():
        while not stop.wait(sample_period):
            try:
                for sid, t in _read(bus, ids).items():
                    lo_hi = seen[sid]
                    lo_hi[0], lo_hi[1] = min(lo_hi[0], t), max(lo_hi[1], t)
            except Exception:  # a missed sample only narrows the range; the final read below counts
                continue

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        ask("Now move every joint through the whole range it may use, then press Enter. ")
    finally:
        stop.set()
        sampler.join(1.0)
    out = {}
    for s in joints:
        zero = zeros[s.joint]
        a = (seen[s.id][0] - zero) / (s.direction * s.ticks_per_unit)
        b = (seen[s.id][1] - zero) / (s.direction * s.ticks_per_unit)
        out[s.joint] = {"zero": zero, "lower": round(min(a, b), 4), "upper": round(max(a, b), 4)}
        say(f"{s.joint:22s} zero {zero:6d}  range [{min(a, b):+.3f}, {max(a, b):+.3f}]")
    return out


def _read(bus: DynamixelBus, ids) -> dict[int, int]:
    data = bus.sync_read(POS.address, POS.size, ids)
    return {sid: ct.from_bytes(POS, raw) for sid, raw in data.items()}


def update_file(path: str | Path, values: dict) -> Path:
    """Rewrite `zero`, `lower`, `upper` in each [joints.NAME] table, keeping everything else."""
    path = Path(path)
    lines = path.read_text().splitlines(keepends=True)
    out = []
    table = None
    pending: dict = {}

    def flush():
        for key, value in pending.items():
            out.append(f"{key} = {value}\n")
        pending.clear()

    for line in lines:
        m = re.match(r"\s*\[(.+?)\]\s*(#.*)?$", line)
        if m:
            flush()
            name = m.group(1).strip()
            table = name[len("joints."):] if name.startswith("joints.") else None
            pending = dict(values.get(table, {})) if table else {}
            out.append(line)
            continue
        key = re.match(r"\s*(\w+)\s*=", line)
        if table and key and key.group(1) in pending:
            comment = line[line.index("#"):].rstrip("\n") if "#" in line else ""
            out.append(f"{key.group(1)} = {pending.pop(key.group(1))}{'   ' + comment if comment else ''}\n")
            continue
        if table and not line.strip():
            flush()
        out.append(line)
    flush()
    tmp = path.with_suffix(path.suffix + ".new")
    tmp.write_text("".join(out))
    try:
        load_calibration(tmp)  # the result must be a valid calibration before it replaces the old one
    except Exception:
        tmp.unlink()
        raise
    shutil.copyfile(path, path.with_suffix(path.suffix + ".bak"))
    tmp.replace(path)
    return path
