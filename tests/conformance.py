"""The backend conformance suite: what every backend must do, through a real server process.

A base class (dm_env_rpc's compliance suites are the model): a backend's test module subclasses
`BackendConformance` and says how to start its server (`make_rig`); the tests read what the
backend's spec declares in `hello` (robots, channels, reset options, objects, cameras, the ready
pose, safety limits) and check the backend against it, rather than against a fixed list. Every
rig runs the realtime clock, so the watchdog counts. A new backend is done when its subclass passes.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from support import wait_for

from robot_env.bridge.client import RobotClient
from robot_env.bridge.protocol import VERSION
from robot_env.bridge.spawn import ServerProcess
from robot_env.control.commands import CHANNELS, RESET_OPTIONS
from robot_env.errors import ServerError
from robot_env.model.description import ARM, FETCH, HEAD, READY_ARM, READY_TORSO
from robot_env.model.kinematics import fk_frames

VEL = np.array([j.velocity for j in FETCH.joints])


class Rig:
    """A server process for one backend, a client, and how that backend's commands are shaped."""

    def __init__(self, cfg: dict, emu=None, faults=None):
        self.cfg = cfg
        self.emu = emu
        self.inject_fault = faults  # callable(rig) that latches a servo fault, or None: none possible
        self.server = ServerProcess(cfg, ready_timeout=60.0)
        self.client = self.connect()
        self.info = self.client.hello()
        self.spec = self.info["spec"]
        n = self.spec["num_robots"]
        self.rows = n if n > 1 else None

    def connect(self) -> RobotClient:
        return RobotClient(self.server.endpoint, timeout=20.0)

    def cmd(self, **channels) -> dict:
        """Channels as one robot's values; tiled to one row per robot for a server of N robots."""
        if self.rows is None:
            return channels
        return {k: np.tile(np.asarray(v, dtype=float), (self.rows, 1)) if np.ndim(v) else np.full(self.rows, v)
                for k, v in channels.items()}

    def close(self) -> None:
        self.client.close()
        self.server.close()
        if self.emu is not None:
            self.emu.close()


def _ee(st) -> np.ndarray:
    return np.atleast_2d(st["ee"])[:, :3]


def _excess(pos: np.ndarray, safety: dict) -> np.ndarray:
    lo = np.maximum(safety["workspace_min"], [-np.inf, -np.inf, safety["floor_height"]])
    return (np.maximum(lo - pos, 0) + np.maximum(pos - np.asarray(safety["workspace_max"]), 0)).sum(axis=-1)


class BackendConformance:
    """Subclass with `make_rig(tmp_path_factory) -> Rig` (a classmethod)."""

    @classmethod
    def make_rig(cls, tmp_path_factory) -> Rig:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def rig(cls, tmp_path_factory):
        r = cls.make_rig(tmp_path_factory)
        yield r
        r.close()

    @pytest.fixture
    def ready(self, rig):
        """Every test starts from a reset robot in mode ok."""
        c = rig.client
        st = c.state()
        if st["mode"] == "estop":
            c.clear_estop()
        if c.state()["faults"]:
            c.reset_faults()
        c.reset()
        return rig

    # -- the spec ----------------------------------------------------------------------------
    def test_hello_announces_a_consistent_spec(self, rig):
        info, spec = rig.info, rig.spec
        assert info["protocol"] == VERSION and info["backend"] == spec["kind"]
        assert info["clock"] == "realtime" and info["control_period"] == pytest.approx(0.04)
        assert spec["num_robots"] == info["num_robots"] >= 1
        assert info["description_hash"] == FETCH.hash() and info["joint_names"] == list(FETCH.names)
        for name, shape in spec["channels"].items():  # every channel is a protocol channel, same shape
            assert tuple(shape) == CHANNELS[name], name
        assert sorted(info["channels"]) == sorted(spec["channels"])
        for name, shape in spec["reset_options"].items():
            assert name in RESET_OPTIONS or "." in name, name  # protocol options, or per-object ones
        if spec["realtime_only"]:
            assert rig.info["clock"] == "realtime"
        safety = spec["safety"]
        assert safety["max_ee_step"] == info["max_ee_step"] > 0
        assert all(a < b for a, b in zip(safety["workspace_min"], safety["workspace_max"]))
        for name, fields in spec["objects"].items():
            assert set(fields) <= {"pos", "quat", "linvel", "angvel"}, name

    def test_reset_goes_to_the_ready_pose_the_spec_announces(self, ready):
        st = ready.client.state()
        assert st["mode"] == "ok" and not st["faults"]
        want = np.array(ready.spec["ready_ee"])
        np.testing.assert_allclose(want, fk_frames(READY_TORSO, list(READY_ARM))[0], atol=1e-9)
        np.testing.assert_allclose(_ee(st), np.broadcast_to(want, _ee(st).shape), atol=5e-3)
        assert np.atleast_2d(st["q"]).shape == (ready.rows or 1, len(FETCH.names))
        # objects in the state: exactly the ones the spec declares, with their fields
        assert set(st.get("objects") or {}) == set(ready.spec["objects"])

    # -- limits --------------------------------------------------------------------------------
    def test_targets_beyond_limits_are_clipped_flagged_and_never_reached(self, ready):
        c = ready.client
        lower, upper = FETCH.lower, FETCH.upper
        wild = ready.cmd(arm_position=upper[ARM] + 3.0, head=lower[HEAD] - 2.0, gripper=0.5, torso=-1.0)
        wild = {k: v for k, v in wild.items() if k in ready.spec["channels"]}
        st = c.step(wild)
        for flag in (f"{k}.position_limit" for k in wild):
            assert flag in st["clipped"], (flag, st["clipped"])
        for _ in range(20):
            st = c.step(wild)
            q, dq = np.atleast_2d(st["q"]), np.atleast_2d(st["dq"])
            assert (q >= lower - 2e-3).all() and (q <= upper + 2e-3).all()
            assert (np.abs(dq) <= VEL * 1.05 + 1e-3).all(), (st["time"], np.round(np.abs(dq) / VEL, 3))
        target = np.atleast_2d(st["target"])
        assert (target >= lower - 1e-9).all() and (target <= upper + 1e-9).all()

    def test_the_workspace_holds_whatever_channel_moves_the_gripper(self, ready):
        c = ready.client
        safety = ready.spec["safety"]
        down = np.array([0.0, 1.45, 0.0, 0.3, 0.0, 0.2, 0.0])  # the gripper low and close to the base
        for _ in range(80):
            st = c.step(ready.cmd(arm_position=down, torso=0.386))
        for _ in range(40):  # lower the torso: the gripper would go through the floor
            st = c.step(ready.cmd(torso=0.0))
            assert (_excess(_ee(st), safety) <= 5e-3).all()  # servo tracking lag at most
        assert "torso.workspace" in st["clipped"]
        c.reset()
        for _ in range(60):  # swing the arm back over the base
            st = c.step(ready.cmd(arm_velocity=[0, 1.0, 0, 0, 0, 0, 0]))
            assert (_excess(_ee(st), safety) <= 5e-3).all()

    def test_a_bad_command_is_refused_and_changes_nothing(self, ready):
        c = ready.client
        before = c.state()
        bad = ready.cmd(ee_delta=[0.01, 0.0, 0.0])
        bad["ee_delta"] = np.array(bad["ee_delta"], dtype=float)
        bad["ee_delta"][..., 1] = np.nan
        for cmd, code in ((bad, "bad_command"), ({"teleport": [1.0]}, "unknown_channel")):
            with pytest.raises(ServerError) as info:
                c.step(cmd)
            assert info.value.code == code
        with pytest.raises(ServerError) as info:
            c.reset(options={"initial_arm_position": [np.nan] * 7})
        assert info.value.code == "bad_options"
        after = c.state()
        np.testing.assert_array_equal(after["target"], before["target"])
        assert after["mode"] == "ok"

    # -- stopping ----------------------------------------------------------------------------
    def test_the_watchdog_holds_the_arm_when_commands_stop(self, ready):
        c = ready.client
        move = ready.cmd(arm_velocity=0.5 * VEL[ARM] * np.array([1, -1, 1, -1, 1, 1, 1]))
        for _ in range(5):
            st = c.step(move)
        assert np.abs(np.atleast_2d(st["dq"])[:, ARM]).max() > 0.05  # moving
        time.sleep(ready.info["watchdog_timeout"] + 0.3)
        assert c.state()["mode"] == "watchdog"
        assert wait_for(lambda: np.abs(np.atleast_2d(c.state()["dq"])[:, ARM]).max() < 1e-2, timeout=3.0)
        q0 = np.atleast_2d(c.state()["q"])[:, ARM]
        time.sleep(0.2)
        np.testing.assert_allclose(np.atleast_2d(c.state()["q"])[:, ARM], q0, atol=3e-3)  # holds
        assert c.step(ready.cmd(head=[0.1, 0.0]))["mode"] == "ok"  # a new command ends the hold

    def test_velocity_commands_lapse_unless_refreshed(self, ready):
        c = ready.client
        lapse = ready.spec["safety"]["velocity_timeout"]
        for _ in range(20):  # 0.8 s at 0.4 m/s
            c.step(ready.cmd(base_twist=[0.4, 0.0]))
        assert (np.atleast_2d(c.state()["base"])[:, 3] > 0.2).all()
        t0 = time.monotonic()
        while time.monotonic() - t0 < lapse + 0.4 / 0.75 + 0.5:  # only head commands: the twist lapses
            c.step(ready.cmd(head=[0.0, 0.0]))
        assert np.abs(np.atleast_2d(c.state()["base"])[:, 3]).max() < 1e-3

    def test_the_estop_latches_across_clients_until_cleared(self, ready):
        c = ready.client
        assert c.estop()["mode"] == "estop"
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

    def test_faults_are_reported_named_and_recoverable(self, ready):
        c = ready.client
        if ready.inject_fault is None:
            # No fault source (a simulator): it must never report one, and reset_faults is harmless.
            st = c.reset_faults()
            assert st["mode"] == "ok" and st["faults"] == []
            return
        joint = ready.inject_fault(ready)
        assert wait_for(lambda: c.state()["mode"] == "fault", timeout=3.0)
        faults = c.state()["faults"]
        assert any(f["joint"] == joint and joint in f["joints"] and f["servos"] for f in faults), faults
        with pytest.raises(ServerError) as info:
            c.step(ready.cmd(ee_delta=[0.02, 0.0, 0.0]))
        assert info.value.code == "fault"
        st = c.reset_faults()
        assert st["faults"] == [] and st["mode"] != "fault"
        c.step(ready.cmd(head=[0.2, 0.0]))
