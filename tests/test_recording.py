"""Recording, replay and plots over real server processes and sockets (robot_env.recording, robot-env
record/replay/plot). Files are read back with the `mcap` library's own readers, not only ours."""
import json
import select
import struct
import subprocess
import sys
import threading
import time

import gymnasium as gym
import numpy as np
import pytest

mcap_reader = pytest.importorskip("mcap.reader")
from mcap.stream_reader import StreamReader  # noqa: E402

import robot_env  # noqa: E402
from robot_env import config  # noqa: E402
from robot_env.bridge.spawn import ServerProcess  # noqa: E402
from robot_env.envs import RecordEpisodes  # noqa: E402
from robot_env.recording import Recorder, RecordingError, read_recording, replay, replay_events  # noqa: E402

ARM_A = [0.4, -0.5, 0.2, 1.4, -0.2, 0.8, 0.3]


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "robot_env", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def mcap_messages(path, topic=None):
    """[(topic, decoded JSON, log_time, publish_time, sequence)] via the mcap library's reader."""
    with open(path, "rb") as fh:
        return [(ch.topic, json.loads(m.data), m.log_time, m.publish_time, m.sequence)
                for _, ch, m in mcap_reader.make_reader(fh).iter_messages(topics=topic)]


def post_states(states, commands):
    """For each command, the q of the state sampled right after it (seq = after + 1)."""
    by_seq = {s["seq"]: s for s in states}
    return np.array([by_seq[c["after"] + 1]["q"] for c in commands])


# -- fixtures: one realtime session through connect(), one lockstep session through the env wrapper --
@pytest.fixture(scope="module")
def rt_recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "robot.mcap"
    with robot_env.connect() as robot:
        with Recorder(robot, path) as rec:
            assert rec.running and rec.states >= 1  # start() returns with the subscription live
            robot.move_joints(ARM_A, duration=0.6)
            robot.set_gripper(0.06)
            robot.set_head(0.3, -0.2)
            final = robot.state()["q"].copy()
            time.sleep(0.3)  # idle: the realtime server still publishes every period
        assert not rec.running
    return path, rec.stats, final


@pytest.fixture(scope="module")
def env_recording(tmp_path_factory):
    """Two FetchReach episodes (the second to truncation) recorded with a chunk per drain (many chunks)."""
    path = tmp_path_factory.mktemp("rec") / "env.mcap"
    env = RecordEpisodes(gym.make("robot_env/FetchReach-v0"), record=path, flush_interval=0.0)
    rng = np.random.default_rng(0)
    actions, after_step, goals = [], [], []
    for seed, steps in ((1, 15), (2, None)):
        obs, _ = env.reset(seed=seed)
        goals.append(obs["desired_goal"].copy())
        k = 0
        while True:
            a = rng.uniform(-1.5, 1.5, 4).astype(np.float32)  # partly outside the Box: clipped by the env
            obs, _, terminated, truncated, _ = env.step(a)
            actions.append(a)
            after_step.append(env.unwrapped.robot_state["q"].copy())
            k += 1
            if terminated or truncated or k == steps:
                break
    env.close()
    return path, env.stats, np.array(actions), np.array(after_step), goals


# -- recording ---------------------------------------------------------------------------------------
def test_connect_session_is_recorded_with_its_timestamps(rt_recording):
    path, stats, final = rt_recording
    msgs = mcap_messages(path)
    states = [m for m in msgs if m[0] == "/robot/state"]
    cmds = [m for m in msgs if m[0] == "/robot/command"]
    assert len(states) == stats.states and len(cmds) == stats.commands
    assert stats.state_gaps == 0 and stats.command_gaps == 0
    seqs = [m[1]["seq"] for m in states]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # numbered stream, nothing missing
    assert [m[1]["cseq"] for m in cmds] == list(range(cmds[0][1]["cseq"], cmds[0][1]["cseq"] + len(cmds)))
    # ~0.6 s interpolation + settling at 25 Hz: one arm_position per control period
    arm = [m[1]["cmd"]["arm_position"] for m in cmds if "arm_position" in m[1].get("cmd", {})]
    assert len(arm) >= 14 and np.allclose(arm[-1], ARM_A)
    assert any(m[1]["cmd"].get("gripper") == 0.06 for m in cmds)
    assert any(m[1]["cmd"].get("head") == [0.3, -0.2] for m in cmds)
    for _, s, log_time, publish_time, seq in states:
        assert 0 < s["t_recv"] - s["ts"] < 0.5  # sampled, then received by the recorder
        assert log_time == int(s["t_recv"] * 1e9) and publish_time == int(s["ts"] * 1e9) and seq == s["seq"]
        assert len(s["q"]) == len(s["target"]) == 11 and s["mode"] in ("ok", "watchdog")
    # the idle tail: no command for > 0.25 s, and the stream shows the watchdog holding the robot
    assert states[-1][1]["mode"] == "watchdog" and states[0][1]["mode"] == "ok"
    for _, c, log_time, publish_time, _ in cmds:
        assert c["op"] == "command" and c["t"] <= c["ta"] <= c["t_recv"]
        assert publish_time == int(c["ta"] * 1e9)
    # the robot got where the recording says, and the realtime stream ran while idle (25 Hz)
    np.testing.assert_allclose(states[-1][1]["q"], final, atol=1e-3)
    span = states[-1][1]["ts"] - states[0][1]["ts"]
    assert len(states) >= 0.8 * span / 0.04
    with open(path, "rb") as fh:
        reader = mcap_reader.make_reader(fh)
        meta = {m.name: m.metadata for m in reader.iter_metadata()}
        summary = reader.get_summary()
    assert json.loads(meta["robot_env.recording"]["clock"]) == "realtime"
    assert json.loads(meta["robot_env.recording"]["joint_names"])[1] == "shoulder_pan_joint"
    assert json.loads(meta["robot_env.summary"]["state_gaps"]) == 0
    assert summary.statistics.message_count == len(msgs) and len(summary.chunk_indexes) >= 3
    assert {s.encoding for s in summary.schemas.values()} == {"jsonschema"}


def test_env_wrapper_records_episodes_steps_and_resets(env_recording):
    path, stats, actions, after_step, goals = env_recording
    rec = read_recording(path)
    assert not rec.problems and rec.closed
    ops = [c["op"] for c in rec.commands]
    n1 = 15
    assert ops == ["reset"] + ["step"] * n1 + ["reset"] + ["step"] * 50
    steps = [c for c in rec.commands if c["op"] == "step"]
    np.testing.assert_allclose([c["cmd"]["ee_delta"] for c in steps],
                               np.clip(actions[:, :3], -1, 1).astype(np.float64) * 0.05, atol=1e-7)
    # the state the env saw after each step is the one the stream carried right after the command
    np.testing.assert_array_equal(post_states(rec.states, steps), after_step)
    resets = [c for c in rec.commands if c["op"] == "reset"]
    assert all(isinstance(c["seed"], int) for c in resets) and resets[0]["seed"] != resets[1]["seed"]
    episode = rec.events["/env/episode"]
    assert [(e["event"], e["episode"]) for e in episode] == [("reset", 0), ("reset", 1), ("end", 1)]
    assert [e["seed"] for e in episode[:2]] == [1, 2] and episode[2]["length"] == 50 and episode[2]["truncated"]
    np.testing.assert_allclose(episode[1]["goal"], goals[1])
    assert stats.states == len(rec.states) and stats.state_gaps == 0 and rec.info["clock"] == "lockstep"
    # read with the mcap library too: same messages
    assert len(mcap_messages(path, "/robot/command")) == len(rec.commands)


def test_gaps_in_the_stream_are_counted_and_written(tmp_path):
    """A recorder that falls behind a lockstep server stepping flat out: the stream drops messages,
    the recorder counts the holes, and the file's own numbering shows the same holes."""
    from robot_env.bridge.session import Session
    path = tmp_path / "gaps.mcap"
    session = Session(None)
    try:
        rec = Recorder(session, path, rcvhwm=20).start()
        slow = threading.Event()
        slow.set()
        write = rec._write_stream

        def slow_write(*args):
            if slow.is_set():
                time.sleep(0.002)
            write(*args)

        rec._write_stream = slow_write
        for _ in range(4000):
            session.client.step({"ee_delta": [0.0, 0.0, 0.0]})
        slow.clear()
        stats = rec.stop()
    finally:
        session.close()
    assert stats.state_gaps > 0 and stats.states_lost > 0
    file_states, file_cmds = read_recording(path).gaps()
    assert (file_states.gaps, file_states.lost) == (stats.state_gaps, stats.states_lost)
    assert (file_cmds.gaps, file_cmds.lost) == (stats.command_gaps, stats.commands_lost)
    assert stats.states + stats.states_lost == file_states.last - file_states.first + 1
    assert file_states.missing[:10] == [tuple(r) for r in stats.missing_states[:10]]
    with open(path, "rb") as fh:
        meta = {m.name: m.metadata for m in mcap_reader.make_reader(fh).iter_metadata()}
    assert json.loads(meta["robot_env.summary"]["states_lost"]) == stats.states_lost


def test_commands_are_serialized_only_for_a_command_subscriber(monkeypatch):
    """The state-only hot path is unchanged: no subscriber -> nothing encoded; a state subscriber ->
    one state per step; only a `command` subscriber adds the command message."""
    import zmq

    import robot_env.bridge.server as server_mod
    from robot_env.bridge.endpoints import private_ipc

    ep, sep = private_ipc("hotpath")
    srv = server_mod.build_server(config.load("sim"), endpoint=ep, stream_endpoint=sep)
    ctx = zmq.Context.instance()
    subs = []
    calls = []
    real_encode = server_mod.encode
    monkeypatch.setattr(server_mod, "encode", lambda obj: calls.append(obj) or real_encode(obj))

    def subscribe(topic):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SUBSCRIBE, topic)
        s.connect(srv.stream_endpoint)
        subs.append(s)
        deadline = time.time() + 5
        before = srv.subscribers
        while srv.subscribers == before and time.time() < deadline:
            srv.pub.poll(50)
            srv._on_subscription()

    def steps(n):
        calls.clear()
        for i in range(n):
            req = {"v": robot_env.bridge.protocol.VERSION, "op": "step", "seq": i, "t": time.time(), "token": "t" * 16,
                   "cmd": {"ee_delta": [0.001, 0.0, 0.0]}}
            srv._step(req, time.time())
        return len(calls)

    try:
        assert steps(20) == 0  # nobody listens: nothing serialized
        subscribe(b"state")
        assert srv.command_subscribers == 0 and steps(20) == 20  # states only
        subscribe(b"command")
        assert srv.command_subscribers == 1 and steps(20) == 40  # + one command each
        got = []
        while subs[1].poll(200):
            topic, payload = subs[1].recv_multipart()
            got.append(robot_env.bridge.protocol.decode(payload))
        assert topic == b"command" and [g["cseq"] for g in got] == list(range(1, 21))
        assert got[0]["cmd"]["ee_delta"].tolist() == [0.001, 0.0, 0.0] and got[0]["op"] == "step"
    finally:
        for s in subs:
            s.close(0)
        srv.close()


# -- crash, lost server, damage ------------------------------------------------------------------
@pytest.fixture
def rt_server(tmp_path):
    """A standalone realtime simulator server and a client config pointing at it."""
    server = ServerProcess(config.load("sim", {"server": {"clock": "realtime"}}))
    toml = tmp_path / "client.toml"
    toml.write_text(f'[client]\nendpoint = "{server.endpoint}"\ntimeout = 2.0\n')
    yield server, toml
    server.close()


def start_recorder(toml, out, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "robot_env", "record", "--config", str(toml),
                             "--out", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    assert line.startswith("RECORDING"), line + proc.stderr.read() if proc.poll() is not None else line
    return proc


def test_sigkilled_recorder_keeps_the_recording_up_to_the_kill(rt_server, tmp_path):
    server, toml = rt_server
    out = tmp_path / "killed.mcap"
    proc = start_recorder(toml, out)
    try:
        with robot_env.connect(toml) as robot:
            sent = []
            command = robot.client.command
            robot.client.command = lambda cmd: sent.append(cmd) or command(cmd)
            robot.move_joints(ARM_A, duration=0.5)
            final = robot.state()["q"].copy()
            time.sleep(0.8)  # > the 0.2 s flush interval: all of it is on disk
            proc.kill()  # SIGKILL: no handler runs, the file is never closed
            proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -9
    rec = read_recording(out)
    assert rec.truncated and not rec.closed and not rec.damaged
    assert any("not closed" in p or "ends in the middle" in p for p in rec.problems)
    assert len(rec.commands) == len(sent) > 10  # every command applied before the kill is there
    np.testing.assert_allclose(rec.commands[-1]["cmd"]["arm_position"], ARM_A)
    np.testing.assert_allclose(rec.states[-1]["q"], final, atol=1e-3)
    seqs = [s["seq"] for s in rec.states]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # the mcap library reads the same messages, then stops at the unfinished end
    n = 0
    with pytest.raises(Exception):
        with open(out, "rb") as fh:
            for record in StreamReader(fh).records:
                n += type(record).__name__ == "Message"
    assert n == len(rec.states) + len(rec.commands) + len(rec.events.get("/recorder", []))
    # replay what is there, and say the file was cut short (exit status 3)
    res = cli("replay", out, "--speed", "4")
    assert res.returncode == 3, res.stderr
    assert "not closed" in res.stderr and f"replayed {len(sent)} of {len(sent)} commands" in res.stdout


def test_recorder_closes_the_file_when_the_server_is_lost(rt_server, tmp_path):
    server, toml = rt_server
    out = tmp_path / "lost.mcap"
    proc = start_recorder(toml, out, "--server-timeout", "0.3")
    time.sleep(0.5)
    server.proc.kill()
    try:
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3 and "stopped answering" in stderr and "kept in" in stderr
    rec = read_recording(out)
    assert rec.closed and not rec.problems and len(rec.states) >= 8  # ~0.5 s at 25 Hz
    assert rec.summary["reason"] == "server lost"


def test_record_without_a_server_explains_what_to_do(tmp_path):
    res = cli("record", "--config", "sim", "--out", tmp_path / "x.mcap")
    assert res.returncode == 2 and "names no [client] endpoint" in res.stderr and "robot-env serve" in res.stderr
    assert not (tmp_path / "x.mcap").exists()


def chunk_with_commands(path):
    with open(path, "rb") as fh:
        summary = mcap_reader.make_reader(fh).get_summary()
    cmd_channel = next(i for i, c in summary.channels.items() if c.topic == "/robot/command")
    chunks = [c for c in summary.chunk_indexes if cmd_channel in c.message_index_offsets]
    assert len(chunks) >= 5
    return chunks[len(chunks) // 2]


def test_corrupted_recording_reports_the_hole_and_replays_what_is_before_it(env_recording, tmp_path):
    path = env_recording[0]
    full = read_recording(path)
    chunk = chunk_with_commands(path)
    data = bytearray(path.read_bytes())
    end = chunk.chunk_start_offset + chunk.chunk_length
    for i in range(end - 12, end - 4):  # inside the chunk's compressed data
        data[i] ^= 0x5A
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(bytes(data))
    # the mcap library agrees the file is damaged
    with pytest.raises(Exception):
        with open(bad, "rb") as fh:
            list(StreamReader(fh, validate_crcs=True).records)
    rec = read_recording(bad)
    assert rec.damaged and any("failed its check" in p for p in rec.problems)
    s, c = rec.gaps()
    # the lost chunk held commands (and maybe states): the numbering shows one hole
    assert c.gaps == 1 and s.gaps <= 1 and len(rec.commands) == len(full.commands) - c.lost
    assert len(rec.states) == len(full.states) - s.lost
    events, notes = replay_events(rec)
    hole = next(i for i, cmd in enumerate(full.commands) if cmd["cseq"] == c.missing[0][0])
    assert len(events) == hole and "missing" in notes[0]
    result = replay(bad)  # a fresh lockstep simulator, as recorded
    assert result.sent == hole and any("missing" in p for p in result.problems)
    # what was replayed is what was recorded, state for state
    np.testing.assert_array_equal(np.array([q for _, q in result.trajectory]),
                                  post_states(full.states, full.commands[:hole]))
    res = cli("replay", bad)
    assert res.returncode == 3 and "failed its check" in res.stderr and "missing" in res.stderr


def test_truncated_and_foreign_files(env_recording, tmp_path):
    path = env_recording[0]
    full = read_recording(path)
    data = path.read_bytes()
    chunk = chunk_with_commands(path)  # cut inside a chunk in the middle, as a killed writer would
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[:chunk.chunk_start_offset + chunk.chunk_length // 2])
    rec = read_recording(cut)
    assert rec.truncated and not rec.damaged and not rec.closed
    assert any("ends in the middle" in p for p in rec.problems)
    assert 0 < len(rec.states) < len(full.states)
    assert [s["seq"] for s in rec.states] == [s["seq"] for s in full.states[:len(rec.states)]]
    n = 0
    with pytest.raises(Exception):
        with open(cut, "rb") as fh:
            for record in StreamReader(fh).records:
                n += type(record).__name__ == "Message"
    assert n == len(rec.states) + len(rec.commands) + sum(map(len, rec.events.values()))
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"this is not a recording at all")
    with pytest.raises(RecordingError, match="not an MCAP recording"):
        read_recording(junk)
    res = cli("replay", junk)
    assert res.returncode == 2 and "not an MCAP recording" in res.stderr
    with pytest.raises(RecordingError, match="cannot read"):
        read_recording(tmp_path / "missing.mcap")


# -- replay --------------------------------------------------------------------------------------
def test_replay_reproduces_a_lockstep_episode_exactly(env_recording, tmp_path):
    path = env_recording[0]
    full = read_recording(path)
    again = tmp_path / "again.mcap"
    result = replay(path, record=again)
    assert result.sent == result.total == len(full.commands) and not result.problems
    rerun = read_recording(again)
    assert [c["op"] for c in rerun.commands] == [c["op"] for c in full.commands]
    np.testing.assert_array_equal(post_states(rerun.states, rerun.commands), post_states(full.states, full.commands))


def test_replay_reproduces_a_realtime_session_within_tolerance(rt_recording, tmp_path):
    path = rt_recording[0]
    orig = read_recording(path)
    again = tmp_path / "again.mcap"
    res = cli("replay", path, "--record", again)
    assert res.returncode == 0, res.stderr
    assert f"replayed {len(orig.commands)} of {len(orig.commands)}" in res.stdout
    rerun = read_recording(again)
    # the replay first resets the fresh simulator to the recorded start pose (that reset is recorded too)
    assert rerun.commands[0]["op"] == "reset" and orig.commands[0]["op"] == "command"
    np.testing.assert_allclose(rerun.commands[0]["options"]["initial_arm_position"], orig.states[0]["q"][1:8])
    replayed = rerun.commands[1:]
    assert [c["cmd"] for c in replayed] == [c["cmd"] for c in orig.commands]
    ta1 = np.array([c["ta"] for c in orig.commands])
    ta2 = np.array([c["ta"] for c in replayed])
    drift = np.abs((ta2 - ta2[0]) - (ta1 - ta1[0]))
    assert np.median(drift) < 0.005 and drift.max() < 0.1  # the original timing, to a few ms

    def trajectory(rec, t0):
        return rec.array("ts") - t0, rec.array("q")

    t1, q1 = trajectory(orig, ta1[0])
    t2, q2 = trajectory(rerun, ta2[0])
    assert abs(t2[-1] - t1[-1]) < 0.3  # the replay ran as long as the recording
    grid = np.linspace(0.0, t1[-1] - 0.05, 60)

    def on_grid(t, q, shift=0.0):
        return np.stack([np.interp(grid + shift, t, q[:, j]) for j in range(11)], 1)

    a = on_grid(t1, q1)
    assert np.abs(a - on_grid(t2, q2)).max() < 0.3  # the same path at the same time (measured < 0.01 rad idle)
    # a loaded machine may stall either run by tens of ms: each sample of the replay matches the recording
    # at some time within +-0.1 s of it (the drift bound above), never a different path
    best = np.min([np.abs(a - on_grid(t2, q2, s)).max(1) for s in np.linspace(-0.1, 0.1, 21)], 0)
    assert best.max() < 0.03, best.max()
    np.testing.assert_allclose(q2[-1], q1[-1], atol=0.01)
    np.testing.assert_allclose(q2[-1][1:8], ARM_A, atol=0.01)


def test_replay_stops_at_a_recorded_estop_and_at_a_live_one(rt_server, tmp_path):
    server, toml = rt_server
    path = tmp_path / "estop.mcap"
    with robot_env.connect(toml) as robot, Recorder(robot, path):
        robot.move_joints(ARM_A, duration=0.4)
        robot.estop()
        time.sleep(0.1)
        robot.clear_estop()
        robot.set_gripper(0.05)  # after the e-stop: never replayed
    rec = read_recording(path)
    events, notes = replay_events(rec)
    assert events[-1]["op"] == "estop" and "e-stopped" in notes[-1]
    assert not any(e.get("cmd", {}).get("gripper") == 0.05 for e in events)
    result = replay(path)  # a fresh simulator: it ends latched, as the recording did
    assert "recorded e-stop" in result.stopped and result.final_state["mode"] == "estop"
    assert result.sent == len(events) - 1
    # an e-stop pressed by someone else during a replay stops it too
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(r=replay(path, toml)))
    runner.start()
    time.sleep(0.3)
    with robot_env.connect(toml) as other:
        other.estop()
        runner.join(20)
        assert "e-stopped during the replay" in outcome["r"].stopped and outcome["r"].sent < len(events) - 1
        other.clear_estop()


# -- plot ----------------------------------------------------------------------------------------
def test_plot_writes_a_png_of_trajectories_and_latencies(rt_recording, tmp_path):
    import matplotlib.image as mpimg
    path = rt_recording[0]
    png = tmp_path / "plot.png"
    res = cli("plot", path, "--out", png)
    assert res.returncode == 0, res.stderr
    assert f"wrote {png}" in res.stdout
    raw = png.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    assert width >= 1200 and height >= 800 and len(raw) > 50_000
    img = mpimg.imread(png)[..., :3]

    def near(rgb):
        return int((np.abs(img - np.array(rgb) / 255).max(axis=2) < 0.08).sum())

    assert near((31, 119, 180)) > 1000  # measured positions (C0 blue): ~1600 px of lines
    assert near((214, 39, 40)) > 700  # targets (C3 red, dashed): ~1400 px
    assert near((44, 160, 44)) > 5000  # latency histograms (C2 green bars)


def test_a_batched_server_records_replays_and_plots_per_robot(tmp_path, no_leftover_servers):
    """A vector env's server (N robots per request): the recording replays onto a server of the same
    size exactly (lockstep), is refused by one of another size, and plots one robot at a time."""
    from robot_env.recording.plot import plot_recording

    def batch_cfg(n):
        return config.load("sim", {"server.kinematic": {"num_robots": n}})

    srv = ServerProcess(batch_cfg(3))
    path = tmp_path / "batch.mcap"
    try:
        env = gym.make_vec("robot_env/FetchReach-v0", num_envs=3, overrides={"client": {"endpoint": srv.endpoint}})
        try:
            with Recorder(srv.endpoint, path):
                env.reset(seed=0)
                for a in np.random.default_rng(0).uniform(-1, 1, (30, 3, 4)):
                    env.step(a)
        finally:
            env.close()
    finally:
        srv.close()
    full = read_recording(path)
    assert full.array("q").shape[1:] == (3, 11)
    assert len(post_states(full.states, full.commands)) >= 30  # the comparison below has content
    again = tmp_path / "again.mcap"
    result = replay(path, batch_cfg(3), record=again)
    assert result.sent == result.total == len(full.commands) and not result.problems
    rerun = read_recording(again)
    np.testing.assert_array_equal(post_states(rerun.states, rerun.commands), post_states(full.states, full.commands))
    with pytest.raises(RecordingError, match="3 robot"):
        replay(path, batch_cfg(2))
    with pytest.raises(RecordingError, match="3 robot"):
        replay(path)  # the one-robot simulator
    png = plot_recording(path, tmp_path / "robot2.png", robot=2)
    assert png.stat().st_size > 10_000
    with pytest.raises(RecordingError, match="robots 0..2"):
        plot_recording(path, tmp_path / "x.png", robot=3)
