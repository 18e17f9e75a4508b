"""Keyboard teleop in a terminal: `robot-env teleop --config NAME_OR_PATH`.

Keys jog the gripper in x/y/z (Cartesian `ee_delta`, orientation held), open/close it, drive the
base, raise/lower the torso and pan/tilt the head; the screen shows the joint table, gripper pose,
base odometry, mode, faults, clipped flags and live round-trip latency. It only uses the `Robot`
API, so it drives the simulator and the hardware driver alike.

A terminal sends key presses, never releases. So a press *jogs* its axis for a short window, and
the terminal's auto-repeat refreshes that window while the key is held: the first press of an axis
jogs for `first_window` (long enough to bridge the auto-repeat delay, so a held key moves smoothly),
each repeat extends it to `window` after that repeat. When the repeats stop, the window runs out
and the loop sends one stop. Space stops at once; the server's command watchdog (no command for
0.25 s -> hold) is the backstop if this process stalls or dies. While any axis jogs, one command
carrying every active axis goes out each control period; while idle nothing is sent (the display
keeps polling `state()`).
"""
from __future__ import annotations

import curses
import math
import os
import signal
import time
from dataclasses import dataclass

from ..errors import RobotEnvError, ServerError, ServerTimeout
from ..model.description import GRIPPER, HEAD, TORSO
from ..robot import MoveError

# axis -> group: the channel a jog on that axis drives
GROUPS = {"x": "arm", "y": "arm", "z": "arm", "grip": "gripper", "torso": "torso",
          "pan": "head", "tilt": "head", "v": "base", "w": "base"}

# group -> the command channel it needs from the backend
CHANNEL_OF = {"arm": "ee_delta", "gripper": "gripper", "torso": "torso", "head": "head", "base": "base_twist"}

# Full-scale speed of each axis (at 100 %): m/s for the gripper position, width and torso, rad/s for
# the head and ω, m/s for the base. Each is capped by the joint's own velocity limit on the server.
FULL_SPEED = {"x": 0.25, "y": 0.25, "z": 0.25, "grip": 0.10, "torso": 0.10, "pan": 1.2, "tilt": 1.2,
              "v": 0.5, "w": 1.2}
SPEEDS = (0.1, 0.25, 0.5, 1.0)

# key -> (axis, sign)
KEYMAP: dict[int, tuple[str, int]] = {
    ord("w"): ("x", +1), ord("s"): ("x", -1),
    ord("a"): ("y", +1), ord("d"): ("y", -1),
    ord("r"): ("z", +1), ord("f"): ("z", -1),
    ord("o"): ("grip", +1), ord("p"): ("grip", -1),
    ord("t"): ("torso", +1), ord("g"): ("torso", -1),
    ord("z"): ("pan", +1), ord("x"): ("pan", -1),
    ord("v"): ("tilt", -1), ord("b"): ("tilt", +1),  # head_tilt > 0 looks down
    curses.KEY_UP: ("v", +1), curses.KEY_DOWN: ("v", -1), ord("i"): ("v", +1), ord("k"): ("v", -1),
    curses.KEY_LEFT: ("w", +1), curses.KEY_RIGHT: ("w", -1), ord("j"): ("w", +1), ord("l"): ("w", -1),
}
ESC = 27

HELP = (  # fits 80 columns; the whole screen fits 80x24
    "w/s a/d r/f gripper x/y/z  o/p open/close  t/g torso  z/x v/b head  +/- speed",
    "arrows or i/k j/l base  space STOP  e/Esc E-STOP  c clear e-stop/faults  q quit",
)


class TeleopError(RobotEnvError):
    """Teleop cannot go on (lost server, no terminal, a lockstep server)."""


@dataclass
class Jog:
    sign: int
    deadline: float


class Jogs:
    """Active jogs: axis -> (sign, deadline). Pure logic, no I/O."""

    def __init__(self, window: float = 0.25, first_window: float = 0.5):
        self.window = float(window)
        self.first_window = max(float(first_window), self.window)
        self.jogs: dict[str, Jog] = {}

    def press(self, axis: str, sign: int, now: float) -> None:
        jog = self.jogs.get(axis)
        if jog is not None and jog.sign == sign and jog.deadline > now:
            jog.deadline = max(jog.deadline, now + self.window)  # an auto-repeat (or a re-press)
        else:
            self.jogs[axis] = Jog(sign, now + self.first_window)  # a fresh press, or a reversal

    def active(self, now: float) -> dict[str, int]:
        for axis in [a for a, j in self.jogs.items() if j.deadline <= now]:
            del self.jogs[axis]
        return {a: j.sign for a, j in self.jogs.items()}

    def clear(self) -> None:
        self.jogs.clear()

    def __bool__(self) -> bool:
        return bool(self.jogs)


class Teleop:
    """The control loop's state and logic; `run(stdscr)` is the curses front end."""

    def __init__(self, robot, *, speed: float = 0.5, window: float = 0.25, first_window: float = 0.5,
                 refresh: float = 0.2, recorder=None, viewer=None):
        self.robot = robot
        self.period = float(robot.period)
        self.jogs = Jogs(window, first_window)
        self.speed_index = min(range(len(SPEEDS)), key=lambda i: abs(SPEEDS[i] - speed))
        self.refresh = float(refresh)
        self.recorder = recorder  # a running recording.Recorder, shown on screen
        self.viewer = viewer  # a running apps.view.ViewThread: every state read is offered to it
        info = getattr(robot.client, "info", None) or {}
        self.channels = set(info.get("channels") or ())
        joints = (info.get("description") or {}).get("joints") or []
        self.units = ["m" if j.get("kind") == "prismatic" else "rad" for j in joints] or \
            ["rad"] * len(robot.joint_names)
        self.state: dict | None = None
        self.state_time = 0.0
        self.targets: dict[str, float] = {}  # integrated position targets of gripper/torso/head jogs
        self.sent_groups: set[str] = set()  # groups the last command moved
        self.moving = False  # a motion command went out since the last stop
        self.next_send = 0.0
        self.message = "ready"
        self.message_time = time.monotonic()
        self.quit = False

    # -- keys --------------------------------------------------------------------------------
    def handle_key(self, key: int, now: float) -> None:
        if key in KEYMAP:
            axis, sign = KEYMAP[key]
            if self._mode() == "estop":
                self._say("E-STOP is latched: press c to clear it first")
                return
            if self.channels and CHANNEL_OF[GROUPS[axis]] not in self.channels:
                self._say(f"this backend does not take the {GROUPS[axis]} channel")
                return
            if not self.jogs:
                self.next_send = now  # start at once, then every control period
            self.jogs.press(axis, sign, now)
        elif key == ord(" "):
            self.jogs.clear()
            self._stop("stopped (space)")
        elif key in (ord("e"), ord("E"), ESC):
            self.jogs.clear()
            self.targets.clear()
            self.sent_groups = set()
            self.moving = False
            if self._call(self.robot.estop) is not None:
                self._say("E-STOP latched: press c to clear")
        elif key in (ord("c"), ord("C")):
            self.jogs.clear()
            st = self._call(self.robot.clear_estop)
            if st is not None and len(st.get("faults") or ()):
                st = self._call(self.robot.reset_faults)
            if st is not None:
                self._say("e-stop cleared" if not len(st.get("faults") or ()) else
                          "faults remain after reset: see the faults line")
        elif key in (ord("+"), ord("=")):
            self.speed_index = min(self.speed_index + 1, len(SPEEDS) - 1)
            self._say(f"speed {self.speed:.0%}")
        elif key in (ord("-"), ord("_")):
            self.speed_index = max(self.speed_index - 1, 0)
            self._say(f"speed {self.speed:.0%}")
        elif key in (ord("q"), ord("Q")):
            self.quit = True

    @property
    def speed(self) -> float:
        return SPEEDS[self.speed_index]

    # -- the control tick --------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Send one command per control period while jogging; one stop when the jogs end."""
        active = self.jogs.active(now)
        if active:
            if now >= self.next_send:
                self.next_send = max(self.next_send + self.period, now + 0.5 * self.period)
                self._send(active)
        elif self.moving:
            self._stop(None)

    def command(self, active: dict[str, int]) -> dict:
        """The command for one control period from the active jogs (and stops for groups just released)."""
        st = self.state or self.robot.state()
        q = st["q"]
        scale = self.speed
        step = {a: s * FULL_SPEED[a] * scale * self.period for a, s in active.items()}
        groups = {GROUPS[a] for a in active}
        cmd: dict = {}
        if "arm" in groups:
            cmd["ee_delta"] = [step.get("x", 0.0), step.get("y", 0.0), step.get("z", 0.0)]
        for axis, channel, index in (("grip", "gripper", GRIPPER), ("torso", "torso", TORSO)):
            if axis in active:
                cmd[channel] = self._integrate(axis, float(q[index]), step[axis])
        if "head" in groups:
            pan, tilt = (float(v) for v in q[HEAD])
            cmd["head"] = [self._integrate(axis, measured, step[axis]) if axis in active else
                           self.targets.get(axis, measured) for axis, measured in (("pan", pan), ("tilt", tilt))]
        if "base" in groups:
            cmd["base_twist"] = [step.get("v", 0.0) / self.period, step.get("w", 0.0) / self.period]
        # a group that stopped jogging while others go on: stop it (the last command would persist)
        for group in self.sent_groups - groups:
            if group == "arm":
                cmd["arm_velocity"] = [0.0] * 7
            elif group == "gripper":
                cmd["gripper"] = float(q[GRIPPER])
            elif group == "torso":
                cmd["torso"] = float(q[TORSO])
            elif group == "head":
                cmd["head"] = [float(v) for v in q[HEAD]]
            elif group == "base":
                cmd["base_twist"] = [0.0, 0.0]
        for axis in [a for a in self.targets if a not in active]:
            if GROUPS[axis] not in groups or axis in ("grip", "torso"):
                del self.targets[axis]
        self.sent_groups = groups
        return cmd

    def _integrate(self, axis: str, measured: float, step: float) -> float:
        """A position target moving at the jog speed, kept within a short lead of the measured value
        (so it never winds up far ahead of a joint that lags, is blocked or sits at a limit)."""
        lead = max(abs(step) / self.period * 0.25, 1e-3)
        target = self.targets.get(axis, measured) + step
        target = min(max(target, measured - lead), measured + lead)
        self.targets[axis] = target
        return target

    def _send(self, active: dict[str, int]) -> None:
        cmd = self.command(active)
        try:
            st = self.robot.send(**cmd)
        except (MoveError, ServerError) as exc:
            self.jogs.clear()
            self.targets.clear()
            self.sent_groups = set()
            self._say(f"refused: {exc}")
            self._refresh_state()
            return
        self.moving = True
        self._set_state(st)

    def _stop(self, message: str | None) -> None:
        self.targets.clear()
        self.sent_groups = set()
        was_moving, self.moving = self.moving, False
        if self._mode() == "estop":
            if message:
                self._say(message + " (e-stop latched)")
            return
        st = self._call(self._halt)
        if st is not None:
            if message:
                self._say(message)
        elif was_moving:
            self._refresh_state()

    def _halt(self) -> dict:
        """The stop command itself (a subclass may send it from a state it already has)."""
        return self.robot.stop()

    # -- state -------------------------------------------------------------------------------
    def _set_state(self, st) -> None:
        if st is not None:
            self.state = st
            self.state_time = time.monotonic()
            if self.viewer is not None:
                self.viewer.offer(st)  # never blocks: the viewer's thread logs it

    def _refresh_state(self) -> None:
        self._set_state(self.robot.state())

    def poll(self, now: float) -> None:
        """A fresh state for the display: while jogging, each command's reply brings one."""
        if not self.jogs or now - self.state_time > 2 * self.period:
            self._refresh_state()

    def _mode(self) -> str:
        return str(self.state.get("mode", "?")) if self.state else "?"

    def _call(self, fn):
        """A Robot call whose refusal (e-stop, fault, ...) is shown, not raised; a lost server is raised."""
        try:
            st = fn()
        except (MoveError, ServerError) as exc:
            self._say(f"refused: {exc}")
            return None
        self._set_state(st)
        return st

    def _say(self, text: str) -> None:
        self.message = text
        self.message_time = time.monotonic()

    # -- the screen ---------------------------------------------------------------------------
    def lines(self) -> list[tuple[str, str]]:
        """The screen as (text, style) lines; style is '', 'ok', 'warn', 'bad' or 'dim'."""
        r = self.robot
        st = self.state or {}
        out: list[tuple[str, str]] = []
        out.append((f"robot-env teleop · {r.backend} · {r.clock} clock · {1e3 * self.period:.0f} ms period · "
                    f"speed {self.speed:.0%}", "dim"))
        mode = self._mode()
        note = {"ok": "", "estop": "  E-STOP LATCHED: c clears it",
                "fault": "  FAULT: c resets faults", "watchdog": "  (idle between jogs: the server holds; any "
                "jog key resumes)"}.get(mode, "")
        out.append((f"mode {mode.upper()}{note}", {"ok": "ok", "watchdog": "warn"}.get(mode, "bad")))
        faults = st.get("faults") or []
        out.append(("faults: " + ("; ".join(_fault_text(f) for f in faults) if len(faults) else "none"),
                    "bad" if len(faults) else ""))
        clipped = st.get("clipped") or []
        out.append(("clipped: " + (", ".join(map(str, clipped)) if len(clipped) else "none"),
                    "warn" if len(clipped) else ""))
        try:
            lat = r.latency.summary()["rtt"]
            lat_text = (f"latency rtt p50 {lat['p50_ms']:.2f} ms  p99 {lat['p99_ms']:.2f} ms  "
                        f"max {lat['max_ms']:.2f} ms  (n {lat['n']})")
        except Exception:  # no samples yet
            lat_text = "latency rtt: no samples yet"
        out.append((lat_text, ""))
        active = self.jogs.active(time.monotonic())
        jog = " ".join(f"{a}{'+' if s > 0 else '-'}" for a, s in sorted(active.items())) or "idle"
        out.append((f"jog: {jog}", "warn" if active else "dim"))
        rec = self.recorder
        if rec is not None:
            seq = getattr(rec, "state_seq", None)
            gaps = f", {seq.gaps} gap(s) ({seq.lost} lost)" if seq is not None else ""
            live = "" if getattr(rec, "running", True) else "  STOPPED: " + str(getattr(rec, "error", "") or "")
            out.append((f"recording {rec.path}: {rec.states} states, {rec.commands} commands{gaps}{live}",
                        "bad" if live else ""))
        view = self.viewer
        if view is not None:
            broken = f"  STOPPED: {view.error}" if view.error is not None else ""
            out.append((f"view: {view.stats.logged} states, {view.stats.frame_sets} frame sets{broken}; "
                        f"{'; '.join(view.sinks.lines)}", "bad" if broken else ""))
        out.append((f"> {self.message}", "warn" if time.monotonic() - self.message_time < 3 else "dim"))
        out.append((f"{'joint':<22}{'position':>12}    {'velocity':>10}", "dim"))
        q, dq = st.get("q"), st.get("dq")
        for i, name in enumerate(r.joint_names):
            if q is None or i >= len(q):
                break
            unit = self.units[i] if i < len(self.units) else ""
            vel = dq[i] if dq is not None and i < len(dq) else math.nan
            out.append((f"{name:<22}{q[i] + 0.0:>12.4f} {unit:<3}{vel + 0.0:>10.4f} {unit}/s", ""))
        ee = st.get("ee")
        ee = None if ee is None else [float(v) + 0.0 for v in ee]  # + 0.0: no "-0.000"
        if ee is not None and len(ee) >= 3:
            quat = " ".join(f"{v:.3f}" for v in ee[3:7])
            out.append((f"gripper  x {ee[0]:.4f}  y {ee[1]:.4f}  z {ee[2]:.4f} m   quat xyzw {quat}", ""))
        base = st.get("base")
        base = None if base is None else [float(v) + 0.0 for v in base]
        if base is not None and len(base) >= 5:
            out.append((f"base     x {base[0]:.3f}  y {base[1]:.3f} m  θ {base[2]:.3f} rad   "
                        f"v {base[3]:.3f} m/s  ω {base[4]:.3f} rad/s", ""))
        out.extend((h, "dim") for h in HELP)
        return out

    # -- the curses front end ----------------------------------------------------------------
    def run(self, stdscr) -> None:
        _can(curses.curs_set, 0)  # hide the cursor where the terminal can
        stdscr.keypad(True)
        styles = _styles()
        self._refresh_state()
        next_draw = 0.0
        while not self.quit:
            try:
                now = time.monotonic()
                if now >= next_draw:
                    next_draw = now + self.refresh
                    self.poll(now)
                    _draw(stdscr, self.lines(), styles)
                due = min(next_draw, self.next_send if self.jogs else next_draw)
                stdscr.timeout(max(0, math.ceil((due - time.monotonic()) * 1000)))
                key = stdscr.getch()
                while key != -1:
                    if key != curses.KEY_RESIZE:
                        self.handle_key(key, time.monotonic())
                    if self.quit:
                        break
                    stdscr.timeout(0)
                    key = stdscr.getch()
                self.tick(time.monotonic())
            except ServerTimeout:
                raise
            except Exception as exc:  # never let one bad call take the UI (and the stop key) away
                self.jogs.clear()
                self._say(f"error: {type(exc).__name__}: {exc}")
        self.jogs.clear()
        self._stop(None)
        self._say("quit")


def _fault_text(f) -> str:
    if isinstance(f, dict):
        where = f.get("joint") or (f"servo {f['servo']}" if f.get("servo") is not None else "")
        return f"{f.get('code', 'fault')}{' ' + where if where else ''}: {f.get('message', '')}"
    return str(f)


def _can(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except curses.error:
        return False


def _styles() -> dict[str, int]:
    styles = {"": curses.A_NORMAL, "dim": curses.A_DIM, "ok": curses.A_BOLD, "warn": curses.A_BOLD,
              "bad": curses.A_BOLD | curses.A_REVERSE}
    try:
        if curses.has_colors():
            curses.start_color()
            curses.use_default_colors()
            for n, color in ((1, curses.COLOR_GREEN), (2, curses.COLOR_YELLOW), (3, curses.COLOR_RED)):
                curses.init_pair(n, color, -1)
            styles["ok"] = curses.color_pair(1) | curses.A_BOLD
            styles["warn"] = curses.color_pair(2) | curses.A_BOLD
            styles["bad"] = curses.color_pair(3) | curses.A_BOLD
    except curses.error:
        pass
    return styles


def _draw(stdscr, lines, styles) -> None:
    stdscr.erase()
    rows, cols = stdscr.getmaxyx()
    for y, (text, style) in enumerate(lines[:rows]):
        try:  # writing the bottom-right cell raises; clip everything to the window
            stdscr.addnstr(y, 0, text, max(0, cols - 1), styles.get(style, 0))
        except curses.error:
            pass
    stdscr.refresh()


def run_teleop(config=None, *, speed: float = 0.5, window: float = 0.25, first_window: float = 0.5,
               timeout: float = 2.0, record: str | None = None, cameras=(), view: str | None = None) -> int:
    """`robot-env teleop`: connect, run the terminal UI until q, stop the robot and close.

    With `record`, a `recording.Recorder` writes the server's state stream and the applied commands
    to that file for the whole session (kept up to the fault if the server is lost), and the frames of
    `cameras` at the control rate (what `robot-env export --lerobot` makes image observations of). With `view`
    (native, web or FILE.rrd), an `apps.view.ViewThread` shows every state the loop reads in Rerun.
    """
    import sys

    from ..robot import connect

    if cameras and not record:
        raise TeleopError("--camera records a camera's frames: give --record FILE too")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise TeleopError("teleop needs an interactive terminal (stdin and stdout a tty)")
    if not window > 0 or not first_window > 0:
        raise TeleopError("--jog-window and --first-window must be positive")
    os.environ.setdefault("ESCDELAY", "25")  # Esc is the e-stop: do not wait 1 s for a sequence
    curses.use_env(False)  # the terminal's real size, not a stale exported LINES/COLUMNS
    sinks = None
    if view:
        from .view import sinks_from_view_arg
        sinks = sinks_from_view_arg(view)
        sinks.check()  # no display for a native viewer: said before anything connects
    robot = connect(config)
    recorder = viewer = None
    try:
        if robot.clock != "realtime":
            raise TeleopError("the server runs the lockstep clock, where the robot moves only on step(); "
                              "teleop needs a realtime server (robot-env serve --clock realtime)")
        robot.client.timeout = min(robot.client.timeout, float(timeout))
        if record:
            from ..recording import Recorder
            recorder = Recorder(robot, record, cameras=cameras or ()).start()
        if sinks is not None:
            from .view import ViewThread
            viewer = ViewThread(robot.client.endpoint, robot.client.info or robot.client.hello(), sinks,
                                keys=robot.client.keys).start()
        teleop = Teleop(robot, speed=speed, window=window, first_window=first_window, recorder=recorder,
                        viewer=viewer)
        quit_signals = (signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.getsignal(s) for s in quit_signals}

        def on_signal(signum, frame):
            teleop.quit = True

        for s in quit_signals:
            signal.signal(s, on_signal)
        try:
            curses.wrapper(teleop.run)
        except ServerTimeout as exc:
            raise TeleopError(f"lost the robot server: {exc}. The robot holds (command watchdog)."
                              + (f" The recording {record} is kept up to here." if record else "")) from None
        except KeyboardInterrupt:  # Ctrl-C: as q
            teleop.jogs.clear()
            try:
                teleop._stop(None)
            except ServerTimeout:
                pass
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 0
    finally:
        if viewer is not None:
            stats = viewer.close()
            print(f"viewed {stats}" + (f" (the view stopped: {viewer.error})" if viewer.error else ""), flush=True)
        if recorder is not None:
            try:
                print(f"recorded {recorder.stop()}", flush=True)
                for name, fs in recorder.frame_stats.items():
                    print(f"camera {name} at {recorder.camera_rate:g} Hz: {fs}", flush=True)
            except Exception as exc:
                print(f"robot-env teleop: the recording {record} could not be closed cleanly: {exc}",
                      file=sys.stderr, flush=True)
        try:
            robot.close()
        except Exception:
            pass
