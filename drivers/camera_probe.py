"""`robot-env cameras`: what each camera a config names really delivers, found the way the driver finds
it (the same capture thread), without the servos: its native resolution, the frame rate measured over
a short watch, the rate the device claims, the OpenCV backend, or why it cannot be opened."""
from __future__ import annotations

import logging
import time

from robot_env import config
from robot_env.errors import ConfigError

from .cameras import Camera, camera_settings, describe, setup_cv2


def camera_tables(cfg: dict) -> dict:
    """The config's camera tables; an error naming the backend when it has no camera devices."""
    backend = cfg["server"]["backend"]
    tables = cfg.get(f"server.{backend}", {}).get("cameras")
    if not isinstance(tables, dict):
        raise ConfigError(f"{cfg['source']}: the {backend} backend has no camera devices"
                          + (" (its cameras are rendered: [server.mujoco] cameras)" if backend == "mujoco" else "")
                          + "; the robot's cameras are [server.dynamixel.cameras.<name>] tables")
    return tables


def probe(config_name, seconds: float = 2.0) -> list[dict]:
    """One row per camera: name, device, status, asked (w, h, fps), delivered size, measured fps,
    claimed fps, backend, frames, error."""
    cfg = config.load(config_name)
    settings = camera_settings(camera_tables(cfg))
    cams = [Camera(s) for s in settings]
    logging.getLogger("drivers.cameras").setLevel(logging.CRITICAL)  # each row says what failed
    if cams:
        setup_cv2()
    for cam in cams:
        cam.start()
    t0 = time.monotonic()
    try:
        # watch for `seconds` (a first frame may take a moment: up to open_timeout more)
        limit = seconds + max((s.open_timeout for s in settings), default=0.0)
        while cams and time.monotonic() - t0 < limit:
            waiting = [c for c in cams if c.latest is None and c._state in ("opening", "open")]
            if time.monotonic() - t0 >= seconds and not waiting:
                break
            time.sleep(0.02)
        rows = []
        for cam in cams:
            s, st = cam.settings, cam.status()
            times = tuple(cam._times)  # the last 64 capture times
            measured = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
            rows.append({"name": s.name, "device": describe(s.device), "status": st["status"],
                         "asked": [s.width, s.height, s.fps], "delivered": st["size"], "fps": measured,
                         "claimed_fps": cam.claimed_fps, "backend": cam.backend, "frames": st["frames"],
                         "error": st.get("error", "")})
        return rows
    finally:
        for cam in cams:
            cam.close()


def table(rows: list[dict]) -> str:
    lines = [f"{'camera':<12} {'status':<9} {'asked':<16} {'delivered':<11} {'fps':>6} {'claims':>7}  device / error"]
    for r in rows:
        w, h, fps = r["asked"]
        got = "x".join(map(str, r["delivered"])) if r["delivered"] else "-"
        meas = f"{r['fps']:.1f}" if r["fps"] else "-"
        claim = f"{r['claimed_fps']:.1f}" if r["claimed_fps"] else "-"
        tail = r["device"] + (f" ({r['backend']})" if r["backend"] else "") + (f": {r['error']}" if r["error"] else "")
        asked = f"{w}x{h} @{fps:g}"
        lines.append(f"{r['name']:<12} {r['status']:<9} {asked:<16} {got:<11} {meas:>6} {claim:>7}  {tail}")
    return "\n".join(lines)
