"""The Gymnasium env end to end on the embedded simulator (a real server subprocess over ipc)."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from robot_env.apps.demo import run_episodes, scripted_action
from robot_env.envs import LatencyInfo


@pytest.fixture(scope="module")
def env():
    e = gym.make("robot_env/FetchReach-v0")
    yield e
    e.close()


def test_check_env_passes():
    e = gym.make("robot_env/FetchReach-v0")
    try:
        check_env(e.unwrapped, skip_render_check=True)
    finally:
        e.close()


def test_spaces_match_fetch_reach(env):
    assert env.action_space.shape == (4,)
    assert env.observation_space["observation"].shape == (10,)
    assert env.observation_space["achieved_goal"].shape == (3,)
    assert env.observation_space["desired_goal"].shape == (3,)
    assert env.spec.max_episode_steps == 50


def test_goal_within_range_of_start(env):
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        delta = obs["desired_goal"] - env.unwrapped.initial_gripper_xpos
        assert np.all(np.abs(delta) <= 0.15)
        np.testing.assert_allclose(obs["achieved_goal"], obs["observation"][:3])


def test_seeded_episodes_are_identical(env):
    def rollout(seed):
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        traj = [obs["observation"].copy()]
        for _ in range(30):
            obs, r, *_ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
            traj.append(obs["observation"].copy())
        return np.array(traj), obs["desired_goal"]

    a, ga = rollout(7)
    b, gb = rollout(7)
    c, gc = rollout(8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ga, gb)
    assert not np.array_equal(ga, gc)


def test_scripted_agent_reaches_90_percent(env):
    successes, steps, _ = run_episodes(env, episodes=30, seed=100)
    assert np.mean(successes) >= 0.9
    assert steps == 30 * 50


def test_full_scale_action_moves_gripper(env):
    obs, _ = env.reset(seed=0, options={"goal": np.zeros(3)})
    p0 = obs["achieved_goal"].copy()
    for _ in range(3):
        obs, *_ = env.step(np.array([1, 0, 0, 0], np.float32))
    moved3 = obs["achieved_goal"][0] - p0[0]
    assert moved3 > 0.03  # bounded by the arm's URDF joint velocities, see DESIGN.md
    p = obs["achieved_goal"].copy()
    obs, *_ = env.step(np.array([1, 0, 0, 0], np.float32))
    assert 0.0 < obs["achieved_goal"][0] - p[0] <= 0.05 + 1e-9


def test_compute_reward_vectorized_sparse_and_dense():
    e = gym.make("robot_env/FetchReach-v0", reward_type="dense")
    try:
        a = np.zeros((5, 3))
        b = np.stack([np.array([d, 0, 0]) for d in (0.0, 0.01, 0.049, 0.051, 0.2)])
        dense = e.unwrapped.compute_reward(a, b, None)
        np.testing.assert_allclose(dense, -np.abs(b[:, 0]))
    finally:
        e.close()
    u = gym.make("robot_env/FetchReach-v0")
    try:
        sparse = u.unwrapped.compute_reward(a, b, None)
        np.testing.assert_array_equal(sparse, [0, 0, 0, -1, -1])
        assert sparse.dtype == np.float32
        u.reset(seed=1)
        obs, r, _, _, info = u.step(np.zeros(4, np.float32))
        assert r == u.unwrapped.compute_reward(obs["achieved_goal"], obs["desired_goal"], info)
        assert r in (0.0, -1.0) and info["is_success"] in (0.0, 1.0)
        assert (r == 0.0) == (info["is_success"] == 1.0)
    finally:
        u.close()


def test_reset_options_set_goal_and_start(env):
    goal = np.array([0.65, 0.05, 0.75])
    arm = np.array([0.1, -0.7, 0.0, 1.6, 0.0, 0.67, 0.0])
    obs, _ = env.reset(seed=0, options={"goal": goal, "initial_arm_position": arm})
    np.testing.assert_array_equal(obs["desired_goal"], goal)
    np.testing.assert_allclose(env.unwrapped.robot_state["q"][1:8], arm)
    with pytest.raises(ValueError):
        env.reset(options={"goal": [1, 2]})
    with pytest.raises(ValueError):
        env.reset(options={"bogus": 1})


BAD_RESET_OPTIONS = [
    ({"goal": [np.nan, 0.0, 0.7]}, "goal"), ({"goal": [0.6, 0.0, np.inf]}, "goal"), ({"goal": [1, 2]}, "goal"),
    ({"goal": "abc"}, "goal"), ({"goal": {"x": 1}}, "goal"), ({"goal": [[0.6, 0.0, 0.7]]}, "goal"),
    ({"initial_arm_position": np.zeros(6)}, "initial_arm_position"),
    ({"initial_arm_position": [np.nan] * 7}, "initial_arm_position"),
    ({"goal": [0.6, 0.0, 0.7], "initial_arm_position": [0.0] * 6 + [np.inf]}, "initial_arm_position"),
    ({"goal": [0.6, 0.0, 0.7], "bogus": 1}, "unknown reset options"), ("goal", "options"),
]


def test_bad_reset_options_move_nothing():
    """Every option is checked before the reset request: on hardware a reset is a physical move."""
    e = gym.make("robot_env/FetchReach-v0")
    try:
        u = e.unwrapped
        e.reset(seed=1)
        for _ in range(5):
            e.step(np.array([1.0, 0.5, -0.5, 0.0], np.float32))
        before = u._client.state()
        goal, rng = u.goal.copy(), u.np_random.bit_generator.state
        assert before["time"] > 0 and np.abs(before["dq"]).max() > 0  # mid-motion, away from the start
        for options, word in BAD_RESET_OPTIONS:
            with pytest.raises(ValueError, match=word):
                e.reset(seed=7, options=options)
        after = u._client.state()
        assert after["time"] == before["time"]  # lockstep: no reset, no step happened on the server
        for key in ("q", "dq", "target", "ee"):
            np.testing.assert_array_equal(after[key], before[key])
        np.testing.assert_array_equal(u.goal, goal)
        assert u.np_random.bit_generator.state == rng  # not even reseeded
        obs, _ = e.reset(seed=7, options={"goal": [0.6, 0.0, 0.7]})  # a good reset still works
        assert u._client.state()["time"] == 0.0 and obs["desired_goal"].tolist() == [0.6, 0.0, 0.7]
    finally:
        e.close()


def test_actions_are_clipped_and_nonfinite_rejected(env):
    env.reset(seed=3)
    obs_big, *_ = env.step(np.array([100, 0, 0, 0], np.float32))
    env.reset(seed=3)
    obs_one, *_ = env.step(np.array([1, 0, 0, 0], np.float32))
    np.testing.assert_array_equal(obs_big["observation"], obs_one["observation"])
    before = env.unwrapped.robot_state["q"].copy()
    for bad in ([np.nan, 0, 0, 0], [0, np.inf, 0, 0]):
        with pytest.raises(ValueError, match="non-finite"):
            env.step(np.array(bad, np.float32))
    np.testing.assert_array_equal(env.unwrapped.robot_state["q"], before)


def test_joint_velocity_control():
    e = gym.make("robot_env/FetchReach-v0", control="joint_velocity")
    try:
        assert e.action_space.shape == (8,)
        check_env(e.unwrapped, skip_render_check=True)
        e.reset(seed=0)
        q0 = e.unwrapped.robot_state["q"].copy()
        a = np.zeros(8, np.float32)
        a[0] = 1.0  # shoulder pan at full speed
        for _ in range(5):
            e.step(a)
        q1 = e.unwrapped.robot_state["q"]
        assert q1[1] - q0[1] > 0.1
        np.testing.assert_allclose(q1[2:8], q0[2:8], atol=1e-9)
    finally:
        e.close()


def test_latency_wrapper_and_property(env):
    w = LatencyInfo(env)
    w.reset(seed=0)
    _, _, _, _, info = w.step(scripted_action(w.reset(seed=0)[0]))
    lat = info["latency"]
    assert lat["rtt"]["n"] > 0 and lat["rtt"]["p99_ms"] >= lat["rtt"]["p50_ms"] > 0
    assert "latency" not in env.step(np.zeros(4, np.float32))[4]


def test_close_twice_leaves_no_process(no_leftover_servers):
    e = gym.make("robot_env/FetchReach-v0")
    server = e.unwrapped._session.server
    pid = server.proc.pid
    e.reset(seed=0)
    e.close()
    e.close()
    assert server.proc.poll() is not None, f"server {pid} still running"


@pytest.mark.parametrize("reward_type", ["sparse", "dense"])
def test_step_reward_and_success_equal_the_vectorized_ones(reward_type):
    """step computes reward and success for one goal in plain floats: the same values as compute_reward."""
    e = gym.make("robot_env/FetchReach-v0", reward_type=reward_type)
    try:
        u = e.unwrapped
        rng = np.random.default_rng(3)
        hits = 0
        for ep in range(4):
            obs, _ = e.reset(seed=ep)
            for _ in range(50):
                act = np.clip((obs["desired_goal"] - obs["achieved_goal"]) * 20 + rng.normal(0, 0.3, 3), -1, 1)
                obs, r, _, _, info = e.step(np.append(act, 0.0).astype(np.float32))
                expect = float(u.compute_reward(obs["achieved_goal"], obs["desired_goal"], info))
                assert r == expect and type(r) is float
                assert np.signbit(r) == np.signbit(expect)  # sparse: -0.0 on success, as float32(-False)
                d = np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"], axis=-1)
                assert info["is_success"] == float(d < 0.05)
                hits += info["is_success"]
        assert hits > 0
    finally:
        e.close()


def test_subclass_reward_is_used():
    from robot_env.envs import FetchReachEnv

    class Shaped(FetchReachEnv):
        def compute_reward(self, achieved_goal, desired_goal, info):
            return np.float64(42.0)

    e = Shaped()
    try:
        e.reset(seed=0)
        assert e.step(np.zeros(4, np.float32))[1] == 42.0
    finally:
        e.close()


def test_latency_stats_batched_fold_equals_per_sample_histograms():
    """env.unwrapped.latency folds samples in batches: the same histograms as adding each sample, however often read."""
    from robot_env.bridge.latency import Histogram, LatencyStats

    rng = np.random.default_rng(0)
    for read_every in (1, 7, 1000):
        stats = LatencyStats()
        ref = {name: Histogram() for name in ("rtt", "server", "bridge", "action_to_obs")}
        for i in range(700):
            rtt, held = rng.lognormal(np.log(2e-4), 0.6), rng.lognormal(np.log(1e-4), 0.6)
            op = "step" if i % 3 else "state"
            stats.record(op, 100.0, 100.0 + rtt, {"tr": 5.0, "tx": 5.0 + held})
            r, h = (100.0 + rtt) - 100.0, (5.0 + held) - 5.0
            ref["rtt"].add(r)
            ref["server"].add(h)
            ref["bridge"].add(r - h if r > h else 0.0)
            if op == "step":
                ref["action_to_obs"].add(r)
            if i % read_every == 0:
                stats.summary()
        for name, hist in ref.items():
            got = getattr(stats, name)
            assert got.counts == hist.counts and got.n == hist.n, name
            assert got.max == hist.max and got.total == pytest.approx(hist.total)
        assert stats.summary()["rtt"]["p50_ms"] == 1e3 * ref["rtt"].percentile(50)
