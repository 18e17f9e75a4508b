"""Every backend in the registry through the conformance suite (tests/conformance.py).

One subclass per backend (and per shape that matters: the kinematic simulator with one robot and
with three); a test checks that no backend the registry names goes without one.
"""
import pytest
from conformance import BackendConformance, Rig

from drivers.calibration import load_calibration
from robot_env import config as config_mod
from robot_env.backends.registry import BACKENDS, backend_class
from simulators.servo_bus import EmulatorProcess

REALTIME = {"server": {"clock": "realtime"}}


class TestKinematic(BackendConformance):
    @classmethod
    def make_rig(cls, tmp_path_factory):
        return Rig(config_mod.load("sim", REALTIME))


class TestKinematicThreeRobots(BackendConformance):
    @classmethod
    def make_rig(cls, tmp_path_factory):
        return Rig(config_mod.load("sim", {**REALTIME, "server.kinematic": {"num_robots": 3}}))


class TestMujoco(BackendConformance):
    @classmethod
    def make_rig(cls, tmp_path_factory):
        # the empty scene: the wild moves of the suite would sweep the arm through a table
        return Rig(config_mod.load("mujoco", {**REALTIME, "server.mujoco": {"scene": "empty"}}))


class TestMujocoThreeRobots(BackendConformance):
    @classmethod
    def make_rig(cls, tmp_path_factory):
        return Rig(config_mod.load("mujoco", {**REALTIME, "server.mujoco": {"num_robots": 3, "scene": "empty"}}))


def _overload_the_elbow(rig) -> str:
    cal = load_calibration(rig.cfg["server.dynamixel"]["calibration"])
    elbow = next(s for s in cal.joints if s.joint == "elbow_flex_joint")
    rig.emu.control.call("set_hardware_error", id=elbow.id, bits=1 << 5)  # overload: a shutdown bit
    return elbow.joint


class TestDynamixelOnTheEmulatedBus(BackendConformance):
    @classmethod
    def make_rig(cls, tmp_path_factory):
        tmp = tmp_path_factory.mktemp("dynamixel")
        emu = EmulatorProcess("fetch_dynamixel", link=str(tmp / "ttyDXL"), control=True)
        cfg = config_mod.load("fetch_dynamixel", {"server.dynamixel": {"serial_port": emu.path},
                                                  "server": {"estop_file": str(tmp / "estop")}})
        return Rig(cfg, emu=emu, faults=_overload_the_elbow)


TESTED = {backend_class("kinematic"), backend_class("dynamixel"), backend_class("mujoco")}


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_registered_backend_has_a_conformance_subclass(name):
    assert backend_class(name) in TESTED, f"backend {name!r} has no BackendConformance subclass"
