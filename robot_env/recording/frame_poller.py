"""Camera frames into a recording: the state stream carries none, so a `FramePoller` asks the server for
them at a fixed rate and logs each one on ``/camera/<name>`` (a `foxglove.RawImage`).

It has a client of its own and sends only `state` requests with `frames`: it observes, never holds
control and moves nothing, so it records a server someone else drives (`robot-env record --camera`).
A frame is stamped with its capture time where the server reports it (the robot's cameras: the state's
``cameras.<name>.age_ms``), else with the server's sample time (a simulator renders on request).

Every tick of the schedule should record one new frame of each camera; the ones that do not are
counted, by cause (`FrameStats`): ticks the poller was too late for (`missed`), requests that failed
(`errors`, e.g. a stalled camera), frames the camera had not renewed since the last tick (`repeats`:
a camera slower than the rate; not recorded twice) and frames dropped because the file writer was
more than `max_backlog` seconds behind (`backlog`). `dropped` is their sum: a recording at the rate
with no holes has ``frames == ticks`` and ``dropped == 0``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

from ..errors import ServerError, ServerTimeout
from .format import RecordingError, log

TOPIC_FRAME_STATS = "/recorder/frames"


@dataclass
class FrameStats:
    ticks: int = 0
    frames: int = 0
    missed: int = 0
    errors: int = 0
    repeats: int = 0
    backlog: int = 0
    last_error: str = ""

    @property
    def dropped(self) -> int:
        return self.missed + self.errors + self.repeats + self.backlog

    def as_dict(self) -> dict:
        return dict(asdict(self), dropped=self.dropped)

    def __str__(self) -> str:
        text = (f"{self.frames} frames in {self.ticks} ticks, {self.dropped} dropped ({self.missed} missed ticks, "
                f"{self.errors} errors, {self.repeats} repeats, {self.backlog} for the writer's backlog)")
        return text + (f"; last error: {self.last_error}" if self.last_error else "")


class FramePoller:
    def __init__(self, recorder, cameras, rate: float | None, *, keys=None, timeout: float = 2.0,
                 max_backlog: float = 2.0):
        names = list(cameras)
        if not names or len(set(names)) != len(names):
            raise RecordingError(f"cameras to record must be distinct names, got {names!r}")
        if rate is not None and not 0 < rate <= 200:
            raise RecordingError(f"the camera rate must be in (0, 200] Hz, got {rate!r}")
        self.recorder = recorder
        self.names = names
        self.rate = None if rate is None else float(rate)  # None: the server's control rate (`check`)
        self.keys = keys
        self.timeout = float(timeout)
        self.max_backlog = float(max_backlog)
        self.stats = {n: FrameStats() for n in names}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None

    def check(self, info: dict) -> None:
        """Refuse cameras the server's hello does not offer (before anything is recorded)."""
        offered = (info.get("spec") or {}).get("cameras") or {}
        missing = [n for n in self.names if n not in offered]
        if missing:
            raise RecordingError(f"camera(s) {', '.join(missing)} asked for, which the {info.get('backend')} "
                                 f"server at {self.recorder.endpoint} does not offer (it has "
                                 f"{', '.join(offered) or 'no cameras'})")
        if "frames" not in info:
            raise RecordingError(f"the server at {self.recorder.endpoint} predates camera frames")
        if self.rate is None:
            self.rate = min(200.0, 1.0 / float(info.get("control_period") or 0.04))

    def start(self) -> "FramePoller":
        """Check the cameras against the server's spec (nothing recorded for a camera it lacks), then
        poll from a thread."""
        from ..bridge.client import RobotClient

        extra = {"keys": self.keys} if self.keys is not None else {}
        self._client = RobotClient(self.recorder.endpoint, timeout=self.timeout, retries=0, **extra)
        try:
            self.check(self._client.hello())
        except BaseException:
            self._client.close()
            self._client = None
            raise
        self._thread = threading.Thread(target=self._run, name="robot-env-frames", daemon=True)
        self._thread.start()
        # the first frames (a renderer's first takes a while) before start() returns, so the caller's
        # first episode has images from its start
        deadline = time.monotonic() + max(self.timeout, 10.0)
        while (not all(s.frames for s in self.stats.values()) and self._thread.is_alive()
               and time.monotonic() < deadline):
            time.sleep(0.005)
        if not all(s.frames for s in self.stats.values()):
            self.stop()
            raise RecordingError(f"no frames of camera(s) {', '.join(self.names)} arrived from "
                                 f"{self.recorder.endpoint}: " + "; ".join(
                                     f"{n}: {s.last_error or 'none in time'}" for n, s in self.stats.items()))
        return self

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._client is not None:
            self._client.close()
            self._client = None
        return self.stats

    def _run(self) -> None:
        period = 1.0 / self.rate
        rec, names, stats = self.recorder, self.names, self.stats
        backlog_limit = max(2, int(self.max_backlog * self.rate * len(names)))
        last_seq: dict = {}
        nxt = time.monotonic()
        while not self._stop.is_set():
            for s in stats.values():
                s.ticks += 1
            try:
                st = self._client.state(frames=names)
            except (ServerError, ServerTimeout) as exc:
                msg = f"{getattr(exc, 'code', 'timeout')}: {exc}"
                for s in stats.values():
                    if s.last_error != msg:
                        log.warning("recording frames: %s", msg)
                    s.errors += 1
                    s.last_error = msg
            except Exception as exc:  # the recorder reports it; the state recording goes on
                log.exception("recording frames failed")
                for s in stats.values():
                    s.errors += 1
                    s.last_error = f"{type(exc).__name__}: {exc}"
                break
            else:
                cams = st.get("cameras") or {}
                ts = float(st.get("ts") or time.time())
                for name in names:
                    info = cams.get(name) or {}
                    seq = info.get("frames")
                    if seq is not None and seq == last_seq.get(name):
                        stats[name].repeats += 1
                        continue
                    if rec.pending() > backlog_limit:
                        stats[name].backlog += 1
                        continue
                    last_seq[name] = seq
                    age = info.get("age_ms")
                    t = ts - age / 1e3 if isinstance(age, (int, float)) else ts
                    rec.log_frame(name, st["frames"][name][0], t)
                    stats[name].frames += 1
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                late = int(-delay // period)
                if late:  # ticks that passed while this one ran: count them, do not burst to catch up
                    nxt += late * period
                    for s in stats.values():
                        s.ticks += late
                        s.missed += late
