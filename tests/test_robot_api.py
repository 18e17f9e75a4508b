"""`robot_env.connect()` and the Robot API on the embedded simulator (realtime clock, real server process)."""
import time

import numpy as np
import pytest

import robot_env
from robot_env import MoveError
from robot_env.model.description import READY_ARM, TUCK_ARM


@pytest.fixture(scope="module")
def robot():
    with robot_env.connect() as r:
        yield r


def test_connect_spawns_a_realtime_simulator(robot):
    assert robot.backend == "kinematic" and robot.clock == "realtime"
    assert len(robot.joint_names) == 11


def test_move_joints_blocks_until_there_and_moves_smoothly(robot):
    robot.home()
    target = np.array(TUCK_ARM)
    t0 = time.monotonic()
    st = robot.move_joints(target, duration=1.0)
    took = time.monotonic() - t0
    np.testing.assert_allclose(st["q"][1:8], target, atol=0.01)
    assert took >= 1.0  # it streamed the interpolation over the requested duration
    st = robot.move_joints(READY_ARM)
    np.testing.assert_allclose(st["q"][1:8], READY_ARM, atol=0.01)


def test_move_ee_straight_to_target_and_by_delta(robot):
    robot.home()
    st = robot.move_ee(target=[0.65, 0.1, 0.75])
    np.testing.assert_allclose(st["ee"][:3], [0.65, 0.1, 0.75], atol=0.005)
    st = robot.move_ee(delta=[0.0, -0.1, 0.05])
    np.testing.assert_allclose(st["ee"][:3], [0.65, 0.0, 0.80], atol=0.005)


def test_gripper_torso_head(robot):
    assert robot.set_gripper(0.07)["q"][8] == pytest.approx(0.07, abs=0.002)
    assert robot.set_torso(0.25)["q"][0] == pytest.approx(0.25, abs=0.002)
    np.testing.assert_allclose(robot.set_head(0.4, -0.3)["q"][9:11], [0.4, -0.3], atol=0.01)


def test_drive_moves_the_base_then_stops(robot):
    x0, y0 = robot.state()["base"][:2]
    robot.drive(0.4, 0.0, 1.0)
    time.sleep(1.0)  # the base ramps down under its deceleration limit
    st = robot.state()
    assert np.hypot(st["base"][0] - x0, st["base"][1] - y0) > 0.2
    assert abs(st["base"][3]) < 1e-6


def test_bad_targets_are_refused_before_anything_moves(robot):
    robot.home()
    q0 = robot.state()["q"].copy()
    with pytest.raises(MoveError, match="out of reach"):
        robot.move_ee(target=[2.0, 0.0, 0.8])
    with pytest.raises(MoveError, match="outside its limits"):
        robot.move_joints([0.0, 5.0, 0, 0, 0, 0, 0])
    with pytest.raises(MoveError, match="outside"):
        robot.set_torso(1.0)
    with pytest.raises(ValueError, match="non-finite"):
        robot.move_joints([np.nan] * 7)
    with pytest.raises(ValueError):
        robot.drive(np.inf, 0, 1)
    np.testing.assert_allclose(robot.state()["q"], q0, atol=1e-9)


def test_estop_refuses_moves_until_cleared(robot):
    robot.estop()
    try:
        with pytest.raises(MoveError, match="e-stop"):
            robot.set_torso(0.2)
        assert robot.state()["mode"] == "estop"
    finally:
        robot.clear_estop()
    assert robot.set_torso(0.2)["mode"] == "ok"


def test_non_blocking_send_and_watchdog_backstop(robot):
    robot.home()
    robot.send(arm_velocity=[0.5, 0, 0, 0, 0, 0, 0])
    time.sleep(0.6)  # nothing more sent: the 0.25 s command watchdog holds the arm
    st = robot.state()
    assert st["mode"] == "watchdog"
    assert np.abs(st["dq"]).max() < 1e-6
    assert st["q"][1] > 0.05
    robot.home()
    assert robot.state()["mode"] == "ok"


def test_readme_script_runs_as_written():
    """The README's teleoperation script, verbatim from the README."""
    import pathlib
    import re
    readme = pathlib.Path(__file__).resolve().parent.parent / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    script = next(b for b in blocks if "robot_env.connect()" in b)
    exec(compile(script, "README-teleop", "exec"), {})
