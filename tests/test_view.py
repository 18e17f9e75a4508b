"""The Rerun view: `robot-env view` and `plot --rrd` as real subprocesses against real server processes,
their .rrd files read back with Rerun's own reader (rerun.chunk.RrdReader): entities, row counts,
timestamps, values and image content. Headless: nothing here needs a display."""
import os
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest

rr = pytest.importorskip("rerun")
pytest.importorskip("mcap")

import gymnasium as gym  # noqa: E402

import robot_env  # noqa: E402
from robot_env import config  # noqa: E402
from robot_env.bridge.client import RobotClient  # noqa: E402
from robot_env.bridge.spawn import ServerProcess  # noqa: E402
from robot_env.envs import RecordEpisodes  # noqa: E402
from robot_env.model.description import JOINTS  # noqa: E402
from robot_env.recording import read_recording  # noqa: E402
from robot_env.recording.rerun_log import RerunLog, new_stream  # noqa: E402

NAMES = [j.name for j in JOINTS]
ARM_A = [0.4, -0.5, 0.2, 1.4, -0.2, 0.8, 0.3]


def cli(*args, timeout=90, env=None):
    return subprocess.run([sys.executable, "-m", "robot_env", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def start_view(*args):
    """`robot-env view ...` as a subprocess, returned once it says it is viewing."""
    proc = subprocess.Popen([sys.executable, "-m", "robot_env", "view", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 90)  # a guard against a hang, not a time limit
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("VIEWING"):
        proc.kill()
        raise AssertionError(f"view did not start: {line!r} {proc.communicate(timeout=10)}")
    proc.first_line = line
    return proc


def finish(proc, timeout=60):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


# -- reading an .rrd back with Rerun's own API ----------------------------------------------------------
def rrd_chunks(path):
    return [ch for ch in rr.chunk.RrdReader(path).stream()]


def rows(chunks):
    """entity -> rows logged on the timelines (static rows, e.g. series styles, left out)."""
    c = Counter()
    for ch in chunks:
        if not ch.is_static:
            c[ch.entity_path] += ch.num_rows
    return c


def static_entities(chunks):
    return {ch.entity_path for ch in chunks if ch.is_static}


def column(chunks, entity, name, index="time"):
    """(index values, column values) of one entity's rows, in index order."""
    t, v = [], []
    for ch in chunks:
        if ch.entity_path == entity and not ch.is_static:
            rb = ch.to_record_batch()
            t += rb.column(index).cast("int64").to_pylist()
            v += rb.column(name).to_pylist()
    order = np.argsort(t, kind="stable")
    return np.array(t)[order], [v[i] for i in order]


def scalars(chunks, entity, index="time"):
    t, v = column(chunks, entity, "Scalars:scalars", index)
    return t, np.array([x[0] for x in v])


def images(chunks, entity):
    _, v = column(chunks, entity, "Image:buffer")
    _, f = column(chunks, entity, "Image:format")
    return [np.array(b[0], np.uint8).reshape(fm[0]["height"], fm[0]["width"], -1) for b, fm in zip(v, f)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- servers ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim_server():
    srv = ServerProcess(config.load("sim", {"server": {"clock": "realtime"}}))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def mujoco_server():
    srv = ServerProcess(config.load("mujoco", {"server": {"clock": "realtime"}}))
    yield srv
    srv.close()


def client_toml(tmp_path, endpoint):
    path = tmp_path / "client.toml"
    path.write_text(f'[client]\nendpoint = "{endpoint}"\ntimeout = 2.0\n')
    return path


# -- live view -------------------------------------------------------------------------------------------
def test_view_saves_a_driven_server_without_taking_its_lease(sim_server, tmp_path):
    out = tmp_path / "sim.rrd"
    proc = start_view("--endpoint", sim_server.endpoint, "--save", out, "--duration", 2)
    try:
        with robot_env.connect(client_toml(tmp_path, sim_server.endpoint)) as robot:
            lease = robot.client.acquire()  # not forced: free, so the view holds no lease
            assert lease["yours"], lease
            robot.move_joints(ARM_A, duration=0.6)
            final = robot.state()
            code, stdout, stderr = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, stderr
    summary = stdout.strip().splitlines()[-1]
    assert summary.startswith("viewed "), stdout
    logged = int(summary.split()[1])
    chunks = rrd_chunks(out)
    n = rows(chunks)
    # every state the view logged is in the file, one row per joint and per target
    for name in NAMES:
        assert n[f"/joints/{name}/position"] == logged and n[f"/joints/{name}/target"] == logged, (name, n)
    # a 25 Hz server (more while commands come) over ~2 s, thinned to at most --rate 50 per second
    assert 10 <= logged <= 50 * 2 * 1.2 + 2, logged
    assert n["/scene/gripper"] == logged and n["/scene/arm"] == logged and n["/latency/stream_ms"] == logged
    assert n["/latency/send_to_apply_ms"] >= 5  # the driver's commands, from the command stream
    assert n["/log/mode"] >= 1 and not any(e.startswith("/camera") for e in n)  # the kinematic sim has none
    # the driver's motion, as the viewer saw it: the targets reach ARM_A and the joints follow
    for j, want in enumerate(ARM_A, start=1):
        _, target = scalars(chunks, f"/joints/{NAMES[j]}/target")
        _, pos = scalars(chunks, f"/joints/{NAMES[j]}/position")
        assert target[-1] == pytest.approx(want, abs=1e-6)
        assert pos[-1] == pytest.approx(float(final["q"][j]), abs=2e-2)
        assert np.ptp(pos) > 0.05 or abs(want - pos[0]) < 0.05  # it moved while watched
    # on the recording's timeline: the server's sample times, increasing
    t, _ = scalars(chunks, "/joints/torso_lift_joint/position")
    assert np.all(np.diff(t) > 0) and abs(t[-1] / 1e9 - time.time()) < 120


def test_view_of_mujoco_shows_cameras_objects_and_the_table(mujoco_server, tmp_path):
    out = tmp_path / "mujoco.rrd"
    proc = start_view("--endpoint", mujoco_server.endpoint, "--save", out, "--duration", 2, "--camera", "head",
                      "--camera-rate", 5)
    code, stdout, stderr = finish(proc)
    assert code == 0, stderr
    chunks = rrd_chunks(out)
    n = rows(chunks)
    assert 3 <= n["/camera/head"] <= 5 * 2 + 2, n  # 5 Hz for 2 s
    assert "/camera/external" not in n  # only the camera asked for
    assert n["/latency/frames_rtt_ms"] == n["/camera/head"]
    assert "/scene/table" in static_entities(chunks)  # from the spec's scene_info
    assert n["/scene/objects/object0"] == n["/joints/torso_lift_joint/position"] > 10
    frames = images(chunks, "/camera/head")
    assert all(f.shape == (84, 84, 3) for f in frames)
    # not blank, and the picture the server renders: the robot is at rest, so a frame asked for now matches
    with RobotClient(mujoco_server.endpoint, timeout=5.0) as c:
        c.hello()
        st = c.state(frames=["head"])
        now = np.array(st["frames"]["head"][0])
        obj = np.asarray(st["objects"]["object0"]["pos"])
    assert frames[-1].std() > 10
    assert np.abs(frames[-1].astype(int) - now.astype(int)).mean() < 3.0
    _, centers = column(chunks, "/scene/objects/object0", "Boxes3D:centers")
    np.testing.assert_allclose(centers[-1][0], obj, atol=2e-3)


def test_view_ends_with_status_3_when_the_server_is_lost(tmp_path):
    srv = ServerProcess(config.load("sim", {"server": {"clock": "realtime"}}))
    out = tmp_path / "lost.rrd"
    try:
        proc = start_view("--endpoint", srv.endpoint, "--save", out, "--server-timeout", 0.3)
        time.sleep(0.5)
        srv.proc.kill()
        code, stdout, stderr = finish(proc, timeout=30)
    finally:
        srv.close()
    assert code == 3 and "stopped answering" in stderr and str(out) in stderr, (code, stderr)
    assert rows(rrd_chunks(out))["/joints/torso_lift_joint/position"] >= 5  # what arrived is kept, readable


def test_web_viewer_serves_its_page_and_data_on_loopback(sim_server, tmp_path):
    web, grpc = free_port(), free_port()
    proc = start_view("--endpoint", sim_server.endpoint, "--web", "--web-port", web, "--grpc-port", grpc,
                      "--duration", 20)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=10) as page:
            html = page.read().decode(errors="replace")
        assert page.status == 200 and "rerun" in html.lower()
        with socket.create_connection(("127.0.0.1", grpc), timeout=5):
            pass  # the data's gRPC server listens on loopback (--bind's default)
    finally:
        proc.terminate()
        code, stdout, stderr = finish(proc, timeout=30)
    assert code == 0, stderr  # SIGTERM: a clean stop
    line = proc.first_line
    assert f"http://127.0.0.1:{web}/?url=" in line and f"127.0.0.1%3A{grpc}" in line, line
    assert stdout.strip().startswith("viewed "), stdout


def test_bad_input_is_a_clear_error_and_writes_nothing(mujoco_server, tmp_path):
    out = tmp_path / "x.rrd"
    port = free_port()
    t0 = time.monotonic()
    res = cli("view", "--endpoint", f"tcp://127.0.0.1:{port}", "--save", out, timeout=60)
    assert res.returncode == 2 and "no reply from the robot server" in res.stderr, res.stderr
    assert time.monotonic() - t0 < 30 and not out.exists()
    res = cli("view", "--config", "sim", "--save", out)
    assert res.returncode == 2 and "names no [client] endpoint" in res.stderr and not out.exists()
    res = cli("view", "--endpoint", mujoco_server.endpoint, "--save", out, "--camera", "nope")
    assert res.returncode == 2 and "nope" in res.stderr and "head, external, wrist" in res.stderr, res.stderr
    assert not out.exists()
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    res = cli("view", "--endpoint", mujoco_server.endpoint, env=env)  # a native viewer, without a display
    assert res.returncode == 2 and "no display" in res.stderr and "--web" in res.stderr and "--save" in res.stderr
    assert "Traceback" not in res.stderr
    notmcap = tmp_path / "notes.mcap"
    notmcap.write_text("not a recording\n" * 10)
    res = cli("plot", notmcap, "--rrd", out)
    assert res.returncode == 2 and "not an MCAP recording" in res.stderr and not out.exists(), res.stderr
    with socket.socket() as taken:  # a port someone else listens on: said before anything starts
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        res = cli("view", "--endpoint", mujoco_server.endpoint, "--web", "--grpc-port", taken.getsockname()[1])
    assert res.returncode == 2 and "is taken" in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = cli("view", "--endpoint", mujoco_server.endpoint, "--save", tmp_path / "no" / "such" / "dir.rrd")
    assert res.returncode == 2 and "not a writable directory" in res.stderr, res.stderr


XVFB = shutil.which("Xvfb")


def processes_with(arg: str) -> list[int]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if arg.encode() in fh.read().split(b"\0"):
                    out.append(int(pid))
        except OSError:
            pass
    return out


@pytest.mark.skipif(XVFB is None, reason="Xvfb is not installed (apt-get install -y xvfb; .ci/run does)")
def test_a_native_viewer_is_spawned_where_there_is_a_display(sim_server, tmp_path):
    """The default: Rerun's own viewer, spawned on a display (here a virtual one), receives the stream."""
    n = next(i for i in range(150, 250) if not os.path.exists(f"/tmp/.X11-unix/X{i}"))
    xvfb = subprocess.Popen([XVFB, f":{n}", "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    viewers = []
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(f"/tmp/.X11-unix/X{n}") and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {k: v for k, v in os.environ.items() if k != "WAYLAND_DISPLAY"}
        env["DISPLAY"] = f":{n}"
        # to files, not pipes: the viewer Rerun spawns is detached, and holds our output open after the view exits
        with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
            code = subprocess.run([sys.executable, "-m", "robot_env", "view", "--endpoint", sim_server.endpoint,
                                   "--grpc-port", str(port), "--duration", "4"], stdout=out, stderr=err, env=env,
                                  timeout=90).returncode
        viewers = processes_with(f"--port={port}")  # the viewer Rerun spawned (detached: it outlives the view)
    finally:
        for pid in viewers:
            os.kill(pid, 15)
        xvfb.terminate()
        xvfb.wait(10)
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert code == 0, stderr
    assert f"native viewer on port {port}" in stdout and "could not deliver" not in stderr, stderr
    assert viewers, "no Rerun viewer process is listening on the view's port"
    logged = int(stdout.strip().splitlines()[-1].split()[1])
    assert logged >= 10


# -- conversion ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def push_recording(tmp_path_factory):
    """A FetchPush episode on mujoco recorded with the external camera's frames."""
    path = tmp_path_factory.mktemp("rrd") / "push.mcap"
    # a chunk per drain (flush_interval 0): a file cut anywhere keeps the chunks before the cut
    env = RecordEpisodes(gym.make("robot_env/FetchPush-v0", cameras=["external"]), record=path, flush_interval=0.0)
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        env.step(rng.uniform(-1, 1, 4).astype(np.float32))
    env.close()
    return path


def test_plot_rrd_converts_a_recording_on_its_own_timestamps(push_recording, tmp_path):
    out = tmp_path / "push.rrd"
    res = cli("plot", push_recording, "--rrd", out)
    assert res.returncode == 0, res.stderr
    rec = read_recording(push_recording)
    times, frames = rec.frames("external")
    assert f"wrote {out}: {len(rec.states)} states" in res.stdout and not (tmp_path / "push.png").exists()
    chunks = rrd_chunks(out)
    n = rows(chunks)
    ts, q = rec.array("ts"), rec.array("q")
    for j, name in enumerate(NAMES):  # one row per recorded state, exactly, with its value and its stamp
        t, v = scalars(chunks, f"/joints/{name}/position")
        assert len(v) == len(rec.states)
        np.testing.assert_allclose(t / 1e9, np.sort(ts), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(v, q[np.argsort(ts, kind="stable"), j])
    seqs, _ = scalars(chunks, "/joints/gripper_joint/position", index="seq")  # and on the stream's numbers
    np.testing.assert_array_equal(seqs, sorted(s["seq"] for s in rec.states))
    assert n["/camera/external"] == len(frames) > 10
    got = images(chunks, "/camera/external")
    np.testing.assert_array_equal(got[0], frames[np.argsort(times)[0]])  # pixels as recorded
    assert n["/scene/objects/object0"] == len(rec.states)
    assert n["/latency/send_to_apply_ms"] == len(rec.commands)
    assert "/scene/table" in static_entities(chunks)  # the recording keeps the scene's geometry
    # a recording cut short: what is intact is converted, with a warning and status 3
    cut = tmp_path / "cut.mcap"
    data = push_recording.read_bytes()
    cut.write_bytes(data[:int(len(data) * 0.6)])
    res = cli("plot", cut, "--rrd", tmp_path / "cut.rrd")
    assert res.returncode == 3 and "warning:" in res.stderr, res.stderr
    intact = read_recording(cut)
    assert 0 < rows(rrd_chunks(tmp_path / "cut.rrd"))["/joints/torso_lift_joint/position"] == len(intact.states)


def test_the_mapping_skips_malformed_values_instead_of_logging_garbage(tmp_path):
    out = tmp_path / "crafted.rrd"
    stream = new_stream()
    stream.save(out)
    info = {"joint_names": NAMES, "scene_info": {"table": {"center": [1, 2], "half_size": "big"}}}
    log = RerunLog(stream, info)
    log.setup()  # a table of the wrong shape: not drawn
    good = {"ts": 1000.0, "seq": 1, "time": 0.0, "q": [0.1] * 11, "target": [0.2] * 11,
            "ee": [0.5, 0, 0.8, 0, 0, 0, 1], "mode": "ok", "objects": {"o": {"pos": [1, 0, 0.4], "quat": [0, 0, 0, 1]}}}
    assert log.state(good)
    assert not log.state({**good, "ts": float("nan")})  # no usable time: nothing logged
    assert log.state({**good, "ts": 1001.0, "seq": 2, "q": [0.1] * 3, "target": [float("nan")] * 11,
                      "ee": ["x"], "objects": {"o": {"pos": [float("inf"), 0, 0]}, "p": "junk"},
                      "mode": "fault", "faults": [{"code": "overload", "joint": "elbow_flex_joint"}]})
    assert log.frames({"cam": np.zeros((0, 4, 3), np.uint8), "bad": np.zeros((4, 4, 2), np.uint8)}, 1002.0) == 0
    log.flush()  # the buffered scalars
    stream.flush()
    stream.disconnect()
    chunks = rrd_chunks(out)
    n = rows(chunks)
    assert n["/joints/torso_lift_joint/position"] == 1 and "/joints/torso_lift_joint/target" in n
    assert n["/joints/torso_lift_joint/target"] == 1  # the NaN targets were left out
    assert n["/scene/gripper"] == 1 and n["/scene/objects/o"] == 1 and "/scene/objects/p" not in n
    assert "/scene/table" not in static_entities(chunks) and not any(e.startswith("/camera") for e in n)
    _, texts = column(chunks, "/log/mode", "TextLog:text")
    assert [t[0] for t in texts] == ["mode ok", "mode fault"]
    _, faults = column(chunks, "/log/faults", "TextLog:text")
    assert "overload elbow_flex_joint" in faults[-1][0]


# -- teleop --view ---------------------------------------------------------------------------------------
def test_teleop_view_logs_the_states_it_drives(sim_server, tmp_path):
    from test_teleop import TMUX, Terminal, client_config  # the same terminal rig
    if TMUX is None:
        pytest.skip("tmux is not installed (apt-get install -y tmux; .ci/run does)")
    out = tmp_path / "teleop.rrd"
    term = Terminal(tmp_path, "view", ["--config", client_config(tmp_path, sim_server.endpoint), "--view", str(out)])
    try:
        term.wait_screen("states, 0 frame sets; saving to", timeout=20)  # the view's line
        with RobotClient(sim_server.endpoint, timeout=2.0) as c:
            before = c.state()["ee"][2]
            term.hold("r", 0.6)  # gripper up
            time.sleep(0.6)
            after = c.state()["ee"][2]
        term.keys("q")
        assert term.exit_code(timeout=10) == 0, term.stderr()
        screen = term.wait_screen("viewed ", timeout=5)
    finally:
        term.close()
    assert after - before > 0.02
    chunks = rrd_chunks(out)
    n = rows(chunks)
    logged = int(screen.split("viewed ", 1)[1].split()[0])
    assert n["/joints/shoulder_lift_joint/position"] == logged > 10, (n, screen)
    _, z = column(chunks, "/scene/gripper", "Points3D:positions")
    zs = [p[0][2] for p in z]
    assert zs[-1] - zs[0] == pytest.approx(after - before, abs=0.01)  # the jog, as teleop read it
