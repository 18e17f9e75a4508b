"""Keyboard teleop: the real `robot-env teleop` program in a terminal (tmux), keys sent as a user types
them, the robot observed through this test's own client on the server the test started."""
import functools
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import support
from support import wait_for as wait_until

from robot_env import config
from robot_env.apps.teleop import Jogs, Teleop
from robot_env.bridge.client import RobotClient
from robot_env.bridge.spawn import ServerProcess
from robot_env.robot import MoveError

TMUX = shutil.which("tmux")
needs_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install -y tmux; .ci/run does)")

TORSO, GRIPPER, PAN, TILT = 0, 8, 9, 10


class Terminal:
    """`robot-env teleop` in a detached tmux session of its own (private socket)."""

    def __init__(self, tmp_path, name, args):
        self.sock = str(tmp_path / f"{name}.tmux")
        self.rc = tmp_path / f"{name}.rc"
        self.err = tmp_path / f"{name}.err"
        cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "robot_env", "teleop", *args])
        shell = f"{cmd} 2>{shlex.quote(str(self.err))}; echo $? > {self.rc}.tmp; mv {self.rc}.tmp {self.rc}; sleep 60"
        self._tmux("new-session", "-d", "-x", "80", "-y", "24", shell)  # the classic terminal: all must fit

    def _tmux(self, *args):
        return subprocess.run([TMUX, "-S", self.sock, "-f", "/dev/null", *args], check=True,
                              capture_output=True, text=True).stdout

    def keys(self, *keys):
        self._tmux("send-keys", *keys)

    def hold(self, key, seconds, rate=30.0):
        """Hold a key: the terminal's auto-repeat, as a stream of presses at `rate` Hz."""
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < seconds:
            self.keys(key)
            k += 1
            time.sleep(max(0.0, t0 + k / rate - time.monotonic()))
        return time.monotonic()  # when the last repeat went out

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p")

    def wait_screen(self, text, timeout=5.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on screen within {timeout} s:\n{screen}\n{self.stderr()}")
            time.sleep(0.05)

    def exit_code(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not self.rc.exists():
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        return int(self.rc.read_text())

    def stderr(self) -> str:
        return self.err.read_text() if self.err.exists() else ""

    def close(self):
        subprocess.run([TMUX, "-S", self.sock, "kill-server"], capture_output=True)


def client_config(tmp_path, endpoint, timeout=2.0):
    path = tmp_path / "teleop_client.toml"
    path.write_text(f'[client]\nendpoint = "{endpoint}"\ntimeout = {timeout}\n')
    return str(path)


still = functools.partial(support.still, tol=1e-3)
settle = functools.partial(support.settle, quiet=0.35, timeout=3.0, tol=1e-3)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """A realtime simulator server, teleop connected to it in tmux (recording), and our own observing client.

    The server's command watchdog is set to 1 s (0.25 s by default) so that a stop the tests see
    within a jog window of the last key is teleop's own doing, not the watchdog's backstop."""
    tmp = tmp_path_factory.mktemp("teleop")
    srv = ServerProcess(config.load("sim", overrides={"server": {"clock": "realtime"},
                                                      "server.safety": {"watchdog_timeout": 1.0}}))
    client = RobotClient(srv.endpoint, timeout=2.0)
    term = Terminal(tmp, "sim", ["--config", client_config(tmp, srv.endpoint), "--record", str(tmp / "teleop.mcap")])
    term.recording = tmp / "teleop.mcap"
    try:
        term.wait_screen("mode OK", timeout=20)
        yield term, client
    finally:
        term.close()
        client.close()
        srv.close()


def test_jog_window_logic():
    jogs = Jogs(window=0.25, first_window=0.5)
    jogs.press("x", +1, 0.0)
    assert jogs.active(0.49) == {"x": 1}  # a first press bridges the auto-repeat delay
    assert jogs.active(0.51) == {}
    jogs.press("x", +1, 1.0)
    jogs.press("x", +1, 1.45)  # a repeat extends to 0.25 s after itself
    assert jogs.active(1.69) == {"x": 1} and jogs.active(1.71) == {}
    jogs.press("x", +1, 2.0)
    jogs.press("x", -1, 2.1)  # the opposite key takes over the axis at once
    jogs.press("v", +1, 2.1)
    assert jogs.active(2.2) == {"x": -1, "v": 1}


class FaultedRobot:
    """A stand-in `Robot` whose every motion command is refused: the robot is faulted."""

    period, backend, clock = 0.04, "fake", "realtime"
    joint_names = [f"j{i}" for i in range(11)]

    class client:
        info = {"channels": ["ee_delta", "gripper", "torso", "head", "base_twist"]}

    class latency:
        @staticmethod
        def summary():
            return {"rtt": {"n": 1, "p50_ms": 0.5, "p99_ms": 0.9, "max_ms": 0.9}}

    def state(self):
        return {"q": np.zeros(11), "dq": np.zeros(11), "ee": np.zeros(7), "base": np.zeros(5),
                "mode": "fault", "clipped": [],
                "faults": [{"code": "hardware", "joint": "elbow_flex_joint", "servo": 5, "message": "overload"}]}

    def send(self, **channels):
        raise MoveError("the robot is faulted: elbow_flex_joint overload")

    stop = send


def test_refusals_are_shown_not_raised():
    tele = Teleop(FaultedRobot())
    tele._refresh_state()
    now = time.monotonic()
    tele.handle_key(ord("w"), now)
    tele.tick(now)  # the command is refused: shown, jogs dropped, no exception
    assert "faulted" in tele.message and not tele.jogs
    tele.handle_key(ord(" "), now)
    screen = "\n".join(text for text, _ in tele.lines())
    assert "mode FAULT" in screen and "elbow_flex_joint: overload" in screen and "p99 0.90 ms" in screen


@needs_tmux
def test_screen_shows_joint_table_mode_and_latency(rig):
    term, client = rig
    screen = term.wait_screen("rtt p50")
    for text in ("recording ", "torso_lift_joint", "shoulder_pan_joint", "wrist_roll_joint", "head_tilt_joint",
                 "mode OK", "faults: none", "clipped:", "p99", "gripper  x", "base     x"):
        assert text in screen, f"{text!r} missing from:\n{screen}"
    torso_row = next(line for line in screen.splitlines() if line.startswith("torso_lift_joint"))
    assert float(torso_row.split()[1]) == pytest.approx(client.state()["q"][TORSO], abs=1e-3)


# key, what it moves (from a state), expected sign
JOGS = [
    ("w", lambda st: st["ee"][0], +1), ("s", lambda st: st["ee"][0], -1),
    ("a", lambda st: st["ee"][1], +1), ("d", lambda st: st["ee"][1], -1),
    ("r", lambda st: st["ee"][2], +1), ("f", lambda st: st["ee"][2], -1),
    ("o", lambda st: st["q"][GRIPPER], +1), ("p", lambda st: st["q"][GRIPPER], -1),
    ("t", lambda st: st["q"][TORSO], +1), ("g", lambda st: st["q"][TORSO], -1),
    ("z", lambda st: st["q"][PAN], +1), ("b", lambda st: st["q"][TILT], +1),
    ("Up", lambda st: st["base"][0], +1), ("Left", lambda st: st["base"][2], +1),
]


@needs_tmux
def test_keys_move_the_robot_in_the_right_direction(rig):
    term, client = rig
    for key, value, sign in JOGS:
        before = client.state()
        term.hold(key, 0.3)
        assert settle(client), f"{key}: the robot did not come to rest"
        after = client.state()
        moved = value(after) - value(before)
        assert sign * moved > 0.005, f"key {key!r} moved {moved:+.4f}, expected sign {sign:+d}"
        if key in "wsadrf":  # a Cartesian jog moves the gripper along its axis only
            delta = after["ee"][:3] - before["ee"][:3]
            assert np.abs(delta).max() == pytest.approx(abs(moved)) and \
                np.sort(np.abs(delta))[1] < 0.2 * abs(moved), f"{key}: {delta}"


def braking_starts(client, since, timeout=1.5):
    """Seconds from `since` until the base's speed drops below 90 % of its peak (None: not within timeout)."""
    peak = 0.0
    while time.monotonic() - since < timeout:
        v = abs(client.state()["base"][3])
        peak = max(peak, v)
        if peak > 0.05 and v < 0.9 * peak:
            return time.monotonic() - since
        time.sleep(0.005)
    return None


@needs_tmux
def test_motion_stops_when_the_key_repeats_stop(rig):
    term, client = rig
    last = term.hold("w", 0.6)
    assert float(np.abs(client.state()["dq"]).max()) > 0.05  # still jogging right after the last repeat
    assert wait_until(lambda: float(np.abs(client.state()["dq"]).max()) < 1e-3, 1.0)
    stopped_after = time.monotonic() - last
    assert stopped_after < 0.5, f"arm stopped {stopped_after:.3f} s after the last key repeat"
    x = client.state()["ee"][0]
    time.sleep(0.3)
    assert client.state()["ee"][0] == pytest.approx(x, abs=1e-4)  # and stays stopped
    term.hold("s", 0.6)  # back toward the middle of the workspace
    # The base keeps its last twist until told otherwise: teleop must send the stop itself when the
    # window runs out (0.25 s after the last repeat), well before the watchdog would (0.5 s).
    last = term.hold("i", 0.6)
    braking = braking_starts(client, last)
    assert braking is not None and braking < 0.6, f"base began braking {braking} s after the last repeat"
    assert wait_until(lambda: still(client.state()), 1.5)
    assert time.monotonic() - last < 1.0  # 0.25 s window + braking from 0.25 m/s at 0.75 m/s²


@needs_tmux
def test_space_stops_at_once(rig):
    term, client = rig
    took = []
    for attempt in range(3):  # timing on a shared machine: the best of three must be quick
        term.hold("a" if attempt % 2 == 0 else "d", 0.5)
        term.keys("a" if attempt % 2 == 0 else "d", "Space")  # a fresh repeat (0.25 s more jog), then space
        t0 = time.monotonic()
        assert wait_until(lambda: float(np.abs(client.state()["dq"]).max()) < 1e-3, 1.0)
        took.append(time.monotonic() - t0)
        term.wait_screen("stopped (space)", timeout=1.0)
        assert settle(client)
        if took[-1] < 0.15:
            break
    assert min(took) < 0.15, f"space took {took} s to stop the arm (the jog window alone is 0.25 s)"
    if len(took) % 2:
        term.hold("d", 0.5)  # back toward the middle of the workspace
        assert settle(client)


@needs_tmux
def test_estop_latches_shows_and_clears(rig):
    term, client = rig
    for estop_key in ("e", "Escape"):
        term.keys(estop_key)
        assert wait_until(lambda: client.state()["mode"] == "estop", 1.0), estop_key
        term.wait_screen("mode ESTOP", timeout=1.0)
        x = client.state()["ee"][0]
        term.hold("w", 0.3)  # refused while latched: nothing moves, the screen says why
        term.wait_screen("E-STOP is latched", timeout=1.0)
        time.sleep(0.2)
        st = client.state()
        assert st["ee"][0] == pytest.approx(x, abs=1e-4) and st["mode"] == "estop"
        term.keys("c")
        assert wait_until(lambda: client.state()["mode"] != "estop", 1.0)
        term.wait_screen("e-stop cleared", timeout=1.0)
    x = client.state()["ee"][0]
    term.hold("w", 0.3)  # jogging works again
    assert wait_until(lambda: still(client.state()), 2.0)
    assert client.state()["ee"][0] > x + 0.005


@needs_tmux
def test_q_quits_cleanly_with_exit_status_0(rig):
    term, client = rig
    term.hold("k", 0.6)
    term.keys("k")  # a fresh repeat: 0.25 s more of jog
    term.keys("q")  # quit while the base is still driving: teleop stops it on the way out
    braking = braking_starts(client, time.monotonic())
    assert braking is not None and braking < 0.5, f"base began braking {braking} s after q"
    assert term.exit_code(timeout=5.0) == 0, term.stderr()
    assert wait_until(lambda: still(client.state()), 2.0)
    assert client.state()["mode"] in ("ok", "watchdog")  # the server lives on; no e-stop, no fault
    # --record: the session's commands and states, closed properly on the way out
    term.wait_screen("recorded ", timeout=2.0)
    from robot_env.recording import read_recording
    rec = read_recording(term.recording)
    assert rec.closed and not rec.problems, rec.problems
    sent = {ch for c in rec.commands for ch in (c.get("cmd") or {})}
    assert {"ee_delta", "gripper", "torso", "head", "base_twist", "arm_velocity"} <= sent, sent
    assert len(rec.states) > 100


@needs_tmux
def test_lost_server_is_reported_and_exits_nonzero(tmp_path):
    srv = ServerProcess(config.load("sim", overrides={"server": {"clock": "realtime"}}))
    term = Terminal(tmp_path, "lost", ["--config", client_config(tmp_path, srv.endpoint, timeout=1.0)])
    try:
        term.wait_screen("mode OK", timeout=20)
        srv.close()
        code = term.exit_code(timeout=6.0)
        assert code not in (None, 0), f"exit code {code}"
        assert "lost the robot server" in term.stderr()
        assert "Traceback" not in term.stderr()
    finally:
        term.close()
        srv.close()


@needs_tmux
@pytest.mark.timeout(60)
def test_same_teleop_drives_the_hardware_driver_on_the_emulated_bus(tmp_path):
    from simulators.servo_bus import EmulatorProcess
    emu = EmulatorProcess("fetch_dynamixel", link=str(tmp_path / "ttyDXL"))
    srv = term = client = None
    try:
        srv = ServerProcess(config.load("fetch_dynamixel", overrides={"server.dynamixel": {"serial_port": emu.path}}))
        client = RobotClient(srv.endpoint, timeout=5.0)
        term = Terminal(tmp_path, "hw", ["--config", client_config(tmp_path, srv.endpoint)])
        screen = term.wait_screen("mode OK", timeout=20)
        assert "teleop · dynamixel" in screen
        for key, value in (("o", lambda st: st["q"][GRIPPER]), ("t", lambda st: st["q"][TORSO]),
                           ("z", lambda st: st["q"][PAN]), ("Up", lambda st: st["base"][0])):
            before = value(client.state())
            term.hold(key, 0.4)
            assert wait_until(lambda: value(client.state()) > before + 0.005, 2.0), key
        term.keys("e")
        assert wait_until(lambda: client.state()["mode"] == "estop", 1.0)
        term.keys("c", "q")
        assert term.exit_code(timeout=5.0) == 0, term.stderr()
        assert client.state()["mode"] != "estop"
    finally:
        if term is not None:
            term.close()
        if client is not None:
            client.close()
        if srv is not None:
            srv.close()
        emu.close()
