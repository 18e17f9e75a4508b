"""Cameras on the hardware backend, without hardware: the real driver on the emulated servo bus (a pty,
in its own process) behind a real server subprocess, its cameras video files this test writes with
OpenCV (MJPG in .avi, which this OpenCV build both writes and reads), a named pipe that stops
delivering, and devices that do not exist."""
import json
import os
import subprocess
import sys
import threading
import time

import cv2  # the cameras extra: pip install 'robot-env[cameras]'
import gymnasium as gym
import numpy as np
import pytest
from support import wait_for

from robot_env import config
from robot_env.bridge.session import Session
from robot_env.errors import ConfigError, ServerError
from simulators.servo_bus import EmulatorProcess

CALIBRATION = config.load("fetch_dynamixel")["server.dynamixel"]["calibration"]
N_FRAMES = 24
# RGB colours of the head video's frames, far enough apart that MJPG's few levels of error cannot confuse them
PALETTE = [(10 * i, 240 - 10 * i, (70 * i) % 250) for i in range(N_FRAMES)]


def write_video(path, colors, size=(160, 120), fps=30.0) -> str:
    """One flat colour per frame (RGB), MJPG in .avi."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert w.isOpened(), "this OpenCV build cannot write MJPG .avi"
    for rgb in colors:
        img = np.empty((size[1], size[0], 3), np.uint8)
        img[:] = rgb[::-1]  # OpenCV writes BGR
        w.write(img)
    w.release()
    return str(path)


def write_config(path, port, cameras: dict, **dynamixel) -> str:
    """A hardware config: the shipped calibration, the emulator's pty, these cameras (device paths
    relative to the config file, as a user writes them). The loop's own faults (a slow loop, the
    servos' bus watchdog) are off and late replies are waited for longer: test_hardware.py tests
    those, and here they would only make the camera tests depend on a machine with a core to spare."""
    dynamixel = {"rest_pose": "none", "min_loop_fraction": 0, "bus_watchdog": 0, "reply_slack": 0.1, "retries": 5,
                 **dynamixel}
    lines = ["[server]", 'backend = "dynamixel"', 'clock = "realtime"', 'estop_file = ""', "",
             "[server.dynamixel]", f'serial_port = "{port}"', f'calibration = "{CALIBRATION}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in dynamixel.items()]
    for name, table in cameras.items():
        lines += ["", f"[server.dynamixel.cameras.{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    lines += ["", "[client]", "timeout = 30.0"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def mean_rgb(frame) -> np.ndarray:
    return frame.reshape(-1, 3).astype(float).mean(0)


class Pipe:
    """A camera that stops delivering: a named pipe fed the first frames of a video, then held open
    without more, so the capture thread's read blocks (as a hung USB camera's does)."""

    def __init__(self, path, video: str):
        os.mkfifo(path)
        self.path = str(path)
        data = open(video, "rb").read()
        self.fh = None
        self._head = data[: len(data) // 2]
        threading.Thread(target=self._feed, daemon=True).start()

    def _feed(self):
        self.fh = open(self.path, "wb")  # blocks until the camera opens the pipe
        self.fh.write(self._head)
        self.fh.flush()

    def close(self):
        if self.fh is None:  # never opened by a reader: unblock our own open
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError:
                pass
        time.sleep(0.05)
        if self.fh is not None:
            self.fh.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """The emulator, a driver server with four cameras, a client session on it."""
    d = tmp_path_factory.mktemp("hwcam")
    write_video(d / "head.avi", PALETTE)
    write_video(d / "short.avi", PALETTE[:6])
    pipe = Pipe(d / "stuck.pipe", write_video(d / "stuck_src.avi", PALETTE))
    emu = EmulatorProcess("fetch_dynamixel", link=str(d / "ttyDXL"))
    cameras = {
        "head": {"device": "head.avi", "width": 84, "height": 84, "fps": 30},
        "wrist": {"device": "short.avi", "width": 64, "height": 48, "fps": 30, "loop": False},
        "stuck": {"device": "stuck.pipe", "width": 84, "height": 84, "stall_timeout": 0.3},
        "missing": {"device": "/dev/video-robot-env-none", "open_timeout": 0.5},
    }
    cfg = write_config(d / "robot.toml", emu.path, cameras)
    session = Session(cfg)
    try:
        yield {"dir": d, "config": cfg, "session": session, "client": session.client, "emu": emu}
    finally:
        session.close()
        pipe.close()
        emu.close()


# -- config -----------------------------------------------------------------------------------------
def test_camera_tables_are_checked_and_device_paths_resolved_against_the_config(tmp_path):
    good = write_config(tmp_path / "a.toml", "/dev/ttyUSB0", {"head": {"device": "clips/head.avi", "fps": 15}})
    cams = config.load(good)["server.dynamixel"]["cameras"]
    assert cams == {"head": {"device": str(tmp_path / "clips" / "head.avi"), "fps": 15}}
    assert config.load(write_config(tmp_path / "i.toml", "/dev/ttyUSB0", {"h": {"device": 0}})
                       )["server.dynamixel"]["cameras"]["h"]["device"] == 0
    for table, wants in [({"fps": 30}, "needs a device"), ({"device": -1}, "device: expected a V4L2 index"),
                         ({"device": "x.avi", "widht": 84}, "unknown key(s) widht"),
                         ({"device": "x.avi", "width": 4}, "width: expected between 8 and 4096"),
                         ({"device": "x.avi", "fps": True}, "fps: expected between 1 and 240"),
                         ({"device": "x.avi", "fourcc": "MJPEG"}, "fourcc")]:
        bad = write_config(tmp_path / "b.toml", "/dev/ttyUSB0", {"head": table})
        with pytest.raises(ConfigError, match=r"\[server.dynamixel\] cameras: camera 'head': .*" + wants.split("(")[0]):
            config.load(bad)
    with pytest.raises(ConfigError, match="camera name 'he ad'"):
        config.load({"server": {"backend": "dynamixel"}, "server.dynamixel": {"cameras": {"he ad": {"device": 0}}}})


# -- the server ---------------------------------------------------------------------------------------
def test_hello_announces_the_cameras_in_the_simulators_camera_spec(rig):
    cams = rig["session"].info["spec"]["cameras"]
    assert cams["head"] == {"height": 84, "width": 84, "channels": 3, "dtype": "uint8"}
    assert cams["wrist"] == {"height": 48, "width": 64, "channels": 3, "dtype": "uint8"}
    assert set(cams) == {"head", "wrist", "stuck", "missing"}  # announced whether they deliver or not
    assert cams["missing"] == {"height": 480, "width": 640, "channels": 3, "dtype": "uint8"}  # the defaults


def test_frames_arrive_resized_with_the_colours_written_and_their_age_in_the_state(rig):
    client = rig["client"]
    seqs = []
    for _ in range(12):
        st = client.state(frames=["head"])
        frame = st["frames"]["head"]
        assert frame.shape == (1, 84, 84, 3) and frame.dtype == np.uint8
        cam = st["cameras"]["head"]
        assert cam["status"] == "ok" and cam["size"] == [160, 120]  # what the file delivers, resized
        assert 0 <= cam["age_ms"] < 1000  # within stall_timeout
        # the frame served is the one the state describes: frame k of the file is colour k (it loops)
        want = PALETTE[(cam["frames"] - 1) % N_FRAMES]
        np.testing.assert_allclose(mean_rgb(frame[0]), want, atol=6)
        assert np.ptp(frame[0].reshape(-1, 3), axis=0).max() <= 12  # a flat frame, not a blend
        seqs.append(cam["frames"])
        time.sleep(0.05)
    assert seqs == sorted(seqs) and seqs[-1] > seqs[0]  # new frames keep coming
    assert seqs[-1] > N_FRAMES or wait_for(lambda: client.state()["cameras"]["head"]["frames"] > N_FRAMES, 10)
    assert client.state()["cameras"]["head"]["fps"] > 0


def test_a_camera_that_stops_or_cannot_open_is_reported_and_refused_but_the_arm_moves(rig):
    client = rig["client"]
    assert wait_for(lambda: client.state()["cameras"]["stuck"]["status"] == "stalled", 10)
    assert wait_for(lambda: client.state()["cameras"]["wrist"]["status"] == "ended", 10)
    st = client.state()
    cams = st["cameras"]
    assert cams["stuck"]["frames"] > 0 and "no new frame" in cams["stuck"]["error"]
    assert cams["stuck"]["age_ms"] > 300
    assert cams["wrist"]["frames"] == 6 and "ended after 6 frame(s)" in cams["wrist"]["error"]
    assert cams["missing"]["status"] == "failed" and cams["missing"]["frames"] == 0
    assert "'/dev/video-robot-env-none'" in cams["missing"]["error"]
    assert "no such file or device" in cams["missing"]["error"]
    assert st["mode"] == "ok" and st["faults"] == []  # a camera is never a fault of the robot
    for name, status in (("stuck", "stalled"), ("wrist", "ended"), ("missing", "failed")):
        with pytest.raises(ServerError) as err:
            client.state(frames=[name])
        assert err.value.code == "camera_unavailable"
        assert f"camera {name!r}" in err.value.message and status in err.value.message
    # a step asking for a dead camera is refused before anything moves
    target = client.state()["target"].copy()
    with pytest.raises(ServerError) as err:
        client.step({"head": np.array([0.4, 0.0])}, frames=["head", "missing"])
    assert err.value.code == "camera_unavailable"
    np.testing.assert_array_equal(client.state()["target"], target)
    # ... and the arm goes on: the head joint follows a command, the live camera still serves
    client.command({"head": np.array([0.3, 0.0])})
    assert wait_for(lambda: abs(client.command({"head": np.array([0.3, 0.0])})["q"][9] - 0.3) < 0.01, 10)
    assert client.state(frames=["head"])["frames"]["head"].shape == (1, 84, 84, 3)
    assert client.state()["mode"] == "ok"


def _head_episode(env):
    """A policy's loop that asks for `head` frames: the same code on either backend."""
    obs, _ = env.reset(seed=0)
    images = [obs["head"]]
    for _ in range(3):
        obs, *_ = env.step(np.zeros(env.action_space.shape, np.float32))
        images.append(obs["head"])
    return env.observation_space["head"], images


@pytest.mark.timeout(180)
def test_a_policy_asking_for_head_frames_runs_unchanged_on_the_simulator_and_the_robot(rig, tmp_path):
    emu = EmulatorProcess("fetch_dynamixel", link=str(tmp_path / "ttyDXL"))
    try:
        robot = write_config(tmp_path / "robot.toml", emu.path,
                             {"head": {"device": str(rig["dir"] / "head.avi"), "width": 84, "height": 84}})
        spaces = {}
        for cfg in ("mujoco", robot):
            env = gym.make("robot_env/FetchReach-v0", config=cfg, cameras=["head"])
            try:
                spaces[cfg], images = _head_episode(env)
            finally:
                env.close()
            assert all(im.shape == (84, 84, 3) and im.dtype == np.uint8 for im in images)
            assert max(np.ptp(im) for im in images) > 0  # a picture, not a blank
        assert spaces["mujoco"] == spaces[robot]
        # the robot's frames are the file's colours
        assert min(np.abs(mean_rgb(images[-1]) - np.array(PALETTE)).max(1)) < 6
    finally:
        emu.close()


# -- the commands -------------------------------------------------------------------------------------
def test_robot_env_cameras_lists_what_each_device_delivers(rig, tmp_path):
    cfg = write_config(tmp_path / "probe.toml", "/dev/ttyUSB0", {
        "head": {"device": str(rig["dir"] / "head.avi"), "width": 84, "height": 84, "fps": 30},
        "missing": {"device": "/dev/video-robot-env-none", "open_timeout": 0.2}})
    out = subprocess.run([sys.executable, "-m", "robot_env", "cameras", "--config", cfg, "--seconds", "1", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr[-2000:]  # a camera failed
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    head, missing = rows["head"], rows["missing"]
    assert head["status"] == "ok" and head["delivered"] == [160, 120] and head["asked"] == [84, 84, 30]
    assert head["claimed_fps"] == pytest.approx(30.0) and head["backend"] == "FFMPEG"
    assert head["fps"] > 0 and head["frames"] > 1
    assert missing["status"] == "failed" and "no such file or device" in missing["error"]
    text = subprocess.run([sys.executable, "-m", "robot_env", "cameras", "--config", cfg, "--seconds", "0.5"],
                          capture_output=True, text=True, timeout=60).stdout
    assert "160x120" in text and "failed" in text
    sim = subprocess.run([sys.executable, "-m", "robot_env", "cameras", "--config", "sim"],
                         capture_output=True, text=True, timeout=60)
    assert sim.returncode == 2 and "no camera devices" in sim.stderr


@pytest.mark.timeout(120)
def test_record_with_a_camera_writes_its_frames_from_a_running_server(rig, tmp_path):
    from robot_env.recording import read_recording
    out = tmp_path / "cam.mcap"
    run = subprocess.run([sys.executable, "-m", "robot_env", "record", "--endpoint", rig["client"].endpoint,
                          "--out", str(out), "--duration", "2", "--camera", "head", "--camera-rate", "25"],
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "camera head at 25 Hz:" in run.stdout
    rec = read_recording(out)
    times, frames = rec.frames("head")
    assert frames.shape[1:] == (84, 84, 3) and len(frames) > 5
    assert np.all(np.diff(times) > 0)  # capture times, each frame once
    for f in frames:
        assert np.abs(mean_rgb(f) - np.array(PALETTE)).max(1).min() < 6
    stats = rec.events["/recorder/frames"][-1]["cameras"]["head"]
    assert stats["frames"] == len(frames)  # every frame the poller took reached the file
    assert stats["ticks"] == stats["frames"] + stats["dropped"]
    print(f"\nrecorded head 84x84 at 25 Hz for 2 s: {stats}")
    bad = subprocess.run([sys.executable, "-m", "robot_env", "record", "--endpoint", rig["client"].endpoint,
                          "--out", str(tmp_path / "x.mcap"), "--duration", "1", "--camera", "nose"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "nose" in bad.stderr and "head" in bad.stderr
    assert not (tmp_path / "x.mcap").exists()


# -- the servo loop's rate ------------------------------------------------------------------------------
def _cpu(pid: int) -> tuple[float, float, float]:
    """(s the whole process ran, s its servo-loop thread ran, s that thread waited for a CPU), Linux.
    The process's time includes the camera's threads (OpenCV's decoder threads come and go)."""
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    total = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            if open(f"/proc/{pid}/task/{task}/comm").read().strip() == "dynamixel-loop":
                run, wait, _ = open(f"/proc/{pid}/task/{task}/schedstat").read().split()
                return total, int(run) * 1e-9, int(wait) * 1e-9
        except OSError:
            continue
    raise AssertionError("the server has no thread named dynamixel-loop")


def _loop_rate(session, seconds: float) -> tuple[float, tuple]:
    """The loop's cycles/s over a window, and ms per s: the server process on a CPU, its loop thread
    on a CPU, its loop thread waiting for one."""
    pid = session.server.proc.pid
    a, ca = session.client.state(), _cpu(pid)
    time.sleep(seconds)
    b, cb = session.client.state(), _cpu(pid)
    dt = b["time"] - a["time"]
    return ((b["diagnostics"]["cycles"] - a["diagnostics"]["cycles"]) / dt,
            tuple(round(1e3 * (y - x) / dt) for x, y in zip(ca, cb)))


@pytest.mark.timeout(240)
def test_the_servo_loop_keeps_its_rate_with_a_camera_running(tmp_path):
    """The driver's 200 Hz loop, measured over the same emulator with no camera and with a 640x480
    camera at 30 frames/s (decoded, converted on its own thread), alternately. Other work on the
    machine moves both rates (the loop waits for a CPU), so the best window of each is compared."""
    write_video(tmp_path / "vga.avi", PALETTE, size=(640, 480))
    emu = EmulatorProcess("fetch_dynamixel", link=str(tmp_path / "ttyDXL"))
    rates: dict = {"none": [], "camera": []}
    cpu: dict = {"none": [], "camera": []}
    try:
        configs = {"none": write_config(tmp_path / "none.toml", emu.path, {}),
                   "camera": write_config(tmp_path / "cam.toml", emu.path,
                                          {"head": {"device": "vga.avi", "width": 640, "height": 480, "fps": 30}})}
        for _ in range(3):
            for kind, cfg in configs.items():
                session = Session(cfg)
                try:
                    time.sleep(0.5)  # past start-up
                    rate, threads = _loop_rate(session, 2.0)
                    rates[kind].append(round(rate, 1))
                    cpu[kind].append(threads)
                    if kind == "camera":
                        cam = session.client.state()["cameras"]["head"]
                        assert cam["status"] == "ok" and cam["frames"] > 30
                finally:
                    session.close()
    finally:
        emu.close()
    none, cam = max(rates["none"]), max(rates["camera"])
    print(f"\ndriver loop rate, best of 3 windows of 2 s: {none:.1f} Hz without a camera {rates['none']}, "
          f"{cam:.1f} Hz with a 640x480 camera at 30 fps {rates['camera']} (ratio {cam / none:.3f}); "
          f"ms per s (server process on a CPU, its loop thread on a CPU, the loop waiting for a CPU): "
          f"without {cpu['none']}, with {cpu['camera']}")
    assert cam / none > 0.8
