"""Camera frames over the bridge: real MuJoCo servers in subprocesses, real (headless EGL) rendering.

The protocol part (`frames` on step / state / reset, checked against the spec before anything moves,
extra zero-copy message parts, the client's checks), the env part (`cameras=`, `render_mode`,
`check_env`, `RecordVideo`), and what a server without cameras says.
"""
import os
import threading
import warnings

import gymnasium as gym
import numpy as np
import pytest
import zmq
from gymnasium.utils.env_checker import check_env

from robot_env.backends.spec import CameraSpec
from robot_env.bridge import frames as frames_mod
from robot_env.bridge.client import RobotClient
from robot_env.bridge.protocol import VERSION, decode, encode
from robot_env.bridge.session import Session
from robot_env.errors import ConfigError, ServerError

# Headless rendering, set before mujoco is imported (it picks its GL context then); spawned servers inherit it.
os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("mujoco")

ENV_ID = "robot_env/FetchReach-v0"
RGB = ("head", "external", "wrist")
STILL = {"ee_delta": [0.0, 0.0, 0.0]}


@pytest.fixture(scope="module")
def cam():
    """One MuJoCo robot on the table, depth images on (lockstep)."""
    s = Session("mujoco", {"server.mujoco": {"depth": True}})
    s.client.reset(seed=0)
    yield s
    s.close()


def _snapshot(client):
    st = client.state()
    return st["time"], np.array(st["q"]), np.array(st["target"])


def _unchanged(client, before):
    t, q, target = _snapshot(client)
    assert t == before[0]
    np.testing.assert_array_equal(q, before[1])
    np.testing.assert_array_equal(target, before[2])


def _zmq_frame_behind(arr):
    """The zmq.Frame whose buffer `arr` views (following .base), or None."""
    base = arr
    while base is not None and not isinstance(base, memoryview):
        base = getattr(base, "base", None)
    return None if base is None else base.obj


# -- protocol ------------------------------------------------------------------------------------
def test_hello_announces_cameras_and_frames(cam):
    info = cam.info
    spec = info["spec"]["cameras"]
    assert set(spec) == set(RGB) | {f"{c}_depth" for c in RGB}
    assert spec["head"] == {"height": 84, "width": 84, "channels": 3, "dtype": "uint8"}
    depth = dict(spec["head_depth"])
    assert depth.pop("max") > 10  # the far plane (m): what a depth pixel holds at most
    assert depth == {"height": 84, "width": 84, "channels": 1, "dtype": "float32"}
    assert info["frames"]["ops"] == ["reset", "state", "step"]


def test_frames_arrive_with_the_spec_shape_and_dtype_and_are_not_blank(cam):
    c = cam.client
    spec = cam.info["spec"]["cameras"]
    for st in (c.reset(seed=1, frames=list(RGB)), c.step({"ee_delta": [0.02, 0.0, 0.0]}, frames=list(RGB)),
               c.state(frames=list(RGB))):
        assert set(st["frames"]) == set(RGB)
        for name, img in st["frames"].items():
            s = spec[name]
            assert img.shape == (1, s["height"], s["width"], s["channels"]) and img.dtype == np.uint8
            assert img.std() > 0, f"{name} is blank"
        assert "frames" not in c.state()  # a request without frames gets none


def test_frames_are_zero_copy_views_of_the_received_parts(cam):
    st = cam.client.step(STILL, frames=["external", "head_depth"])
    for img in st["frames"].values():
        assert not img.flags.owndata and not img.flags.writeable
        part = _zmq_frame_behind(img)
        assert isinstance(part, zmq.Frame), f"{type(part)}: not a view of the received ZeroMQ part"
        assert np.shares_memory(img, np.frombuffer(part.buffer, np.uint8))
        assert len(part.buffer) == img.nbytes


def test_a_request_without_frames_is_answered_in_one_part(cam):
    """State-only clients pay nothing: no extra parts, no `frames` map."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cam.client.endpoint)
    try:
        sock.send(encode({"v": VERSION, "op": "state", "seq": 1}))
        assert sock.poll(5000)
        reply = decode(sock.recv())
        assert not sock.get(zmq.RCVMORE) and reply["ok"] and "frames" not in reply
        sock.send(encode({"v": VERSION, "op": "state", "seq": 2, "frames": ["wrist", "head"]}))
        assert sock.poll(5000)
        parts = sock.recv_multipart()
        reply = decode(parts[0])
        assert len(parts) == 3 and reply["frames"]["wrist"] == {"index": 1, "shape": [1, 84, 84, 3],
                                                                 "dtype": "uint8"}
        assert reply["frames"]["head"]["index"] == 2 and len(parts[2]) == 84 * 84 * 3
    finally:
        sock.close(0)


def test_depth_is_in_metres(cam):
    """The external camera's depth at the image centre is its distance to the table top along its
    axis, computed here from the same model (the camera is fixed in the world)."""
    import mujoco

    from robot_env.backends.spec import ready_gripper
    from simulators.mujoco_sim.model import mjcf
    from simulators.mujoco_sim.scenes import SCENES

    st = cam.client.state(frames=["external_depth", "head_depth", "wrist_depth"])
    for name, d in st["frames"].items():
        assert d.shape == (1, 84, 84, 1) and d.dtype == np.float32
        assert np.isfinite(d).all() and d.min() > 0.005, name
    model = mujoco.MjModel.from_xml_string(mjcf(SCENES["table"], ready_gripper()[:2]))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    pos, axis = data.cam("external").xpos, -data.cam("external").xmat.reshape(3, 3)[:, 2]
    top = cam.info["spec"]["scene_info"]["table"]["top"]
    expect = (top - pos[2]) / axis[2]  # along the optical axis to the plane of the table top
    d = st["frames"]["external_depth"][0, :, :, 0]
    centre = d[41:43, 41:43].mean()  # the four pixels around the centre: a plane is linear in them
    assert 0.5 < expect < 5.0
    assert abs(centre - expect) < 0.01, (centre, expect)
    # the wrist camera sits behind the fingers: everything it sees is nearer than the table is to the external one
    assert np.median(st["frames"]["wrist_depth"]) < expect


@pytest.mark.parametrize("frames, code", [
    (["nope"], "unknown_camera"),
    (["head", "nope"], "unknown_camera"),
    ("head", "bad_frames"),
    ({"head": 1}, "bad_frames"),
    ([1], "bad_frames"),
    ([""], "bad_frames"),
    (["x" * 65], "bad_frames"),
    (["head", "head"], "bad_frames"),
    (["head"] * 17, "bad_frames"),
    ([f"c{i}" for i in range(200)], "bad_frames"),
])
@pytest.mark.parametrize("op", ["step", "reset", "state"])
def test_bad_frames_are_refused_and_nothing_changes(cam, frames, code, op):
    c = cam.client
    c.step({"ee_delta": [0.01, 0.0, 0.0]})
    before = _snapshot(c)
    fields = {"step": {"cmd": {"ee_delta": [0.05, 0.0, 0.0]}}, "reset": {"seed": 3, "options": {}},
              "state": {}}[op]
    with pytest.raises(ServerError) as err:
        c.request(op, frames=frames, **fields)
    assert err.value.code == code
    _unchanged(c, before)


def test_frames_on_an_op_that_does_not_serve_them_are_refused(cam):
    c = cam.client
    before = _snapshot(c)
    with pytest.raises(ServerError) as err:
        c.request("command", cmd={"ee_delta": [0.05, 0.0, 0.0]}, frames=["head"])
    assert err.value.code == "bad_frames" and "does not serve frames" in err.value.message
    _unchanged(c, before)


def test_a_reply_too_large_for_the_frames_cap_is_refused_up_front():
    cams = {"big": CameraSpec(640, 640, 3, "uint8"), "big_depth": CameraSpec(640, 640, 1, "float32")}
    assert frames_mod.parse_frames(["big"], cams, 8, "mujoco") == ("big",)
    with pytest.raises(frames_mod.RequestError) as err:
        frames_mod.parse_frames(["big", "big_depth"], cams, 64, "mujoco")
    assert err.value.code == "too_large"


def test_the_kinematic_backend_announces_no_cameras_and_refuses_frames(no_leftover_servers):
    s = Session("sim")
    try:
        assert s.info["spec"]["cameras"] == {}
        c = s.client
        c.reset(seed=0)
        before = _snapshot(c)
        for op, fields in (("step", {"cmd": {"ee_delta": [0.05, 0.0, 0.0]}}), ("reset", {"seed": 1}), ("state", {})):
            with pytest.raises(ServerError) as err:
                c.request(op, frames=["head"], **fields)
            assert err.value.code == "unknown_camera"
            assert "kinematic backend has no cameras" in err.value.message
            _unchanged(c, before)
    finally:
        s.close()


def test_n_robots_get_n_frames_each_their_own(no_leftover_servers):
    s = Session("mujoco", num_robots=3)
    try:
        c = s.client
        st = c.reset(seed=0, frames=["wrist", "external"])
        assert st["frames"]["wrist"].shape == (3, 84, 84, 3)
        assert st["frames"]["external"].shape == (3, 84, 84, 3)
        np.testing.assert_array_equal(st["frames"]["wrist"][0], st["frames"]["wrist"][1])  # same start
        for _ in range(10):  # move robot 0 only
            st = c.step({"ee_delta": [[0.05, 0.0, -0.05]], "robots": [0]}, frames=["external"])
        ext = st["frames"]["external"]
        assert ext.shape == (3, 84, 84, 3)
        assert np.abs(ext[0].astype(int) - ext[1]).sum() > 0  # robot 0's scene moved
        np.testing.assert_array_equal(ext[1], ext[2])
    finally:
        s.close()


def test_a_server_started_without_mujoco_gl_renders_headless(monkeypatch, no_leftover_servers):
    """MuJoCo picks its GL context when it is imported: the backend's package sets MUJOCO_GL=egl first."""
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    s = Session("mujoco", {"server.mujoco": {"cameras": ["external"]}})
    try:
        assert s.client.reset(seed=0, frames=["external"])["frames"]["external"].std() > 0
    finally:
        s.close()


def test_frames_on_the_realtime_clock(no_leftover_servers):
    """A realtime step is answered a control period later: the frames are rendered then."""
    s = Session("mujoco", {"server": {"clock": "realtime"}})
    try:
        c = s.client
        t0 = c.reset(seed=0, frames=["head"])["time"]
        st = c.step({"ee_delta": [0.02, 0.0, 0.0]}, frames=["external", "wrist"])
        assert st["time"] >= t0 + 0.9 * s.info["control_period"]
        assert st["frames"]["external"].shape == (1, 84, 84, 3) and st["frames"]["wrist"].std() > 0
    finally:
        s.close()


# -- the client's checks: a corrupted reply is an error, not an image -----------------------------
SPEC = {"head": {"height": 4, "width": 5, "channels": 3, "dtype": "uint8"},
        "head_depth": {"height": 4, "width": 5, "channels": 1, "dtype": "float32"}}


def _meta(**over):
    m = {"head": {"index": 1, "shape": [2, 4, 5, 3], "dtype": "uint8"}}
    m["head"].update(over)
    return m


@pytest.mark.parametrize("meta, parts, asked, why", [
    (_meta(), [b"\0" * 119], ["head"], "holds 119 bytes"),  # truncated
    (_meta(), [b"\0" * 121], ["head"], "holds 121 bytes"),
    (_meta(), [], ["head"], "carries 0"),  # the part is missing
    (_meta(), [b"\0" * 120, b"x"], ["head"], "carries 2"),  # one part too many
    (_meta(index=2), [b"\0" * 120], ["head"], "names part 2"),
    (_meta(index=True), [b"\0" * 120], ["head"], "names part"),
    (_meta(shape=[2, 4, 5, 1]), [b"\0" * 40], ["head"], "the spec says"),
    (_meta(shape=[3, 4, 5, 3]), [b"\0" * 180], ["head"], "hosts 2"),
    (_meta(dtype="float32"), [b"\0" * 480], ["head"], "the spec says"),
    (_meta(dtype="object"), [b"\0" * 120], ["head"], "dtype"),
    (_meta(shape="big"), [b"\0" * 120], ["head"], "bad shape"),
    (_meta(), [b"\0" * 120], ["head", "head_depth"], "asked for"),
    ({"tail": {"index": 1, "shape": [2, 4, 5, 3], "dtype": "uint8"}}, [b"\0" * 120], ["tail"], "does not announce"),
    ([1, 2], [], ["head"], "must be a map"),
])
def test_decode_frames_refuses_what_does_not_add_up(meta, parts, asked, why):
    with pytest.raises(ValueError, match=why):
        frames_mod.decode_frames(meta, parts, SPEC, 2, asked)


def test_decode_frames_views_the_parts():
    part = np.arange(120, dtype=np.uint8).tobytes()
    out = frames_mod.decode_frames(_meta(), [part], SPEC, 2, ["head"])
    assert out["head"].shape == (2, 4, 5, 3) and out["head"][1, 3, 4, 2] == 119
    assert np.shares_memory(out["head"], np.frombuffer(part, np.uint8))


def _fake_server(ctx, endpoint, corrupt):
    """A ROUTER that answers hello with a camera spec and `state` with a frames reply `corrupt` spoils."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)

    def serve():
        for _ in range(2):
            if not sock.poll(5000):
                return
            ident, payload = sock.recv_multipart()
            req = decode(payload)
            base = {"v": VERSION, "seq": req["seq"], "ok": True, "t": req["t"], "tr": 0.0, "tx": 0.0}
            if req["op"] == "hello":
                base.update(spec={"cameras": {"head": SPEC["head"]}}, num_robots=1, frames={"ops": ["state"]})
                sock.send_multipart([ident, encode(base)])
                continue
            meta = {"head": {"index": 1, "shape": [1, 4, 5, 3], "dtype": "uint8"}}
            part = b"\x7f" * 60
            meta, parts = corrupt(meta, [part])
            sock.send_multipart([ident, encode(dict(base, state={"time": 0.0}, frames=meta)), *parts])
        sock.close(0)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    return th


@pytest.mark.parametrize("corrupt", [
    lambda m, p: (m, [p[0][:-1]]),  # truncated on the wire
    lambda m, p: (m, []),  # the part never came
    lambda m, p: ({"head": dict(m["head"], shape=[1, 5, 4, 3])}, p),  # not the spec's shape
    lambda m, p: ({}, p),  # a part no map names
])
def test_the_client_raises_on_a_corrupted_frames_reply(corrupt):
    ctx = zmq.Context()
    try:
        th = _fake_server(ctx, "inproc://fake-camera-server", corrupt)
        client = RobotClient("inproc://fake-camera-server", context=ctx, timeout=3.0, retries=0)
        client.hello()
        with pytest.raises(ServerError) as err:
            client.state(frames=["head"])
        assert err.value.code == "malformed"
        client.close()
        th.join(5)
    finally:
        ctx.term()


# -- envs ----------------------------------------------------------------------------------------
def test_env_cameras_add_image_keys_and_check_env_is_clean(no_leftover_servers):
    env = gym.make(ENV_ID, config="mujoco", cameras=["head", "wrist"], render_mode="rgb_array")
    try:
        space = env.observation_space
        assert space["head"] == gym.spaces.Box(0, 255, (84, 84, 3), np.uint8)
        assert set(space) == {"observation", "achieved_goal", "desired_goal", "head", "wrist"}
        obs, _ = env.reset(seed=0)
        assert obs["head"].shape == (84, 84, 3) and obs["head"].dtype == np.uint8 and obs in space
        obs, *_ = env.step(env.action_space.sample())
        assert obs in space and obs["wrist"].std() > 0
        frame = env.render()
        assert frame.shape == (84, 84, 3) and frame.dtype == np.uint8 and frame.std() > 0
        assert env.unwrapped.render_camera == "external"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)  # the render check too: a second env with render_mode
        assert [str(w.message) for w in caught] == []
    finally:
        env.close()


def test_env_depth_camera_space():
    env = gym.make(ENV_ID, config="mujoco", overrides={"server.mujoco": {"depth": True}}, cameras=["external_depth"])
    try:
        space = env.observation_space["external_depth"]
        assert space.dtype == np.float32 and space.shape == (84, 84, 1) and space.low.min() == 0
        far = env.unwrapped._session.info["spec"]["cameras"]["external_depth"]["max"]
        assert np.isfinite(far) and space.high.max() == pytest.approx(far)  # bounded by the far plane
        obs, _ = env.reset(seed=0)
        assert obs in env.observation_space and 0.5 < float(np.median(obs["external_depth"])) < 5
        assert env.render() is None  # no render mode
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
        assert [str(w.message) for w in caught] == []  # finite bounds: no "infinity" warning
    finally:
        env.close()


def test_env_cameras_refused_by_a_server_without_them(no_leftover_servers):
    with pytest.raises(ConfigError, match="no cameras"):
        gym.make(ENV_ID, cameras=["head"])
    with pytest.raises(ConfigError, match="needs an RGB camera"):
        gym.make(ENV_ID, render_mode="rgb_array")
    with pytest.raises(ConfigError, match="elbow"):
        gym.make(ENV_ID, config="mujoco", cameras=["elbow"])
    with pytest.raises(ValueError, match="more than once"):
        gym.make(ENV_ID, config="mujoco", cameras=["head", "head"])
    env = gym.make(ENV_ID)  # without cameras: no render modes on this instance, check_env's render check passes
    try:
        assert env.unwrapped.metadata["render_modes"] == []
    finally:
        env.close()


def test_record_video_writes_a_file(tmp_path, no_leftover_servers):
    pytest.importorskip("moviepy")
    from gymnasium.wrappers import RecordVideo

    env = RecordVideo(gym.make(ENV_ID, config="mujoco", render_mode="rgb_array"), str(tmp_path / "videos"),
                      episode_trigger=lambda ep: ep == 0, disable_logger=True)
    try:
        env.reset(seed=0)
        truncated = False
        steps = 0
        while not truncated:
            _, _, _, truncated, _ = env.step(env.action_space.sample())
            steps += 1
        assert steps == 50
        env.reset()  # ends the episode's recording
    finally:
        env.close()
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000


def test_vector_env_cameras_and_render(no_leftover_servers):
    envs = gym.make_vec(ENV_ID, num_envs=2, config="mujoco", cameras=["head"], render_mode="rgb_array")
    try:
        assert envs.observation_space["head"].shape == (2, 84, 84, 3)
        obs, _ = envs.reset(seed=0)
        assert obs["head"].shape == (2, 84, 84, 3) and obs in envs.observation_space
        for _ in range(51):  # through one autoreset (NEXT_STEP)
            obs, *_ = envs.step(envs.action_space.sample())
            assert obs["head"].shape == (2, 84, 84, 3)
        frames = envs.render()
        assert len(frames) == 2 and frames[0].shape == (84, 84, 3)
    finally:
        envs.close()


def test_bench_cameras_runs(tmp_path, no_leftover_servers):
    import json

    from robot_env.apps.bench_cameras import SETTINGS, run_bench_cameras

    out = tmp_path / "cameras.json"
    assert run_bench_cameras(steps=10, out=str(out), settings=SETTINGS[:1]) == 0
    res = json.loads(out.read_text())
    row = res["rows"]["84×84"]
    assert row["bytes"] == 84 * 84 * 3 and row["frame_ms"] > 0 and row["in_process_render_ms"] > 0
    assert set(res["env_ms"]) == {"no camera", "cameras=['external']"}
