"""`robot-env export --lerobot`: a real MuJoCo PickAndPlace recording (the scripted agent, the head
camera through `RecordEpisodes`; and a realtime server recorded by `Recorder(cameras=...)`) exported to
a LeRobotDataset v3.0, read back with pyarrow and PyAV and checked against the recording: layout and
info.json, shapes, counts, episode boundaries, the resampling, statistics, pixels. Damaged and
partial recordings export what is intact and say what was left out. The check with LeRobot's own
loader (a venv of its own, `tests/lerobot_venv.py`) is marked slow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("mujoco")
pq = pytest.importorskip("pyarrow.parquet")
av = pytest.importorskip("av")

from robot_env.apps import scripted  # noqa: E402
from robot_env.envs import RecordEpisodes  # noqa: E402
from robot_env.recording import RecordingError, read_recording  # noqa: E402
from robot_env.recording.images import decode_frame  # noqa: E402
from robot_env.recording.lerobot import export_lerobot  # noqa: E402

ENV_ID = "robot_env/FetchPickAndPlace-v0"
EPISODES = 3
HEAD = "observation.images.head"
TESTS = Path(__file__).parent


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "robot_env", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def record_episodes(path, episodes=EPISODES, flush_interval=0.2):
    """As `demo --record` does, in-process, with chunks closed every `flush_interval` s."""
    env = RecordEpisodes(gym.make(ENV_ID, cameras=["head"]), record=path, flush_interval=flush_interval)
    agent = scripted.for_env(env)
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=ep)
            agent.reset(obs)
            done = False
            while not done:
                obs, _, term, trunc, _ = env.step(agent.act(obs))
                done = term or trunc
    finally:
        env.close()


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """The scripted agent's PickAndPlace episodes with the head camera, recorded as the env steps
    (`robot-env demo --record --camera`: `RecordEpisodes`, a frame per reset and step)."""
    path = tmp_path_factory.mktemp("rec") / "pick.mcap"
    res = cli("demo", "--env", ENV_ID, "--episodes", EPISODES, "--record", path, "--camera", "head")
    assert res.returncode in (0, 1) and "recorded " in res.stdout and "success rate" in res.stdout, res.stderr
    return path, res.stdout


@pytest.fixture(scope="module")
def dataset(recording, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "pick"
    res = cli("export", recording[0], "--lerobot", out, "--task", "pick up the block and place it at the goal")
    assert res.returncode == 0, res.stderr
    return out, res


def expected_episodes(rec):
    """The recording's episodes as a lockstep env makes them, derived without the exporter: the states
    after each reset up to the next (one per step; the recorder's closing samples repeat the last
    step's time), their joints and targets, and the image logged with each step."""
    resets = [c["after"] for c in rec.commands if c["op"] == "reset"]
    bounds = resets + [rec.states[-1]["seq"]]
    images = rec.events["/camera/head"]
    out, used = [], 0
    for a, b in zip(bounds, bounds[1:]):
        sts = [s for s in rec.states if a < s["seq"] <= b]
        by_time = {}
        for s in sts:
            by_time[round(s["time"], 6)] = s  # the latest at each instant
        sts = [by_time[t] for t in sorted(by_time)]
        out.append({"q": np.array([s["q"] for s in sts], np.float32),
                    "target": np.array([s["target"] for s in sts], np.float32),
                    "time": np.array([s["time"] for s in sts]),
                    "images": images[used:used + len(sts)]})
        used += len(sts)
    assert used == len(images)
    return out


def read_frames(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(float(f.pts * s.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)], \
            s.codec_context.name


def table(path):
    return pq.read_table(path).to_pydict()


# -- the dataset, file by file ------------------------------------------------------------------------
def test_the_layout_and_info_are_lerobots_v3(dataset, recording):
    out, res = dataset
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet",
                     "meta/info.json", "meta/stats.json", "meta/tasks.parquet",
                     f"videos/{HEAD}/chunk-000/file-000.mp4"]
    info = json.loads((out / "meta/info.json").read_text())
    rec = read_recording(recording[0])
    names = rec.info["joint_names"]
    assert info["codebase_version"] == "v3.0" and info["fps"] == 25  # the recording's 0.04 s control period
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["total_episodes"] == EPISODES and info["total_tasks"] == 1 and info["splits"] == {"train": "0:3"}
    feats = info["features"]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [len(names)], "names": names}
    assert feats["action"] == {"dtype": "float32", "shape": [len(names)], "names": names}
    assert feats[HEAD]["dtype"] == "video" and feats[HEAD]["shape"] == [84, 84, 3]
    assert feats[HEAD]["names"] == ["height", "width", "channels"]
    vinfo = feats[HEAD]["info"]
    assert vinfo["video.fps"] == 25 and vinfo["video.height"] == 84 and vinfo["video.codec"] in ("av1", "h264")
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert feats[key]["shape"] == [1] and feats[key]["dtype"] == ("float32" if key == "timestamp" else "int64")
    tasks = pq.read_table(out / "meta/tasks.parquet")
    # LeRobot reads it with pandas, whose schema metadata must name the task column as the index
    pandas_meta = json.loads(tasks.schema.metadata[b"pandas"])
    assert pandas_meta["index_columns"] == ["task"]
    assert tasks.to_pydict() == {"task_index": [0], "task": ["pick up the block and place it at the goal"]}
    assert "wrote 3 episode(s)" in res.stdout and "frames/s" in res.stdout


def test_states_actions_and_boundaries_match_the_recording(dataset, recording):
    out, _ = dataset
    rec = read_recording(recording[0])
    want = expected_episodes(rec)
    data = table(out / "data/chunk-000/file-000.parquet")
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    info = json.loads((out / "meta/info.json").read_text())
    assert len(eps) == len(want) == EPISODES
    assert info["total_frames"] == len(data["index"]) == sum(len(w["q"]) for w in want)
    assert data["index"] == list(range(len(data["index"])))
    state = np.array(data["observation.state"], np.float32)
    action = np.array(data["action"], np.float32)
    for e, (ep, w) in enumerate(zip(eps, want)):
        n = len(w["q"])
        a, b = ep["dataset_from_index"], ep["dataset_to_index"]
        assert ep["episode_index"] == e and ep["length"] == n == b - a and ep["tasks"] == [
            "pick up the block and place it at the goal"]
        assert (ep["data/chunk_index"], ep["data/file_index"]) == (0, 0)
        assert data["episode_index"][a:b] == [e] * n and data["frame_index"][a:b] == list(range(n))
        assert data["task_index"][a:b] == [0] * n
        np.testing.assert_allclose(data["timestamp"][a:b], np.arange(n) / 25, atol=1e-6)
        np.testing.assert_allclose(w["time"] - w["time"][0], np.arange(n) / 25, atol=1e-6)  # one state a frame
        np.testing.assert_array_equal(state[a:b], w["q"])
        # the action of a frame: the targets in force at the next one (the last frame: its own)
        np.testing.assert_array_equal(action[a:b - 1], w["target"][1:])
        np.testing.assert_array_equal(action[b - 1], w["target"][-1])
    # the arm did move: actions are not the states shifted by nothing
    assert np.abs(action - state).max() > 0.01


def test_video_frames_are_the_recorded_images(dataset, recording):
    out, _ = dataset
    rec = read_recording(recording[0])
    want = expected_episodes(rec)
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    frames, codec = read_frames(out / f"videos/{HEAD}/chunk-000/file-000.mp4")
    assert len(frames) == sum(len(w["q"]) for w in want)
    k = 0
    errors, shifted = [], []
    for ep, w in zip(eps, want):
        n = len(w["q"])
        start = ep[f"videos/{HEAD}/from_timestamp"]
        assert start == pytest.approx(k / 25) and ep[f"videos/{HEAD}/to_timestamp"] == pytest.approx((k + n) / 25)
        for i in range(n):
            t, img = frames[k + i]
            assert t == pytest.approx(start + i / 25, abs=1e-4)  # LeRobot's default tolerance
            src = decode_frame(w["images"][i]).astype(int)
            errors.append(np.abs(img.astype(int) - src).mean())
            other = decode_frame(w["images"][min(n - 1, i + 10)]).astype(int)
            shifted.append(np.abs(img.astype(int) - other).mean())
        k += n
    # lossy video, but each frame is its own image: far closer to it than to the image 10 frames on
    assert np.mean(errors) < 5 and max(errors) < 10, (codec, np.mean(errors), max(errors))
    assert np.mean(shifted) > 3 * np.mean(errors)


def test_statistics_are_those_of_the_data(dataset):
    out, _ = dataset
    data = table(out / "data/chunk-000/file-000.parquet")
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    stats = json.loads((out / "meta/stats.json").read_text())
    frames, _ = read_frames(out / f"videos/{HEAD}/chunk-000/file-000.mp4")
    for key in ("observation.state", "action", "timestamp", "frame_index", "index"):
        x = np.array(data[key], float).reshape(len(data["index"]), -1)
        for ep in eps:
            part = x[ep["dataset_from_index"]:ep["dataset_to_index"]]
            np.testing.assert_allclose(ep[f"stats/{key}/mean"], part.mean(0), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(ep[f"stats/{key}/std"], part.std(0), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(ep[f"stats/{key}/q50"], np.quantile(part, 0.5, axis=0), rtol=1e-6, atol=1e-9)
            assert ep[f"stats/{key}/count"] == [len(part)]
        s = stats[key]
        np.testing.assert_allclose(s["min"], x.min(0), rtol=1e-6)
        np.testing.assert_allclose(s["max"], x.max(0), rtol=1e-6)
        np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-5, atol=1e-9)
        assert s["count"] == [len(x)]
        assert {"q01", "q10", "q50", "q90", "q99"} <= set(s)
    # images: per channel, in [0, 1], shape (3, 1, 1); the recorded images' mean, near the video's
    img = stats[HEAD]
    assert np.array(img["mean"]).shape == (3, 1, 1) and 0 <= np.min(img["min"]) and np.max(img["max"]) <= 1
    video_mean = np.mean([f for _, f in frames], axis=(0, 1, 2)) / 255
    np.testing.assert_allclose(np.array(img["mean"]).reshape(3), video_mean, atol=0.02)


def test_files_roll_over_at_their_size_limit(recording, tmp_path):
    """With tiny file limits every episode starts new data and video files (as LeRobot's writer does past
    100 / 200 MB): each episode's rows and frames are where its metadata says."""
    out = tmp_path / "rolled"
    res = export_lerobot([recording[0]], out, data_mb=1e-6, video_mb=1e-6)
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert res.episodes == len(eps) == EPISODES
    for e, ep in enumerate(eps):
        assert (ep["data/chunk_index"], ep["data/file_index"]) == (0, e)
        assert (ep[f"videos/{HEAD}/chunk_index"], ep[f"videos/{HEAD}/file_index"]) == (0, e)
        assert ep[f"videos/{HEAD}/from_timestamp"] == 0.0
        rows = table(out / f"data/chunk-000/file-{e:03d}.parquet")
        assert rows["episode_index"] == [e] * ep["length"]
        assert rows["index"] == list(range(ep["dataset_from_index"], ep["dataset_to_index"]))
        frames, _ = read_frames(out / f"videos/{HEAD}/chunk-000/file-{e:03d}.mp4")
        assert len(frames) == ep["length"]


# -- bad and partial recordings -------------------------------------------------------------------------
def _copy_without(src, dst, drop):
    """A copy of an MCAP recording without the messages `drop(topic, log_time)` picks."""
    from mcap.reader import make_reader
    from mcap.writer import Writer
    with open(src, "rb") as fh, open(dst, "wb") as out:
        reader = make_reader(fh)
        w = Writer(out)
        w.start()
        summary = reader.get_summary()
        for md in reader.iter_metadata():
            w.add_metadata(md.name, md.metadata)
        schemas, channels = {}, {}
        for sid, s in summary.schemas.items():
            schemas[sid] = w.register_schema(s.name, s.encoding, s.data)
        for cid, c in sorted(summary.channels.items()):
            channels[cid] = w.register_channel(c.topic, c.message_encoding, schemas[c.schema_id])
        for schema, channel, msg in reader.iter_messages(log_time_order=False):
            if not drop(channel.topic, msg.log_time):
                w.add_message(channels[channel.id], msg.log_time, msg.data, msg.publish_time, msg.sequence)
        w.finish()


def test_an_episode_missing_its_camera_is_left_out_and_said(recording, tmp_path):
    rec = read_recording(recording[0])
    resets = [c["ta"] for c in rec.commands if c["op"] == "reset"]
    lo, hi = int(resets[1] * 1e9), int(resets[2] * 1e9)  # episode 1's images go
    part = tmp_path / "part.mcap"
    _copy_without(recording[0], part, lambda topic, t: topic == "/camera/head" and lo <= t < hi)
    out = tmp_path / "ds"
    res = cli("export", part, "--lerobot", out)
    assert res.returncode == 3, res.stderr
    assert "episode 1" in res.stderr and "no images of camera 'head'" in res.stderr
    info = json.loads((out / "meta/info.json").read_text())
    want = expected_episodes(rec)
    assert info["total_episodes"] == 2 and info["total_frames"] == len(want[0]["q"]) + len(want[2]["q"])
    state = np.array(table(out / "data/chunk-000/file-000.parquet")["observation.state"], np.float32)
    np.testing.assert_array_equal(state, np.concatenate([want[0]["q"], want[2]["q"]]))
    # without cameras, every episode is there
    out2 = tmp_path / "ds2"
    res = cli("export", part, "--lerobot", out2, "--no-cameras")
    assert res.returncode == 0, res.stderr
    info = json.loads((out2 / "meta/info.json").read_text())
    assert info["total_episodes"] == 3 and info["video_path"] is None and not (out2 / "videos").exists()


def _chunks(path):
    from mcap.reader import make_reader
    with open(path, "rb") as fh:
        return make_reader(fh).get_summary().chunk_indexes


def _cut_inside_an_episode(rec, want, chunks):
    """(k, chunk): the first chunk that starts inside episode k >= 1 with at least two of its steps
    before it and some after: a file cut in that chunk keeps the episodes before k whole and a prefix
    of k (the chunks before it are complete, the cut one is not). Chunks fall where 1 MiB fills, so
    which episode that is varies from recording to recording."""
    resets = [c["ta"] for c in rec.commands if c["op"] == "reset"]
    steps = np.array([c["ta"] for c in rec.commands if c["op"] == "step"])
    for c in chunks[1:]:
        t = c.message_start_time / 1e9
        k = sum(r <= t for r in resets) - 1
        if k < 1:
            continue
        before = int(((steps > resets[k]) & (steps < t)).sum())
        if 2 <= before < len(want[k]["q"]) - 1:
            return k, c
    raise AssertionError(f"no chunk of {len(chunks)} starts inside an episode after the first: "
                         f"{[(c.message_start_time / 1e9, c.message_end_time / 1e9) for c in chunks]}, resets {resets}")


def test_a_truncated_recording_exports_the_episodes_before_the_cut(recording, tmp_path):
    rec = read_recording(recording[0])
    want = expected_episodes(rec)
    data = recording[0].read_bytes()
    k, chunk = _cut_inside_an_episode(rec, want, _chunks(recording[0]))
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[:chunk.chunk_start_offset + chunk.chunk_length // 2])
    out = tmp_path / "ds"
    res = cli("export", cut, "--lerobot", out)
    assert res.returncode == 3, res.stderr
    assert "ends in the middle" in res.stderr
    info = json.loads((out / "meta/info.json").read_text())
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    # the episodes before k whole; episode k up to where the file ends (a prefix of it); nothing after
    assert info["total_episodes"] == k + 1
    assert [e["length"] for e in eps[:k]] == [len(w["q"]) for w in want[:k]]
    assert 2 <= eps[k]["length"] < len(want[k]["q"])
    state = np.array(table(out / "data/chunk-000/file-000.parquet")["observation.state"], np.float32)
    np.testing.assert_array_equal(state[eps[k]["dataset_from_index"]:], want[k]["q"][:eps[k]["length"]])
    frames, _ = read_frames(out / f"videos/{HEAD}/chunk-000/file-000.mp4")
    assert len(frames) == info["total_frames"]


def _zoh_length(times, t0, n_max, fps=25, hole=1.5):
    """How many frames from t0 have a sample no older than `hole` periods (the exporter's rule)."""
    times = np.asarray(times)
    usual = np.median(np.diff(times)[np.diff(times) > 2e-5])
    limit = hole * max(1 / fps, usual)
    for k in range(n_max):
        g = t0 + k / fps
        if g - times[times <= g + 2e-5].max() > limit + 2e-5:
            return k
    return n_max


def test_a_corrupted_chunk_ends_its_episode_at_the_hole(tmp_path):
    from mcap.reader import make_reader

    src = tmp_path / "chunky.mcap"
    record_episodes(src, flush_interval=0.02)  # small chunks: one lost is a hole inside an episode
    recording = (src,)
    rec = read_recording(recording[0])
    want = expected_episodes(rec)
    resets = [c for c in rec.commands if c["op"] == "reset"]
    with open(recording[0], "rb") as fh:
        summary = make_reader(fh).get_summary()
    state_channel = next(i for i, c in summary.channels.items() if c.topic == "/robot/state")
    inside = [c for c in summary.chunk_indexes if state_channel in c.message_index_offsets
              and resets[1]["ta"] * 1e9 < c.message_start_time and c.message_end_time < resets[2]["ta"] * 1e9]
    assert len(inside) >= 4
    data = bytearray(recording[0].read_bytes())
    bad = tmp_path / "bad.mcap"
    for chunk in inside[len(inside) // 2:]:  # one chunk after the other, until two states in a row are lost
        end = chunk.chunk_start_offset + chunk.chunk_length
        for i in range(end - 12, end - 4):  # inside the chunk's compressed data: its CRC fails
            data[i] ^= 0x5A
        bad.write_bytes(bytes(data))
        damaged = read_recording(bad)
        if any(b - a >= 1 for a, b in damaged.gaps()[0].missing):
            break
    else:
        pytest.fail("no two consecutive states were lost")
    out = tmp_path / "ds"
    res = cli("export", bad, "--lerobot", out)
    assert res.returncode == 3, res.stderr
    assert "failed its check" in res.stderr and "a hole in the recording" in res.stderr
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert len(eps) == 3  # the damaged episode keeps what comes before its hole
    assert eps[0]["length"] == len(want[0]["q"]) and eps[2]["length"] == len(want[2]["q"])
    # episode 1: up to the first frame whose latest surviving state (or image) is 1.5 periods old
    survived = [s for s in damaged.states if resets[1]["after"] < s["seq"] <= resets[2]["after"]]
    t = np.array([s["time"] for s in survived])
    q = np.array([s["q"] for s in survived], np.float32)
    n = _zoh_length(t, t[0], len(want[1]["q"]))
    assert 2 <= eps[1]["length"] <= n < len(want[1]["q"])
    state = np.array(table(out / "data/chunk-000/file-000.parquet")["observation.state"], np.float32)
    a = eps[1]["dataset_from_index"]
    for k in range(eps[1]["length"]):  # each frame: the latest surviving state at or before it
        np.testing.assert_array_equal(state[a + k], q[np.flatnonzero(t <= t[0] + k / 25 + 2e-5)[-1]])


def test_nothing_exportable_is_an_error_and_writes_nothing(recording, tmp_path):
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not an mcap file at all")
    out = tmp_path / "ds"
    res = cli("export", junk, "--lerobot", out)
    assert res.returncode == 2 and "not an MCAP recording" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() and os.listdir(tmp_path) == ["junk.mcap"]  # no half-made directory either
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    res = cli("export", recording[0], "--lerobot", out)
    assert res.returncode == 2 and "exists" in res.stderr
    assert os.listdir(out) == ["mine.txt"]
    with pytest.raises(RecordingError, match="camera 'wrist' has no RGB images"):
        export_lerobot([recording[0]], tmp_path / "ds3", cameras=["wrist"])
    assert not (tmp_path / "ds3").exists()


# -- a running server, recorded with its camera (`robot-env record --camera`) ---------------------------
def test_a_realtime_server_recorded_with_its_camera_exports(tmp_path):
    from robot_env.recording import Recorder

    env = gym.make(ENV_ID, config="mujoco", overrides={"server": {"clock": "realtime"}})
    try:
        u = env.unwrapped
        with pytest.raises(RecordingError, match="camera\\(s\\) elbow asked for"):
            Recorder(u, tmp_path / "no.mcap", cameras=["elbow"]).start()
        assert not (tmp_path / "no.mcap").exists()  # refused before anything was recorded
        path = tmp_path / "rt.mcap"
        agent = scripted.for_env(env)
        with Recorder(u, path, cameras=["head"]) as rec:
            for ep in range(2):
                obs, _ = env.reset(seed=ep)
                agent.reset(obs)
                for _ in range(30):
                    obs, *_ = env.step(agent.act(obs))
        assert rec.frame_stats["head"].frames >= 40
    finally:
        env.close()
    r = read_recording(path)
    assert r.cameras == ["head"] and not r.problems
    res = export_lerobot([path], tmp_path / "ds")
    assert res.episodes == 2 and res.cameras == ["head"]
    frames, _ = read_frames(tmp_path / "ds" / f"videos/{HEAD}/chunk-000/file-000.mp4")
    assert len(frames) == res.frames
    eps = pq.read_table(tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet").to_pylist()
    # 30 steps of 0.04 s each on the realtime clock: at least 1.2 s, 30 frames, per episode (more when
    # the client is late, and the last episode lasts until the recorder stops); fewer only where a
    # stall of the loaded machine made a hole, which is then said, not lost silently
    holes = [s for s in res.skipped if "a hole in the recording" in s]
    assert len(holes) == len(res.skipped), res.skipped
    assert all(e["length"] >= 29 for e in eps) or holes, [e["length"] for e in eps]
    assert all(e["length"] <= 30 + 2 * 25 for e in eps), [e["length"] for e in eps]


# -- LeRobot's own loader --------------------------------------------------------------------------------
@pytest.mark.slow
def test_lerobots_own_loader_reads_the_dataset(dataset, recording, tmp_path):
    sys.path.insert(0, str(TESTS))
    import lerobot_venv
    py = lerobot_venv.ensure()  # built once (minutes); reused later
    out, _ = dataset
    res = subprocess.run([str(py), str(TESTS / "lerobot_load_check.py"), str(out)], capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout)
    data = table(out / "data/chunk-000/file-000.parquet")
    assert got["num_frames"] == len(data["index"]) and got["num_episodes"] == EPISODES and got["fps"] == 25
    assert got["video_keys"] == [HEAD] and got["window_action_shape"] == [4, 11]
    want = expected_episodes(read_recording(recording[0]))
    images = [m for w in want for m in w["images"]]
    for i, row in enumerate(got["frames"]):
        assert row["index"] == i and row["episode_index"] == data["episode_index"][i]
        assert row["task"] == "pick up the block and place it at the goal"
        np.testing.assert_allclose(row["state"], data["observation.state"][i], rtol=0, atol=0)
        np.testing.assert_allclose(row["action"], data["action"][i], rtol=0, atol=0)
        assert row[HEAD]["shape"] == [3, 84, 84]
        if row[HEAD]["pixels"] is not None:
            src = decode_frame(images[i]).astype(int)
            assert np.abs(np.array(row[HEAD]["pixels"]) - src).mean() < 5
    # files rolled over (a data and a video file per episode): LeRobot finds each episode's rows and frames
    rolled = tmp_path / "rolled"
    export_lerobot([recording[0]], rolled, task="pick up the block and place it at the goal", data_mb=1e-6,
                   video_mb=1e-6)
    res = subprocess.run([str(py), str(TESTS / "lerobot_load_check.py"), str(rolled)], capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    again = json.loads(res.stdout)
    assert again["num_frames"] == got["num_frames"]
    for a, b in zip(again["frames"], got["frames"]):
        assert a["state"] == b["state"] and a["episode_index"] == b["episode_index"]
        assert np.abs(np.array(a[HEAD]["mean_rgb"]) - b[HEAD]["mean_rgb"]).max() < 0.01


def test_the_commands_end_to_end_on_a_running_server(tmp_path):
    """`robot-env serve` (realtime), `robot-env record --camera head`, `robot-env demo` driving
    PickAndPlace, then `robot-env export`: the README's recipe, as a user runs it."""
    import select
    import signal

    from robot_env import config
    from robot_env.bridge.spawn import ServerProcess

    server = ServerProcess(config.load("mujoco", {"server": {"clock": "realtime"}}))
    try:
        toml = tmp_path / "client.toml"
        toml.write_text(f'[client]\nendpoint = "{server.endpoint}"\ntimeout = 5.0\n')
        out = tmp_path / "demo.mcap"
        rec = subprocess.Popen([sys.executable, "-m", "robot_env", "record", "--config", str(toml), "--out", str(out),
                                "--camera", "head"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([rec.stdout], [], [], 60)
            line = rec.stdout.readline() if ready else ""
            assert line.startswith("RECORDING"), line
            demo = cli("demo", "--env", ENV_ID, "--config", toml, "--episodes", "2")
            assert demo.returncode in (0, 1) and "success rate" in demo.stdout, demo.stderr[-2000:]
            rec.send_signal(signal.SIGINT)
            stdout, stderr = rec.communicate(timeout=60)
        finally:
            if rec.poll() is None:
                rec.kill()
        assert rec.returncode == 0, stderr
        assert "camera head at 25 Hz:" in stdout and " 0 errors" in stdout
    finally:
        server.close()
    ds = tmp_path / "ds"
    res = cli("export", out, "--lerobot", ds)
    # a loaded machine can stall the realtime server (a hole cuts an episode short: exit 3, said)
    assert res.returncode in (0, 3), res.stderr
    assert res.returncode == 0 or "a hole in the recording" in res.stderr, res.stderr
    info = json.loads((ds / "meta/info.json").read_text())
    assert info["total_episodes"] == 2 or "left out" in res.stderr, res.stderr
    assert list(info["features"])[:3] == ["observation.state", "action", HEAD]
    frames, _ = read_frames(ds / f"videos/{HEAD}/chunk-000/file-000.mp4")
    assert len(frames) == info["total_frames"] >= 2
