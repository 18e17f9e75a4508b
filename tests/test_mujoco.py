"""The MuJoCo backend: its model is the description's kinematics, its servos track the safety layer,
objects live in the state and start where reset options put them, grasps hold, one seed fixes an
episode, bad input changes nothing, and N robots on one server equal N servers robot for robot."""
import math

import mujoco  # the `mujoco` extra is part of the test install: no skip
import numpy as np
import pytest

from robot_env import config as config_mod  # noqa: E402
from robot_env.backends.interface import finish  # noqa: E402
from robot_env.bridge.client import RobotClient  # noqa: E402
from robot_env.bridge.spawn import ServerProcess  # noqa: E402
from robot_env.control.safety import SafetyConfig  # noqa: E402
from robot_env.errors import RequestError, ServerError  # noqa: E402
from robot_env.model.description import ARM, FETCH, GRIPPER, JOINT_NAMES, READY_ARM, READY_TORSO, TORSO  # noqa: E402
from robot_env.model.kinematics import forward  # noqa: E402
from simulators.mujoco_sim.backend import MujocoSim  # noqa: E402
from simulators.mujoco_sim.scenes import TABLE_TOP  # noqa: E402

SAFETY = SafetyConfig(arm_acceleration=5.0)  # the mujoco config's


def sim(**kw) -> MujocoSim:
    return MujocoSim(safety=SAFETY, **kw)


def run(b, cmd, steps):
    for _ in range(steps):
        b.apply(cmd)
        b.advance(0.04)
    return b.state()


def test_the_grip_site_is_the_forward_kinematics_over_random_poses():
    b = sim(scene="empty")
    m, d = b.plant.model, b.plant.datas[0]
    adr = [m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)] for n in JOINT_NAMES
           if n != "gripper_joint"]
    site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "grip")
    rng = np.random.default_rng(0)
    worst_p = worst_r = 0.0
    for _ in range(300):
        q = rng.uniform(FETCH.lower, FETCH.upper)
        d.qpos[adr] = np.delete(q, GRIPPER)
        mujoco.mj_kinematics(m, d)
        p, rot = forward(q[TORSO], q[ARM])
        worst_p = max(worst_p, np.abs(d.site_xpos[site] - p).max())
        worst_r = max(worst_r, np.abs(d.site_xmat[site].reshape(3, 3) - rot).max())
    assert worst_p <= 1e-3 and worst_r <= 1e-6, (worst_p, worst_r)
    b.close()


def test_reset_is_the_ready_pose_and_the_state_reports_the_plant():
    b = sim()
    finish(b.reset(0, {}))
    st = b.state()
    assert st["q"][TORSO] == pytest.approx(READY_TORSO, abs=1e-9)
    assert np.allclose(st["q"][ARM], READY_ARM, atol=1e-9)
    assert np.allclose(st["ee"][:3], b.spec.ready_ee, atol=1e-9)
    # the measured joints are MuJoCo's: hold still for a second and they stay within a milliradian
    st = run(b, {}, 25)
    assert np.abs(st["q"][ARM] - np.array(READY_ARM)).max() < 1e-3
    assert np.abs(st["dq"]).max() < 1e-2
    # gravity-compensated servos still carry their load: efforts are reported, and finite
    assert np.isfinite(st["effort"]).all()
    b.close()


def test_the_servos_track_the_limiter_within_its_limits():
    """Joint-driven: wild targets are clipped by the shared safety layer and flagged; the plant's
    measured speeds stay within Fetch's joint limits and it tracks the limiter closely."""
    b = sim(scene="empty")
    finish(b.reset(0, {}))
    vel = np.array([j.velocity for j in FETCH.joints])
    clipped = b.apply({"arm_position": FETCH.upper[ARM] + 3.0, "torso": -1.0})
    assert "arm_position.position_limit" in clipped and "torso.position_limit" in clipped
    worst_v = worst_track = 0.0
    for _ in range(40):
        b.advance(0.04)
        st = b.state()
        worst_v = max(worst_v, (np.abs(st["dq"]) / vel).max())
        worst_track = max(worst_track, np.abs(st["q"] - b.kernel.q)[:8].max())
        assert (st["q"] >= FETCH.lower - 2e-3).all() and (st["q"] <= FETCH.upper + 2e-3).all()
    assert worst_v <= 1.02, worst_v  # with the inertia feed-forward per substep: no overshoot to speak of
    assert worst_track < 0.02, worst_track
    b.close()


def test_objects_start_where_reset_options_put_them_and_are_reported_in_the_base_frame():
    b = sim()
    finish(b.reset(0, {"object0.xy": np.array([0.72, -0.08])}))
    st = run(b, {}, 10)
    ob = st["objects"]["object0"]
    assert np.allclose(ob["pos"], [0.72, -0.08, TABLE_TOP + 0.025], atol=2e-3)
    assert np.allclose(np.abs(ob["quat"]), [0, 0, 0, 1], atol=1e-3)  # x, y, z, w
    assert np.abs(ob["linvel"]).max() < 1e-2 and np.abs(ob["angvel"]).max() < 1e-2
    # the base turns in place: the block stays put in the world, so it turns the other way in the base frame
    st = run(b, {"base_twist": [0.0, 0.5]}, 25)
    th = st["base"][2]
    assert th > 0.3
    x, y = st["base"][:2]
    wx, wy = 0.72, -0.08
    c, s = math.cos(th), math.sin(th)
    expect = (c * (wx - x) + s * (wy - y), -s * (wx - x) + c * (wy - y))
    assert np.allclose(st["objects"]["object0"]["pos"][:2], expect, atol=3e-3)
    b.close()


@pytest.mark.parametrize("options, what", [
    ({"object0.xy": np.array([2.0, 0.0])}, "off the table"),
    ({"object0.pose": np.array([0.7, 0.0, 0.69, 0.0, 0.0, 0.0, 2.0])}, "unit"),
    ({"object0.pose": np.array([0.7, 0.0, 0.30, 0.0, 0.0, 0.0, 1.0])}, "into the table"),
    ({"object0.pose": np.array([0.7, 0.0, 1e11, 0.0, 0.0, 0.0, 1.0])}, "above where"),
    ({"object0.xy": np.array([np.nan, 0.0])}, "finite"),
    ({"object0.pose": np.array([0.7, 0.0, np.nan, 0.0, 0.0, 0.0, 1.0])}, "finite"),
    ({"object0.xy": np.array([0.7, 0.0, 0.1])}, "2 numbers"),
    ({"object0.xy": np.array([0.7, 0.0]), "object0.pose": np.array([0.7, 0.0, 0.69, 0, 0, 0, 1.0])}, "not both"),
])
def test_a_bad_placement_is_refused_and_changes_nothing(options, what):
    b = sim()
    finish(b.reset(0, {"object0.xy": np.array([0.7, 0.1])}))
    before = b.state()
    with pytest.raises(RequestError, match=what):
        b.reset(1, options)
    after = b.state()
    assert after["time"] == before["time"]
    assert np.array_equal(after["objects"]["object0"]["pos"], before["objects"]["object0"]["pos"])
    b.close()


def test_a_closed_gripper_holds_a_2kg_block_while_lifting():
    b = sim()
    finish(b.reset(0, {"object0.xy": np.array([0.70, 0.0])}))
    assert b.scene.objects[0].mass == 2.0
    st = run(b, {"gripper": 0.10}, 10)  # open
    for _ in range(40):  # above the block, then down to its centre
        target = np.array([0.70, 0.0, TABLE_TOP + 0.025])
        st = run(b, {"ee_delta": np.clip(target - st["ee"][:3], -0.05, 0.05), "gripper": 0.10}, 1)
    assert np.abs(st["ee"][:3] - target).max() < 0.01
    st = run(b, {"gripper": 0.0}, 15)  # close on the block: stopped at its 5 cm width
    assert st["q"][GRIPPER] == pytest.approx(0.05, abs=0.004)
    z0 = st["objects"]["object0"]["pos"][2]
    for _ in range(30):  # lift 15 cm
        st = run(b, {"ee_delta": np.clip(target + [0, 0, 0.15] - st["ee"][:3], -0.05, 0.05), "gripper": 0.0}, 1)
    st = run(b, {"gripper": 0.0}, 50)  # hold it up for 2 s
    lift = st["objects"]["object0"]["pos"][2] - z0
    assert lift > 0.13, lift
    assert np.abs(st["objects"]["object0"]["pos"] - st["ee"][:3]).max() < 0.02  # still between the fingers
    b.close()


def _episode(client, seed, steps=30):
    rng = np.random.default_rng(seed)
    st = client.reset(seed=seed, options={"object0.xy": [0.68, 0.04], "initial_torso": 0.19})
    out = []
    for _ in range(steps):
        st = client.step({"ee_delta": (rng.uniform(-1, 1, 3) * 0.05).tolist()})
        out.append(np.concatenate([st["q"], st["ee"], st["objects"]["object0"]["pos"]]))
    return np.array(out)


def test_one_seed_fixes_an_episode_across_servers_and_bad_requests_change_nothing():
    cfg = config_mod.load("mujoco")
    runs = []
    for _ in range(2):
        srv = ServerProcess(cfg, ready_timeout=60.0)
        c = RobotClient(srv.endpoint, timeout=20.0)
        try:
            runs.append(_episode(c, 7))
            before = c.state()
            for bad in ({"object0.xy": [float("nan"), 0.0]}, {"object1.xy": [0.7, 0.0]},
                        {"object0.xy": [0.7]}, {"object0.xy": [5.0, 0.0]}):
                with pytest.raises(ServerError):
                    c.reset(seed=1, options=bad)
            after = c.state()
            assert after["time"] == before["time"]
            assert np.array_equal(after["q"], before["q"])
        finally:
            c.close()
            srv.close()
    assert np.array_equal(runs[0], runs[1])


def test_n_robots_on_one_server_equal_n_one_robot_servers():
    many = sim(num_robots=3)
    ones = [sim() for _ in range(3)]
    xy = np.array([[0.68, 0.05], [0.72, -0.05], [0.66, 0.1]])
    finish(many.reset(0, {"object0.xy": xy, "initial_torso": np.full(3, 0.19)}))
    for i, b in enumerate(ones):
        finish(b.reset(0, {"object0.xy": xy[i], "initial_torso": 0.19}))
    rng = np.random.default_rng(3)
    worst = 0.0
    for _ in range(40):
        a = rng.uniform(-1, 1, (3, 3)) * 0.05
        many.apply({"ee_delta": a})
        many.advance(0.04)
        sm = many.state()
        for i, b in enumerate(ones):
            b.apply({"ee_delta": a[i]})
            b.advance(0.04)
            s1 = b.state()
            worst = max(worst, np.abs(sm["q"][i] - s1["q"]).max(),
                        np.abs(sm["objects"]["object0"]["pos"][i] - s1["objects"]["object0"]["pos"]).max())
    assert worst < 1e-6, worst
    for b in [many, *ones]:
        b.close()


def test_a_push_episode_records_its_object_and_replays_on_a_fresh_server(tmp_path):
    import gymnasium as gym

    from robot_env.envs import RecordEpisodes
    from robot_env.recording import read_recording, replay

    path = tmp_path / "push.mcap"
    env = RecordEpisodes(gym.make("robot_env/FetchPush-v0"), record=path, flush_interval=0.0)
    rng = np.random.default_rng(0)
    env.reset(seed=3)
    for _ in range(30):
        env.step(rng.uniform(-1, 1, 4).astype(np.float32))
    env.close()
    rec = read_recording(path)
    assert rec.info["reset_options"]["object0.xy"] == [2]
    placed = [c for c in rec.commands if c["op"] == "reset"][0]["options"]["object0.xy"]
    xy = np.array([s["objects"]["object0"]["pos"][:2] for s in rec.states if s.get("objects")])
    assert np.abs(xy - placed).max(axis=1).min() < 1e-9  # a state right after the reset has it where placed
    again = tmp_path / "again.mcap"
    result = replay(path, config="mujoco", record=again)
    assert result.sent == result.total == len(rec.commands) and not result.problems
    rerun = read_recording(again)
    a = np.array([s["objects"]["object0"]["pos"] for s in rec.states if s.get("objects")])
    b = np.array([s["objects"]["object0"]["pos"] for s in rerun.states if s.get("objects")])
    n = min(len(a), len(b))
    assert n >= 30
    np.testing.assert_allclose(b[-n:][-20:], a[-n:][-20:], atol=1e-9)


def test_periods_that_are_not_whole_substeps_keep_physics_on_the_trajectorys_clock():
    """The realtime clock advances by whatever time passed (13 ms, 5 ms, ...): physics runs whole
    2 ms substeps on its own clock and never drifts from the trajectory it tracks."""
    a, b = sim(scene="empty"), sim(scene="empty")
    for x in (a, b):
        finish(x.reset(0, {}))
        x.apply({"arm_position": np.array(READY_ARM) + 0.4})
    rng = np.random.default_rng(1)
    t = 0.0
    vel = np.array([j.velocity for j in FETCH.joints])
    while t < 1.2:
        h = float(rng.uniform(0.003, 0.03))
        a.advance(h)
        t += h
        st = a.state()
        assert (np.abs(st["dq"]) <= vel * 1.05 + 1e-3).all()
    assert abs(a.plant.t_phys - a.plant.t_ctrl) < a.plant.model.opt.timestep
    assert a.plant.datas[0].time == pytest.approx(a.plant.t_phys, abs=1e-9)
    b.advance(t)  # the same span in whole control periods reaches the same pose
    assert np.abs(a.state()["q"] - b.state()["q"]).max() < 2e-3


def test_camera_frames_are_recorded_as_foxglove_images_and_read_back(tmp_path):
    import gymnasium as gym
    from mcap.reader import make_reader

    from robot_env.envs import RecordEpisodes
    from robot_env.recording import read_recording

    path = tmp_path / "cams.mcap"
    env = RecordEpisodes(gym.make("robot_env/FetchPush-v0", cameras=["external"]), record=path, flush_interval=0.0)
    obs, _ = env.reset(seed=0)
    shown = [obs["external"].copy()]
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
        shown.append(obs["external"].copy())
    env.close()
    with open(path, "rb") as f:  # what Foxglove reads: the channel's schema is foxglove.RawImage
        schemas = {ch.topic: s.name for s, ch, _ in make_reader(f).iter_messages(topics=["/camera/external"])}
    assert schemas == {"/camera/external": "foxglove.RawImage"}
    rec = read_recording(path)
    assert rec.cameras == ["external"]
    times, frames = rec.frames("external")
    assert frames.shape == (6, 84, 84, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, np.stack(shown)) and (np.diff(times) >= 0).all()
    # a damaged frame is left out, not decoded into garbage
    rec.events["/camera/external"][2]["data"] = rec.events["/camera/external"][2]["data"][:-8]
    assert rec.frames("external")[1].shape[0] == 5 and any("did not decode" in p for p in rec.problems)


def test_reach_runs_on_the_mujoco_backend_by_config():
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    env = gym.make("robot_env/FetchReach-v0", config="mujoco")
    try:
        check_env(env.unwrapped)
        assert env.unwrapped.backend_kind == "mujoco"
        wins = 0
        for ep in range(3):  # a proportional reacher through the public action space
            obs, _ = env.reset(seed=ep)
            for _ in range(50):
                a = np.clip((obs["desired_goal"] - obs["achieved_goal"]) / 0.05, -1, 1)
                obs, _, _, _, info = env.step(np.append(a, 0.0).astype(np.float32))
            wins += info["is_success"]
        assert wins == 3
    finally:
        env.close()


def test_object_tasks_start_elbow_out_with_the_gripper_where_the_ready_pose_puts_it():
    """The object tasks' start arm keeps the ready gripper (so goals and objects are placed as
    before) but moves the elbow out of the head camera's view of the table; a caller's own start arm
    still wins."""
    import gymnasium as gym

    from robot_env.tasks.fetch import ELBOW_OUT_ARM

    env = gym.make("robot_env/FetchPickAndPlace-v0", cameras=["head"])
    try:
        obs, _ = env.reset(seed=0)
        st = env.unwrapped.robot_state
        assert np.allclose(st["q"][ARM], ELBOW_OUT_ARM, atol=1e-6)
        ready = env.unwrapped._session.info["spec"]["ready_ee"]
        assert np.allclose(st["ee"][:2], ready[:2], atol=5e-4)
        obs, _ = env.reset(seed=0, options={"initial_arm_position": list(READY_ARM)})
        assert np.allclose(env.unwrapped.robot_state["q"][ARM], READY_ARM, atol=1e-6)
    finally:
        env.close()


@pytest.mark.parametrize("n", [1, 3])
def test_a_diverged_simulation_is_a_fault_put_back_at_rest_not_a_silent_teleport(n, tmp_path, monkeypatch):
    """MuJoCo resets a robot's data when its simulation blows up (the arm would jump to all-zero
    joints): the backend puts it back at rest where it was commanded, holds, and latches a fault."""
    monkeypatch.chdir(tmp_path)  # MuJoCo logs its warning to ./MUJOCO_LOG.TXT
    b = sim(scene="table", num_robots=n)
    finish(b.reset(0, {}))
    st = run(b, {"ee_delta": np.tile([0.02, 0.0, 0.0], (n, 1)) if n > 1 else np.array([0.02, 0.0, 0.0])}, 5)
    before = np.atleast_2d(st["q"])[-1].copy()
    b.plant.datas[-1].qvel[:] = 1e12  # a blow-up in the last robot
    st = run(b, {}, 1)
    faults = st["faults"]
    assert [f["code"] for f in faults] == ["physics_unstable"] and faults[0]["robots"] == [n - 1]
    assert b.faults == faults
    q = np.atleast_2d(st["q"])[-1]
    assert np.abs(q[ARM] - before[ARM]).max() < 0.05  # where it was, not at the all-zero pose
    assert np.abs(np.atleast_2d(st["dq"])[-1]).max() < 1.0
    st = run(b, {}, 10)
    assert np.isfinite(np.atleast_2d(st["q"])).all() and st["faults"]  # still latched, still at rest
    assert list(st["clipped"]["physics_unstable.held"]) == [n - 1]  # its commands are held, and the state says so
    b.reset_faults()
    assert b.state()["faults"] == [] and b.faults == []
    b.plant.datas[0].qvel[:] = 1e12
    run(b, {}, 1)
    assert b.faults
    finish(b.reset(0, {}))  # a reset of the robot clears it too
    assert b.state()["faults"] == []
    b.close()


def test_an_object_flung_by_a_blow_up_is_a_fault_too():
    """Energy pumped in below MuJoCo's own warning thresholds (a too stiff grasp for the timestep) flings
    the object: that is the same fault, the robot and the block put back at rest, not a block in orbit."""
    b = sim(scene="table")
    finish(b.reset(0, {"object0.xy": np.array([0.7, 0.0])}))
    run(b, {}, 3)
    assert b.faults == []
    pos = b.state()["objects"]["object0"]["pos"].copy()
    _, v = b.plant.objects["object0"]
    b.plant.datas[0].qvel[v + 2] = 25.0  # upward at 25 m/s, and MuJoCo has nothing to warn of
    st = run(b, {}, 1)
    assert [f["code"] for f in st["faults"]] == ["physics_unstable"] and "flung" in st["faults"][0]["message"]
    block = st["objects"]["object0"]
    assert np.linalg.norm(block["linvel"]) < 1.0 and block["pos"][2] < pos[2] + 0.01  # back on the table
    b.close()


def test_asking_for_frames_does_not_change_the_physics():
    """The same seed and actions with and without a frame each step: the same states, bit for bit."""
    runs = []
    for frames in (False, True):
        b = sim()
        finish(b.reset(0, {"object0.xy": np.array([0.68, 0.04]), "initial_torso": 0.19}))
        rng = np.random.default_rng(5)
        out = []
        for _ in range(60):
            b.apply({"ee_delta": rng.uniform(-1, 1, 3) * 0.05})
            b.advance(0.04)
            if frames:
                assert b.render(["external"])["external"].std() > 0
            st = b.state()
            out.append(np.concatenate([st["q"], st["dq"], st["objects"]["object0"]["pos"]]))
        runs.append(np.array(out))
        b.close()
    assert np.array_equal(runs[0], runs[1])


def test_one_robots_divergence_leaves_the_others_moving_and_holds_only_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo logs its warning to ./MUJOCO_LOG.TXT
    b = sim(scene="empty", num_robots=3)
    finish(b.reset(0, {}))
    goal = np.array(READY_ARM) + np.array([0.6, 0, 0, 0, 0, 0, 0])
    b.apply({"arm_position": np.tile(goal, (3, 1))})
    b.advance(0.08)
    b.plant.datas[1].qvel[:] = 1e12  # robot 1 blows up mid-move
    b.advance(0.04)
    assert b.faults and b.faults[0]["robots"] == [1]
    held = np.atleast_2d(b.state()["q"])[1, 1]
    flags = b.apply({"arm_position": np.tile(goal, (3, 1))})  # still commanded: robot 1 is not moved
    assert flags["physics_unstable.held"] == [1]
    for _ in range(40):
        b.advance(0.04)
    q = np.atleast_2d(b.state()["q"])
    assert np.abs(q[[0, 2], 1] - goal[0]).max() < 0.01  # the others reached their target
    assert abs(q[1, 1] - held) < 0.05  # the diverged one held where it was put back
    b.close()


def test_a_joint_forced_past_its_speed_limit_is_flagged():
    """Free motion never trips it; a joint that contact (or anything) drives past 110 % of its limit
    is named in `clipped` as `joint.overspeed`, for one robot and N."""
    for n in (1, 2):
        b = sim(scene="empty", num_robots=n)
        finish(b.reset(0, {}))
        goal = np.array(READY_ARM) + 0.5
        st = run(b, {"arm_position": np.tile(goal, (n, 1)) if n > 1 else goal}, 20)
        assert "joint.overspeed" not in st["clipped"]
        b.plant.dq[-1, 6] = 3.0 * b.plant.vmax[6]  # as a sensor would read a wrist knocked by contact
        assert b.state()["clipped"]["joint.overspeed"] == [n - 1]
        b.close()
