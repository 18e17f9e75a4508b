"""The robot's cameras: one capture thread per camera, so a slow or hung device never stalls the
server or the servo loop.

Each camera is a device OpenCV opens (`cv2.VideoCapture`): a V4L2 index (`device = 0`), a device
path (`"/dev/video0"`), or a video file standing in for one (relative to the config file; what the
tests and demos use). The thread reads frames as the device delivers them, converts them to RGB,
resizes them to the announced size and keeps only the latest, with its capture time on the
monotonic clock. The server reads that snapshot (no lock, no wait): frame age and health go in the
state, and a request for the frames of a camera that is not delivering gets a clear error. Nothing
here touches the arm: a camera that fails is reported, never a fault that stops the servos.

A regular file is delivered at the camera's `fps`, as a live camera would, and by default starts over
at its end (`loop = true`): it stands in for a camera that does not end. With `loop = false` its end
is the end of the stream, and the camera reports `ended` from then on. A device whose read fails is
released and reopened every `REOPEN_INTERVAL` seconds (an unplugged USB camera comes back).
"""
from __future__ import annotations

import collections
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass

import numpy as np

from robot_env.errors import ConfigError, RequestError

from .loop_health import name_thread

log = logging.getLogger("drivers.cameras")

REOPEN_INTERVAL = 1.0  # s between attempts to (re)open a device that failed
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_num = (int, float)

# One camera's table, [server.dynamixel.cameras.<name>]: key -> (type(s), default, check, what it wants)
CAMERA_KEYS: dict[str, tuple] = {
    "device": ((int, str), None, lambda v: (v >= 0) if isinstance(v, int) else bool(v),
               "a V4L2 index (0, 1, ...), a device path (/dev/video0) or a video file (relative to the config)"),
    "width": (int, 640, lambda v: 8 <= v <= 4096, "between 8 and 4096 pixels"),
    "height": (int, 480, lambda v: 8 <= v <= 4096, "between 8 and 4096 pixels"),
    "fps": (_num, 30.0, lambda v: 1 <= v <= 240, "between 1 and 240 frames/s"),
    "loop": (bool, True, None, "true or false (a video file: start over at its end, or report it ended)"),
    "stall_timeout": (_num, 1.0, lambda v: 0.05 <= v <= 60, "between 0.05 and 60 s without a new frame"),
    "open_timeout": (_num, 5.0, lambda v: 0 <= v <= 60, "between 0 and 60 s the start-up waits for a first frame"),
    "fourcc": (str, "", lambda v: v == "" or len(v) == 4, "'' (the device's default) or 4 characters, e.g. 'MJPG'"),
}


@dataclass(frozen=True)
class CameraSettings:
    name: str
    device: int | str
    width: int
    height: int
    fps: float
    loop: bool
    stall_timeout: float
    open_timeout: float
    fourcc: str

    @property
    def is_file(self) -> bool:
        """A regular file is paced at `fps` (a device or a pipe delivers at its own pace)."""
        return isinstance(self.device, str) and os.path.isfile(self.device)


def check_cameras(tables) -> bool:
    """The `cameras` setting: {name: {device, width, ...}}. Raises ConfigError naming the camera and key
    (the config loader prefixes the file and table)."""
    if not isinstance(tables, dict):
        raise ConfigError(f"expected camera tables [server.dynamixel.cameras.<name>], got {tables!r}")
    for name, table in tables.items():
        if not NAME.match(name):
            raise ConfigError(f"camera name {name!r}: 1 to 64 letters, digits, '_' or '-'")
        if not isinstance(table, dict):
            raise ConfigError(f"camera {name!r}: expected a table [server.dynamixel.cameras.{name}], got {table!r}")
        unknown = sorted(set(table) - set(CAMERA_KEYS))
        if unknown:
            raise ConfigError(f"camera {name!r}: unknown key(s) {', '.join(unknown)}; known: {', '.join(CAMERA_KEYS)}")
        if "device" not in table:
            raise ConfigError(f"camera {name!r}: needs a device ({CAMERA_KEYS['device'][3]})")
        for key, value in table.items():
            typ, _, check, wants = CAMERA_KEYS[key]
            if isinstance(value, bool) and typ is not bool or not isinstance(value, typ):
                raise ConfigError(f"camera {name!r}: {key}: expected {wants}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"camera {name!r}: {key}: must be finite, got {value!r}")
            if check is not None and not check(value):
                raise ConfigError(f"camera {name!r}: {key}: expected {wants}, got {value!r}")
    return True


def resolve_camera_paths(tables: dict, base) -> dict:
    """A device given as a relative path is relative to the config file's folder (as calibration is)."""
    out = {}
    for name, table in tables.items():
        table = dict(table)
        dev = table.get("device")
        if isinstance(dev, str) and not os.path.isabs(os.path.expanduser(dev)):
            table["device"] = os.path.abspath(os.path.join(str(base), os.path.expanduser(dev)))
        elif isinstance(dev, str):
            table["device"] = os.path.expanduser(dev)
        out[name] = table
    return out


def camera_settings(tables: dict) -> list[CameraSettings]:
    check_cameras(tables)
    return [CameraSettings(name=name, **{k: table.get(k, entry[1]) for k, entry in CAMERA_KEYS.items()})
            for name, table in tables.items()]


def need_cv2():
    try:
        import cv2
    except ImportError:
        raise ConfigError("cameras need OpenCV: pip install 'robot-env[cameras]' (opencv-python-headless)") from None
    return cv2


def setup_cv2():
    """OpenCV for capture threads: one thread of its own (resize and convert run on the capture
    thread, so the servo loop keeps a core), and quiet (it warns on stderr at each failed open,
    every second while a device is away; the camera's status says so instead)."""
    cv2 = need_cv2()
    cv2.setNumThreads(1)
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass
    return cv2


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (height, width, 3) uint8 RGB, never written after it is made
    t: float  # capture time, time.monotonic()
    seq: int  # 1, 2, ... since the camera started


class Camera:
    """One camera: its capture thread and the latest frame. `start()` returns at once; `status(now)`
    and `latest` are what the server reads."""

    def __init__(self, settings: CameraSettings):
        self.settings = settings
        self.latest: Frame | None = None
        self.delivered: tuple | None = None  # (width, height) the device delivers, before resizing
        self.loops = 0  # times a file started over
        self.claimed_fps: float | None = None  # the rate the opened device (or file) claims
        self.backend: str | None = None  # the OpenCV backend that opened it
        self._state = "opening"  # opening | open | failed | ended (what the thread last knew)
        self._error = ""
        self._times: collections.deque = collections.deque(maxlen=64)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Camera":
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.settings.name}", daemon=True)
        self._thread.start()
        return self

    # -- what the server reads ---------------------------------------------------------------
    def status(self, now: float | None = None) -> dict:
        """{status, age_ms, frames, fps, size[, error]}: 'ok', 'opening' (no frame yet), 'stalled'
        (no new frame for stall_timeout), 'failed' (cannot open or read; retrying) or 'ended'."""
        now = time.monotonic() if now is None else now
        frame, s = self.latest, self.settings
        age = None if frame is None else now - frame.t
        state = self._state
        if state == "failed":
            status, error = "failed", self._error
        elif state == "ended":
            status, error = "ended", self._error
        elif frame is None:
            status, error = "opening", f"no frame yet from {describe(s.device)}"
        elif age > s.stall_timeout:
            status, error = "stalled", (f"no new frame from {describe(s.device)} for {age:.2f} s "
                                        f"(stall_timeout {s.stall_timeout:g} s)")
        else:
            status, error = "ok", ""
        out = {"status": status, "age_ms": None if age is None else 1e3 * age,
               "frames": 0 if frame is None else frame.seq, "fps": self.fps(now),
               "size": list(self.delivered) if self.delivered else None}
        if error:
            out["error"] = error
        return out

    def fps(self, now: float) -> float:
        """Frames delivered per second over the last second (0 when none)."""
        times = [t for t in list(self._times) if now - t <= 1.0]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)

    # -- the capture thread ------------------------------------------------------------------
    def _fail(self, message: str) -> None:
        if self._state != "failed" or self._error != message:
            log.error("camera %s: %s", self.settings.name, message)
        self._state, self._error = "failed", message

    def _open(self, cv2):
        s = self.settings
        if isinstance(s.device, str) and not os.path.exists(s.device):
            self._fail(f"cannot open {describe(s.device)}: no such file or device")
            return None
        cap = cv2.VideoCapture(s.device)
        if not cap.isOpened():
            cap.release()
            self._fail(f"OpenCV cannot open {describe(s.device)}")
            return None
        if not s.is_file:  # ask a device for the announced mode; whatever it delivers is resized
            if s.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*s.fourcc))
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, s.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, s.height)
            cap.set(cv2.CAP_PROP_FPS, s.fps)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.claimed_fps = float(fps) if fps and fps > 0 else None
        try:
            self.backend = cap.getBackendName()
        except cv2.error:
            self.backend = None
        return cap

    def _convert(self, cv2, img) -> np.ndarray:
        s = self.settings
        h, w = img.shape[:2]
        self.delivered = (w, h)
        if (w, h) != (s.width, s.height):
            shrink = w * h > s.width * s.height
            # Area averaging by a non-integer factor is slow (3.7 ms for 640x480 -> 84x84 here); halving
            # first takes OpenCV's fast path, then one small step: 0.27 ms, within half a level of it.
            while img.shape[1] >= 2 * s.width and img.shape[0] >= 2 * s.height:
                img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
            img = cv2.resize(img, (s.width, s.height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if img.ndim == 2:
            return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        if img.shape[2] == 4:
            return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def _run(self) -> None:
        name_thread(f"camera-{self.settings.name}")
        try:
            self._capture()
        except Exception as exc:  # a bug or an OpenCV error: reported, never raised into the driver
            log.exception("camera %s: capture thread failed", self.settings.name)
            self._fail(f"the capture thread failed: {type(exc).__name__}: {exc}")

    def _capture(self) -> None:
        cv2 = need_cv2()
        s = self.settings
        period = 1.0 / s.fps
        seq = 0
        while not self._stop.is_set():
            cap = self._open(cv2)
            if cap is None:
                self._stop.wait(REOPEN_INTERVAL)
                continue
            if self._state != "ended":
                self._state = "open"
            got = 0
            due = time.monotonic()
            try:
                while not self._stop.is_set():
                    ok, img = cap.read()
                    if not ok or img is None:
                        break
                    image = self._convert(cv2, img)
                    if s.is_file:  # deliver at the camera's rate, as a live camera would
                        due += period
                        delay = due - time.monotonic()
                        if delay > 0:
                            self._stop.wait(delay)
                        elif delay < -period:
                            due = time.monotonic()  # behind (a loaded machine): no burst to catch up
                    got += 1
                    seq += 1
                    t = time.monotonic()
                    self.latest = Frame(image, t, seq)
                    self._times.append(t)
                    if self._state != "open":
                        self._state, self._error = "open", ""
            finally:
                cap.release()
            if self._stop.is_set():
                return
            if s.is_file and got and s.loop:
                self.loops += 1
                continue  # start over: reopen the file
            if s.is_file or (isinstance(s.device, str) and not s.device.startswith("/dev/") and got):
                # the end of a file (or of a pipe that stopped): the end of the stream
                self._state = "ended"
                self._error = (f"{describe(s.device)} ended after {got} frame(s)" if got
                               else f"{describe(s.device)} holds no frame OpenCV can decode")
                log.warning("camera %s: %s", s.name, self._error)
                return
            self._fail(f"{describe(s.device)} stopped delivering (read failed after {got} frame(s)); reopening")
            self._stop.wait(REOPEN_INTERVAL)

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread. A read hung inside the device is left to its daemon thread (it cannot be
        interrupted); it owns nothing the driver needs."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def describe(device) -> str:
    return f"V4L2 device {device}" if isinstance(device, int) else repr(device)


class Cameras:
    """The configured cameras of one robot: started together, read by name."""

    def __init__(self, tables: dict):
        self.settings = camera_settings(tables or {})
        self.cams: dict[str, Camera] = {s.name: Camera(s) for s in self.settings}
        if self.cams:
            setup_cv2()

    def __bool__(self) -> bool:
        return bool(self.cams)

    def specs(self) -> dict:
        from robot_env.backends.spec import CameraSpec
        return {s.name: CameraSpec(s.height, s.width, 3, "uint8") for s in self.settings}

    def start(self) -> None:
        """Start every capture thread, then wait (up to each camera's open_timeout, together) for a
        first frame from each: a policy's first request finds frames. A camera that fails to open is
        reported in the state and keeps retrying; start-up goes on."""
        for cam in self.cams.values():
            cam.start()
        deadline = time.monotonic() + max((s.open_timeout for s in self.settings), default=0.0)
        for cam in self.cams.values():
            limit = min(deadline, time.monotonic() + cam.settings.open_timeout)
            while cam.latest is None and cam._state in ("opening", "open") and time.monotonic() < limit:
                time.sleep(0.01)
            st = cam.status()
            if st["status"] != "ok":
                log.error("camera %s: %s at start-up: %s", cam.settings.name, st["status"], st.get("error"))

    def status(self) -> dict:
        now = time.monotonic()
        return {name: cam.status(now) for name, cam in self.cams.items()}

    def check(self, names, kind: str = "dynamixel") -> None:
        """Refuse frames of a camera that is not delivering (RequestError `camera_unavailable`)."""
        now = time.monotonic()
        for name in names:
            st = self.cams[name].status(now)
            if st["status"] != "ok":
                dev = describe(self.cams[name].settings.device)
                raise RequestError("camera_unavailable", f"camera {name!r} ({dev}) has no frame to serve, "
                                                         f"{st['status']}: {st['error']} (the arm is not affected)")

    def frames(self, names, snapshot: dict | None = None) -> dict:
        """name -> (1, h, w, 3) uint8 frames (fresh arrays: the server hands them to ZeroMQ).
        `snapshot`: the frames whose age the last state reported, used where they are at hand."""
        self.check(names)
        out = {}
        for name in names:
            frame = (snapshot or {}).get(name) or self.cams[name].latest
            out[name] = frame.image[None].copy()
        return out

    def close(self) -> None:
        for cam in self.cams.values():
            cam._stop.set()
        for cam in self.cams.values():
            cam.close()
