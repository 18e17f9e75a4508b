"""The one thread that talks to the robot: the web server's single client of the robot server.

Pages' requests arrive in an inbox; this thread applies them, sends the jog commands each control
period (and the stop when the last held axis is released or lapses) and polls the state for the
pages (camera frames come from `cameras.CameraFeed`, beside it). Which page holds control lives here too, next to
the robot's lease, so "who may move it" has one owner. Events go out through `publish(event)`,
called from this thread (the web server hands them to its event loop).
"""
from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time

from ...errors import ServerError, ServerTimeout
from ...robot import MoveError
from .cameras import CameraFeed
from .controls import HOME, Request, WebTeleop

log = logging.getLogger(__name__)
_mono = time.monotonic


class RobotLink:
    def __init__(self, robot, publish, *, fps: float = 12.0, state_rate: float = 20.0,
                 hold_timeout: float = 0.3, speed: float = 0.5, quality: int = 75):
        self.robot = robot
        self.publish = publish
        self.teleop = WebTeleop(robot, speed=speed, hold_timeout=hold_timeout)
        self.teleop._say = self._say  # teleop's messages go to the pages
        self.feed = CameraFeed(robot.client, publish, fps=fps, quality=quality)
        self.cameras = self.feed.cameras
        self.state_period = 1.0 / state_rate
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.holder: int | None = None  # the page in control
        self.names: dict[int, str] = {}  # page id -> who it is (shown to the others)
        self.lost = False
        self.jog_seq = self.lapsed_seq = -1  # the holder's newest held set, and the newest that lapsed
        self.lapses = 0  # holds that lapsed (the page went silent), shown to the pages
        self.releases = collections.deque(maxlen=200)  # s from a release's arrival to its stop sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="robot-link", daemon=True)

    # -- from the web server's thread ----------------------------------------------------------
    def start(self) -> RobotLink:
        self._thread.start()
        self.feed.start()
        return self

    def submit(self, page: int, item) -> None:
        """A page's Request, or "open:<name>" / "closed" for its socket; stamped on arrival, so a
        stall of this thread is not taken for a page that stopped saying "still held"."""
        self.inbox.put((page, item, _mono()))

    def close(self) -> None:
        self.feed.close()
        self._stop.set()
        self.inbox.put((None, "wake", 0.0))
        self._thread.join(timeout=5.0)

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        next_state = 0.0
        try:
            self.teleop._refresh_state()
        except Exception as exc:
            self._lost(exc)
        while not self._stop.is_set():
            now = _mono()
            due = next_state
            if self.teleop.jogs:
                due = min(due, self.teleop.next_send)
            try:
                self._handle(*self.inbox.get(timeout=max(0.0, due - now)))
                while True:
                    self._handle(*self.inbox.get_nowait())
            except queue.Empty:
                pass
            if self._stop.is_set():
                break
            try:
                self._lapse(_mono())
                self.teleop.tick(_mono())
                now = _mono()
                if now >= next_state:
                    next_state = now + self.state_period
                    if self.lost or now - self.teleop.state_time > self.state_period:
                        self.teleop._refresh_state()
                    if self.lost:
                        self.lost = False
                        self._say("the robot server answers again")
                    self._publish_state()
            except ServerTimeout as exc:
                self._lost(exc)
                next_state = _mono() + 1.0
            except Exception as exc:  # one bad call must not take the stop and e-stop away
                log.exception("robot link")
                self._say(f"error: {type(exc).__name__}: {exc}")
        self._shutdown()

    def _lapse(self, now: float) -> None:
        """Holds not refreshed in time end here (tick then stops), and their refreshes stay void."""
        jogs = self.teleop.jogs
        if jogs.jogs and not jogs.active(now):
            self.lapsed_seq = self.jog_seq
            self.lapses += 1
            self._say(f"no 'still held' from the page within {jogs.window:g} s: stopped; press again to move")

    def _lost(self, exc) -> None:
        self.teleop.jogs.clear()
        self.teleop.moving = False
        if not self.lost:
            self.lost = True
            self._say(f"lost the robot server: {exc}. The robot holds (its command watchdog).")

    def _shutdown(self) -> None:
        try:
            if self.teleop.moving:
                self.teleop.jogs.clear()
                self.teleop._stop(None)
        except Exception:
            pass

    def _handle(self, page, item, arrived: float) -> None:
        if page is None:
            return
        if isinstance(item, str):
            if item.startswith("open:"):
                self.names[page] = item[5:]
                self.feed.watching.set()
                self._control()
            elif item == "closed":
                self.names.pop(page, None)
                if not self.names:
                    self.feed.watching.clear()
                if self.holder == page:
                    self._give_up("the page in control closed")
                self._control()
            return
        try:
            self._request(page, item, arrived)
        except ServerTimeout as exc:
            self._lost(exc)
        except (MoveError, ServerError) as exc:
            self._error(page, getattr(exc, "code", "refused"), str(exc))
        except Exception as exc:  # a bug must not end the thread that stops the robot
            log.exception("robot link: %s", item)
            self._error(page, "internal", f"{type(exc).__name__}: {exc}")

    def _request(self, page: int, req: Request, arrived: float) -> None:
        t = self.teleop
        kind = req.type
        if kind == "estop":  # anyone may stop the robot, in control or not
            t.jogs.clear()
            t.targets.clear()
            t.sent_groups = set()
            t.moving = False
            t._set_state(self.robot.estop())
            self._say(f"E-STOP latched by {self.names.get(page, 'a page')}")
            self._publish_state()
            return
        if kind == "take":
            if self.holder is not None and self.holder != page:
                self._error(page, "not_controller", f"{self.names.get(self.holder)} holds control: it must release "
                            "it (or close its page) first")
                return
            self.robot.acquire()  # refused (ServerError not_controller) while another client of the robot holds it
            self.holder = page
            self.jog_seq = self.lapsed_seq = -1
            self._control()
            return
        if self.holder != page:
            if kind == "jog" and not req.axes:
                return  # a release from an observer: nothing to do
            holder = self.names.get(self.holder) if self.holder is not None else None
            self._error(page, "not_controller", f"{holder} holds control" if holder else
                        "take control first (this page only observes)")
            return
        if kind == "release":
            self._give_up(None)
            self._control()
        elif kind == "stop":
            t.jogs.clear()
            t._stop("stopped")
        elif kind == "speed":
            t.scale = req.value
        elif kind == "clear":
            t.jogs.clear()
            st = t._call(self.robot.clear_estop)
            if st is not None and len(st.get("faults") or ()):
                st = t._call(self.robot.reset_faults)
            if st is not None:
                self._say("e-stop cleared" if not len(st.get("faults") or ()) else "faults remain after reset")
            self._publish_state()
        elif kind == "jog":
            self._jog(page, req.axes, req.seq, arrived)

    def _jog(self, page: int, axes: dict, seq: int, arrived: float) -> None:
        t = self.teleop
        now = _mono()
        if seq < self.jog_seq:
            return  # older than a set already applied
        if axes and seq <= self.lapsed_seq:
            return  # a refresh of a hold that lapsed: it must not start the robot again
        self._lapse(arrived)  # had the hold lapsed when this message came?
        if axes and seq <= self.lapsed_seq:
            return
        self.jog_seq = seq
        if axes:
            if t._mode() == "estop":
                t.jogs.clear()
                self._error(page, "estop", "E-STOP is latched: clear it first")
                return
            why = t.unavailable(axes)
            if why:
                t.jogs.clear()
                self._error(page, "unsupported", why)
                return
            if not t.jogs:
                t.next_send = now  # start at once, then every control period
            if (HOME in axes) != (HOME in t.jogs.jogs) and t.jogs:
                t.jogs.clear()  # home <-> jog: one stop between them (tick sends it), then the new motion
                t.tick(now)
                t.next_send = now
        t.jogs.hold(axes, arrived)
        moving = t.moving
        t.tick(now)  # a release stops at once, a press moves at once
        if moving and not t.moving:
            self.releases.append(_mono() - arrived)

    def _give_up(self, why: str | None) -> None:
        t = self.teleop
        t.jogs.clear()
        if t.moving:
            t._stop(None)
        try:
            self.robot.release()
        except ServerTimeout as exc:
            self._lost(exc)
        except ServerError:
            pass
        self.holder = None
        if why:
            self._say(why + ": control is free")

    # -- events ------------------------------------------------------------------------------
    def _control(self) -> None:
        self.publish({"type": "control", "holder": self.holder,
                      "holder_name": self.names.get(self.holder) if self.holder is not None else None,
                      "pages": len(self.names)})

    def _error(self, page: int, code: str, message: str) -> None:
        self.publish({"type": "error", "to": page, "code": code, "message": message})

    def _say(self, text: str) -> None:
        self.teleop.message = text
        self.teleop.message_time = _mono()
        self.publish({"type": "message", "text": text})

    def _publish_state(self) -> None:
        st = self.teleop.state
        if st is None:
            return
        try:
            lat = self.robot.latency.summary()["rtt"]
            latency = {"p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "n": lat["n"]}
        except Exception:
            latency = None
        self.publish({
            "type": "state", "mode": str(st.get("mode", "?")), "time": _num(st.get("time")),
            **{k: _vec(st.get(k)) for k in ("q", "dq", "target", "ee", "base")},
            "faults": [_fault(f) for f in (st.get("faults") or [])],
            "clipped": sorted(map(str, st.get("clipped") or ())),
            "jog": {a: j.sign for a, j in self.teleop.jogs.jogs.items() if j.deadline > _mono()},
            "speed": self.teleop.scale, "latency": latency, "lapses": self.lapses, "release": _percentiles(self.releases), "message": self.teleop.message,
        })


def _percentiles(samples) -> dict | None:
    if not samples:
        return None
    ms = sorted(1e3 * s for s in samples)
    return {"p50_ms": ms[len(ms) // 2], "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))], "n": len(ms)}


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _vec(v):
    return None if v is None else [_num(x) for x in v]


def _fault(f) -> dict:
    if isinstance(f, dict):
        return {k: (v if isinstance(v, (str, int, float, type(None))) else str(v)) for k, v in f.items()}
    return {"message": str(f)}
