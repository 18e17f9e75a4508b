"""The backend conformance suite (DESIGN.md): what every backend must do, through a real server process.

Parametrized over every backend that exists: the kinematic simulator, the batched kinematic
simulator (3 robots; commands carry one row per robot) and the hardware driver on the emulated
servo bus. All run the realtime clock here, so the watchdog counts. A new backend is done when it
passes this file.
"""
import time

import numpy as np
import pytest

from drivers.calibration import load_calibration
from robot_env import config as config_mod
from robot_env.bridge.client import RobotClient
from robot_env.control.commands import CHANNELS
from robot_env.model.description import ARM, FETCH, HEAD
from robot_env.errors import ServerError
from robot_env.bridge.protocol import VERSION
from robot_env.bridge.spawn import ServerProcess
from simulators.servo_bus import EmulatorProcess
from support import wait_for

READY_EE = np.array([0.60, 0.0, 0.80])
VEL = np.array([j.velocity for j in FETCH.joints])
BATCH = 3


class Rig:
    """A server process for one backend, a client, and how that backend's commands are shaped."""

    def __init__(self, kind: str, tmp_path):
        self.kind = kind
        self.emu = None
        self.rows = BATCH if kind == "kinematic_batch" else None
        realtime = {"server": {"clock": "realtime"}}
        if kind == "dynamixel":
            self.emu = EmulatorProcess("fetch_dynamixel", link=str(tmp_path / "ttyDXL"), control=True)
            cfg = config_mod.load("fetch_dynamixel", {"server.dynamixel": {"serial_port": self.emu.path}})
        elif kind == "kinematic_batch":
            cfg = config_mod.load("sim", {**realtime, "server.kinematic": {"num_robots": BATCH}})
        else:
            cfg = config_mod.load("sim", realtime)
        self.cfg = cfg
        self.server = ServerProcess(cfg, ready_timeout=60.0)
        self.client = self.connect()

    def connect(self) -> RobotClient:
        return RobotClient(self.server.endpoint, timeout=20.0)

    def cmd(self, **channels) -> dict:
        """Channels as one robot's values; tiled to one row per robot for the batched backend."""
        if self.rows is None:
            return channels
        return {k: np.tile(np.asarray(v, dtype=float), (self.rows, 1)) if np.ndim(v) else np.full(self.rows, v)
                for k, v in channels.items()}

    def close(self) -> None:
        self.client.close()
        self.server.close()
        if self.emu is not None:
            self.emu.close()


@pytest.fixture(scope="module", params=["kinematic", "kinematic_batch", "dynamixel"])
def rig(request, tmp_path_factory):
    r = Rig(request.param, tmp_path_factory.mktemp(request.param))
    yield r
    r.close()


@pytest.fixture
def ready(rig):
    """Every test starts from a reset robot in mode ok."""
    c = rig.client
    st = c.state()
    if st["mode"] == "estop":
        c.clear_estop()
    if c.state()["faults"]:
        c.reset_faults()
    c.reset()
    return rig


def _ee(st) -> np.ndarray:
    return np.atleast_2d(st["ee"])[:, :3]


def test_hello_describes_the_same_robot(rig):
    info = rig.client.hello()
    assert info["protocol"] == VERSION and info["backend"] == ("kinematic" if rig.kind == "kinematic_batch" else rig.kind)
    assert info["description_hash"] == FETCH.hash()
    assert info["joint_names"] == list(FETCH.names)
    assert set(info["channels"]) == set(CHANNELS)
    assert info["control_period"] == pytest.approx(0.04) and info["clock"] == "realtime"
    assert info["num_robots"] == (rig.rows or 1)


def test_reset_goes_to_the_ready_pose(ready):
    st = ready.client.state()
    assert st["mode"] == "ok" and not st["faults"]
    np.testing.assert_allclose(_ee(st), np.broadcast_to(READY_EE, _ee(st).shape), atol=5e-3)
    assert np.atleast_2d(st["q"]).shape[-1] == len(FETCH.names)


def test_targets_beyond_limits_are_clipped_flagged_and_never_reached(ready):
    c = ready.client
    lower, upper = FETCH.lower, FETCH.upper
    wild = ready.cmd(arm_position=upper[ARM] + 3.0, head=lower[HEAD] - 2.0, gripper=0.5, torso=-1.0)
    st = c.step(wild)
    for flag in ("arm_position.position_limit", "head.position_limit", "gripper.position_limit",
                 "torso.position_limit"):
        assert flag in st["clipped"], (flag, st["clipped"])
    for _ in range(20):
        st = c.step(wild)
        q, dq = np.atleast_2d(st["q"]), np.atleast_2d(st["dq"])
        assert (q >= lower - 2e-3).all() and (q <= upper + 2e-3).all()
        assert (np.abs(dq) <= VEL * 1.05 + 1e-3).all()
    target = np.atleast_2d(st["target"])
    assert (target >= lower - 1e-9).all() and (target <= upper + 1e-9).all()


def test_a_bad_command_is_refused_and_changes_nothing(ready):
    c = ready.client
    before = c.state()
    bad = ready.cmd(ee_delta=[0.01, 0.0, 0.0])
    key = next(iter(bad))
    bad[key] = np.array(bad[key], dtype=float)
    bad[key][..., 1] = np.nan
    with pytest.raises(ServerError) as info:
        c.step(bad)
    assert info.value.code == "bad_command"
    with pytest.raises(ServerError) as info:
        c.step({"teleport": [1.0]})
    assert info.value.code == "unknown_channel"
    after = c.state()
    np.testing.assert_array_equal(after["target"], before["target"])
    assert after["mode"] == "ok"


def test_the_watchdog_holds_the_arm_when_commands_stop(ready):
    c = ready.client
    move = ready.cmd(arm_velocity=0.5 * VEL[ARM] * np.array([1, -1, 1, -1, 1, 1, 1]))
    for _ in range(5):
        st = c.step(move)
    assert np.abs(np.atleast_2d(st["dq"])[:, ARM]).max() > 0.05  # moving
    timeout = ready.cfg["server.safety"]["watchdog_timeout"]
    time.sleep(timeout + 0.3)
    st = c.state()
    assert st["mode"] == "watchdog"
    assert wait_for(lambda: np.abs(np.atleast_2d(c.state()["dq"])[:, ARM]).max() < 1e-2, timeout=3.0)
    q0 = np.atleast_2d(c.state()["q"])[:, ARM]
    time.sleep(0.2)
    np.testing.assert_allclose(np.atleast_2d(c.state()["q"])[:, ARM], q0, atol=3e-3)  # holds
    st = c.step(ready.cmd(head=[0.1, 0.0]))  # a new command ends the watchdog hold
    assert st["mode"] == "ok"


def test_the_estop_latches_across_clients_until_cleared(ready):
    c = ready.client
    st = c.estop()
    assert st["mode"] == "estop"
    with pytest.raises(ServerError) as info:
        c.step(ready.cmd(ee_delta=[0.02, 0.0, 0.0]))
    assert info.value.code == "estop"
    other = ready.connect()  # a reconnecting client: still latched
    try:
        assert other.state()["mode"] == "estop"
        with pytest.raises(ServerError) as info:
            other.reset()
        assert info.value.code == "estop"
    finally:
        other.close()
    assert c.clear_estop()["mode"] == "ok"
    st0 = c.state()
    for _ in range(5):
        st = c.step(ready.cmd(ee_delta=[0.0, 0.0, 0.03]))
    assert (_ee(st)[:, 2] > _ee(st0)[:, 2] + 0.01).all()


def test_faults_are_reported_and_recoverable(ready):
    c = ready.client
    if ready.emu is None:
        # A simulator has no fault source: it must never report one, and reset_faults is harmless.
        st = c.reset_faults()
        assert st["mode"] == "ok" and st["faults"] == []
        return
    cal = load_calibration(ready.cfg["server.dynamixel"]["calibration"])
    elbow = next(s for s in cal.joints if s.joint == "elbow_flex_joint")
    ready.emu.control.call("set_hardware_error", id=elbow.id, bits=1 << 5)  # overload
    assert wait_for(lambda: c.state()["mode"] == "fault", timeout=3.0)
    st = c.state()
    assert any(f.get("joint") == "elbow_flex_joint" and "overload" in f["message"] for f in st["faults"]), st["faults"]
    with pytest.raises(ServerError) as info:
        c.step(ready.cmd(ee_delta=[0.02, 0.0, 0.0]))
    assert info.value.code == "fault"
    st = c.reset_faults()
    assert st["faults"] == [] and st["mode"] == "ok"
    c.step(ready.cmd(head=[0.2, 0.0]))
