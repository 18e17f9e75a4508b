"""The camera feed: frames from the robot server, JPEG-encoded, a few per second, in a thread of its own.

It has its own client of the robot server (a `state` request with frames needs no control), so
neither the render nor the encoding ever sits in front of a jog or a stop in the control thread. It
asks only while some page is open.
"""
from __future__ import annotations

import io
import threading
import time

from ...bridge.client import RobotClient
from ...errors import RobotEnvError

_mono = time.monotonic


def rgb_cameras(info: dict) -> list[str]:
    """The cameras of a hello that a page can show: RGB, uint8 (not depth)."""
    cams = ((info or {}).get("spec") or {}).get("cameras") or {}
    return [n for n, c in cams.items() if c.get("channels", 3) == 3 and c.get("dtype", "uint8") == "uint8"]


class CameraFeed:
    def __init__(self, client: RobotClient, publish, *, fps: float, quality: int = 75):
        self.endpoint, self.keys = client.endpoint, client.keys
        self.cameras = rgb_cameras(client.info)
        self.publish = publish
        self.period = 1.0 / fps if fps > 0 else 0.0  # 0: no frames
        self.quality = int(quality)
        self.watching = threading.Event()  # set while a page is open
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera-feed", daemon=True)

    def start(self) -> CameraFeed:
        if self.cameras and self.period > 0:
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self.watching.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        from PIL import Image

        client = None
        failing = False
        next_frame = _mono()
        try:
            while not self._stop.is_set():
                self.watching.wait()
                if self._stop.is_set():
                    break
                delay = next_frame - _mono()
                if delay > 0 and self._stop.wait(delay):
                    break
                next_frame = max(next_frame + self.period, _mono() + 0.5 * self.period)
                try:
                    if client is None:
                        client = RobotClient(self.endpoint, timeout=2.0, retries=0, keys=self.keys)
                        client.hello()
                    frames = client.state(frames=self.cameras)["frames"]
                    for name, arr in frames.items():
                        buf = io.BytesIO()
                        Image.fromarray(arr[0]).save(buf, "JPEG", quality=self.quality)
                        self.publish({"type": "frame", "camera": name, "jpeg": buf.getvalue()})
                        self.sent += 1
                    failing = False
                except RobotEnvError as exc:
                    if not failing:
                        self.publish({"type": "message", "text": f"camera frames: {exc}"})
                    failing = True
                    if client is not None:
                        client.close()
                        client = None
                    next_frame = _mono() + 1.0
        finally:
            if client is not None:
                client.close()
