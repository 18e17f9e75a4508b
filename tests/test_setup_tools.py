"""`robot-env calibrate` and `setup-servos` against the emulated bus (scripted answers at the prompts)."""
import shutil

import pytest

from drivers import calibrate, setup_servos
from drivers.bus import BusError, DynamixelBus
from drivers.calibration import load_calibration
from robot_env import config
from simulators.servo_bus import ServoBusEmulator

SHIPPED = config.load("fetch_dynamixel")["server.dynamixel"]["calibration"]


def test_calibrate_records_zero_and_ranges_into_the_file(tmp_path):
    path = tmp_path / "cal.toml"
    shutil.copyfile(SHIPPED, path)
    cal = load_calibration(path)
    zeros = {s.id: s.zero + 17 * (i + 1) for i, s in enumerate(cal.joints)}
    emu = ServoBusEmulator({s.id: s.model_number for s in cal.servos}, initial_positions=zeros)
    port = emu.start()
    elbow = cal.joints[4]
    try:
        with DynamixelBus(port) as bus:
            def ask(prompt):
                if "range" in prompt:  # the user sweeps the elbow by hand: the servo reports it
                    for t in (zeros[elbow.id] - 300, zeros[elbow.id] + 450, zeros[elbow.id]):
                        with emu._lock:
                            emu.servo(elbow.id).pos = float(t)
                            emu.servo(elbow.id)._publish(0.0)
                        import time
                        time.sleep(0.1)
                return ""
            values = calibrate.record(bus, cal, ask=ask, say=lambda *a: None)
            assert all(emu.servo(s.id).get("torque_enable") == 0 for s in cal.servos)
    finally:
        emu.stop()
    assert values["elbow_flex_joint"]["zero"] == zeros[elbow.id]
    lo, hi = values["elbow_flex_joint"]["lower"], values["elbow_flex_joint"]["upper"]
    assert lo == pytest.approx(-450 / elbow.ticks_per_unit, abs=2e-3)  # direction -1 flips the sweep
    assert hi == pytest.approx(300 / elbow.ticks_per_unit, abs=2e-3)
    calibrate.update_file(path, {j: v for j, v in values.items() if j == "elbow_flex_joint"})
    new = load_calibration(path)
    e = new.joints[4]
    assert (e.zero, round(e.lower, 4), round(e.upper, 4)) == (zeros[elbow.id], lo, hi)
    assert (path.parent / "cal.toml.bak").exists()
    assert "# Joint <-> servo map" in path.read_text()  # comments kept


def test_update_file_refuses_an_invalid_result(tmp_path):
    path = tmp_path / "cal.toml"
    shutil.copyfile(SHIPPED, path)
    before = path.read_text()
    with pytest.raises(Exception):
        calibrate.update_file(path, {"elbow_flex_joint": {"lower": 1.0, "upper": 0.5}})
    assert path.read_text() == before


def test_setup_servos_assigns_id_and_baud_to_a_fresh_servo():
    emu = ServoBusEmulator({1: 1020}, baud=57600)  # factory default: id 1 at 57600
    port = emu.start()
    try:
        report = setup_servos.assign(port, 7, 1_000_000, expect_model=1020)
        assert "id 1 @ 57600 -> id 7 @ 1000000" in report
        with DynamixelBus(port, 1_000_000) as bus:
            assert bus.ping(7)[0] == 1020
    finally:
        emu.stop()


def test_setup_servos_refuses_two_servos_and_wrong_model():
    emu = ServoBusEmulator({1: 1020, 2: 1020}, baud=57600)
    port = emu.start()
    try:
        with pytest.raises(BusError, match="connect only the one"):
            setup_servos.assign(port, 7, 1_000_000)
    finally:
        emu.stop()
    emu = ServoBusEmulator({1: 1120}, baud=57600)
    port = emu.start()
    try:
        with pytest.raises(BusError, match="XM540-W270, expected XM430-W350"):
            setup_servos.assign(port, 7, 1_000_000, expect_model=1020)
    finally:
        emu.stop()


def test_setup_servos_cli_walks_the_calibration(tmp_path):
    """The real terminal program: answers at its prompts through stdin, a fresh servo per joint."""
    import subprocess
    import sys
    cfg = tmp_path / "robot.toml"
    cal = tmp_path / "cal.toml"
    shutil.copyfile(SHIPPED, cal)
    cfg.write_text('[server]\nbackend = "dynamixel"\n[server.dynamixel]\ncalibration = "cal.toml"\n')
    emu = ServoBusEmulator({1: 1120}, baud=57600)  # a fresh XM540-W270, as the torso's
    port = emu.start()
    try:
        out = subprocess.run([sys.executable, "-m", "robot_env", "setup-servos", "--config", str(cfg),
                              "--serial-port", port, "--joint", "torso_lift_joint"],
                             input="\n", capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "id 1 @ 57600 -> id 1 @ 1000000" in out.stdout and "1 servo(s) set up" in out.stdout
        assert emu.servo(1).get("baud_rate") == 3
    finally:
        emu.stop()
