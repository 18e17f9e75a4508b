"""`gymnasium.make_vec` on the batched server, and the SB3 VecEnv adapter that HER trains on."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import robot_env  # noqa: F401  (registers the env)
from robot_env.envs.fetch_reach_vector import FetchReachVectorEnv
from robot_env.errors import ConfigError

ENV_ID = "robot_env/FetchReach-v0"


def _scripted(obs) -> np.ndarray:
    a = np.clip((obs["desired_goal"] - obs["achieved_goal"]) * 20, -1, 1)
    return np.concatenate([a, np.zeros((a.shape[0], 1))], axis=1).astype(np.float32)


def test_make_vec_is_one_batched_server_and_reaches(no_leftover_servers):
    env = gym.make_vec(ENV_ID, num_envs=16)
    try:
        u = env.unwrapped
        assert isinstance(u, FetchReachVectorEnv) and env.num_envs == 16
        assert env.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
        assert env.action_space.shape == (16, 4)
        assert env.observation_space["observation"].shape == (16, 10)
        assert env.single_observation_space["desired_goal"].shape == (3,)
        obs, info = env.reset(seed=0)
        assert obs in env.observation_space
        assert u._session.info["num_robots"] == 16
        for t in range(50):
            obs, reward, terminated, truncated, info = env.step(_scripted(obs))
            assert reward.shape == (16,) and not terminated.any()
            assert truncated.all() == (t == 49)
        assert info["is_success"].mean() >= 0.9
        np.testing.assert_array_equal(reward, u.compute_reward(obs["achieved_goal"], obs["desired_goal"], None))
        # NEXT_STEP: the step after the 50th resets every robot, with reward 0 and fresh goals
        goals = obs["desired_goal"].copy()
        obs, reward, terminated, truncated, info = env.step(np.ones((16, 4), np.float32))
        assert (reward == 0).all() and not truncated.any()
        assert not np.allclose(obs["desired_goal"], goals)
        np.testing.assert_allclose(obs["observation"][:, 5:], 0.0, atol=1e-12)  # at rest after the reset
    finally:
        env.close()


def _assert_robot_obs(vobs, i, obs):
    """Robot i's part of a vector observation is the single env's observation."""
    for k in obs:
        np.testing.assert_allclose(vobs[k][i], obs[k], atol=1e-9)


@pytest.mark.parametrize("kw", [{}, {"control": "joint_velocity"}, {"block_gripper": False, "reward_type": "dense"}])
def test_vector_robots_match_single_envs_step_for_step(kw, no_leftover_servers):
    """Robot i of the vector env and a single env given its goal and actions see the same episode."""
    n = 3
    venv = FetchReachVectorEnv(num_envs=n, **kw)
    singles = [gym.make(ENV_ID, **kw) for _ in range(n)]
    try:
        vobs, _ = venv.reset(seed=5)
        sobs = [s.reset(options={"goal": vobs["desired_goal"][i]})[0] for i, s in enumerate(singles)]
        for i, o in enumerate(sobs):  # the same start
            _assert_robot_obs(vobs, i, o)
        width = venv.single_action_space.shape[0]
        actions = np.random.default_rng(0).uniform(-1.2, 1.2, (30, n, width)).astype(np.float32)
        for a in actions:
            vobs, vr, _, _, vinfo = venv.step(a)
            for i, s in enumerate(singles):
                o, r, _, _, info = s.step(a[i])
                _assert_robot_obs(vobs, i, o)
                assert vr[i] == pytest.approx(r, abs=1e-12) and vinfo["is_success"][i] == info["is_success"]
    finally:
        venv.close()
        for s in singles:
            s.close()


def test_seeded_vector_env_is_deterministic(no_leftover_servers):
    def rollout():
        env = FetchReachVectorEnv(num_envs=4, overrides={"server.kinematic": {"observation_noise": 0.001}})
        try:
            obs, _ = env.reset(seed=11)
            out = [obs["observation"].copy(), obs["desired_goal"].copy()]
            for a in np.random.default_rng(1).uniform(-1, 1, (60, 4, 4)):  # crosses an autoreset
                obs, *_ = env.step(a)
                out.append(obs["observation"].copy())
                out.append(obs["desired_goal"].copy())
            return out
        finally:
            env.close()

    a, b = rollout(), rollout()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_same_step_autoreset_and_partial_reset(no_leftover_servers):
    env = FetchReachVectorEnv(num_envs=4, autoreset_mode=AutoresetMode.SAME_STEP, max_episode_steps=5)
    try:
        obs, _ = env.reset(seed=0)
        for _ in range(4):
            obs, *_ = env.step(np.ones((4, 4), np.float32))
        last = obs["achieved_goal"].copy()
        obs, reward, terminated, truncated, info = env.step(np.ones((4, 4), np.float32))
        assert truncated.all() and info["_final_obs"].all()
        final = np.stack([f["achieved_goal"] for f in info["final_obs"]])
        assert np.linalg.norm(final - last, axis=1).min() > 1e-3  # the fifth step moved them
        np.testing.assert_allclose(obs["observation"][:, 5:], 0.0, atol=1e-12)  # already reset
        assert np.linalg.norm(obs["achieved_goal"] - final, axis=1).min() > 1e-3
        # reset only robots 1 and 2; 0 and 3 keep their pose and goal
        env.step(np.ones((4, 4), np.float32))
        before = env.robot_state["q"].copy(), env.goal.copy()
        obs, _ = env.reset(options={"reset_mask": np.array([False, True, True, False])})
        q = env.robot_state["q"]
        np.testing.assert_array_equal(q[[0, 3]], before[0][[0, 3]])
        np.testing.assert_array_equal(env.goal[[0, 3]], before[1][[0, 3]])
        assert not np.allclose(q[[1, 2]], before[0][[1, 2]])
    finally:
        env.close()


def test_vector_env_bad_input(no_leftover_servers):
    with pytest.raises(ConfigError, match="needs a simulator of N robots"):
        FetchReachVectorEnv(num_envs=2, config="fetch_dynamixel")
    env = FetchReachVectorEnv(num_envs=2)
    try:
        env.reset(seed=0)
        with pytest.raises(ValueError, match="non-finite"):
            env.step(np.array([[0, 0, 0, 0], [np.nan, 0, 0, 0]], np.float32))
        with pytest.raises(ValueError, match="shape"):
            env.step(np.zeros((3, 4), np.float32))
        with pytest.raises(ValueError, match="unknown reset options"):
            env.reset(options={"speed": 2})
        obs, *_ = env.step(np.full((2, 4), 7.0, np.float32))  # clipped to the Box like FetchReach
        assert obs in env.observation_space
    finally:
        env.close()


def test_vector_env_connects_to_a_running_batched_server_of_its_size(no_leftover_servers):
    from robot_env import config as config_mod
    from robot_env.bridge.spawn import ServerProcess
    cfg = config_mod.load("sim", {"server.kinematic": {"num_robots": 3}})
    srv = ServerProcess(cfg)
    try:
        with pytest.raises(ConfigError, match=r"hosts 3 robot\(s\) \(kinematic backend\); this needs"):
            FetchReachVectorEnv(num_envs=4, overrides={"client": {"endpoint": srv.endpoint}})
        env = gym.make_vec(ENV_ID, num_envs=3, overrides={"client": {"endpoint": srv.endpoint}})
        try:
            assert env.unwrapped._session.server is None  # connected, not spawned
            obs, _ = env.reset(seed=0)
            obs, *_ = env.step(np.ones((3, 4), np.float32))
            assert obs["observation"].shape == (3, 10)
        finally:
            env.close()
        assert srv.alive()  # closing a connected env leaves the server running
    finally:
        srv.close()


def test_sb3_vec_env_feeds_her(no_leftover_servers):
    """SB3 SAC + HerReplayBuffer on the adapter: terminal observations and timeouts reach the buffer,
    and HER's relabelling calls compute_reward through env_method."""
    pytest.importorskip("stable_baselines3")
    import torch
    from stable_baselines3 import SAC, HerReplayBuffer
    from stable_baselines3.common.env_checker import check_env  # noqa: F401  (single envs only)

    from robot_env.envs.sb3_vec_env import FetchReachVecEnv

    torch.set_num_threads(1)
    env = FetchReachVecEnv(4)
    try:
        env.seed(3)
        obs = env.reset()
        assert obs["observation"].shape == (4, 10)
        push = np.tile(np.array([1.0, 0.0, -0.5, 0.0], np.float32), (4, 1))
        for t in range(50):
            obs, reward, dones, infos = env.step(push)
        assert dones.all() and all(i["TimeLimit.truncated"] for i in infos)
        term = np.stack([i["terminal_observation"]["achieved_goal"] for i in infos])
        assert np.linalg.norm(term - obs["achieved_goal"], axis=1).max() > 0  # obs is already the reset one
        relabel = env.env_method("compute_reward", term, term + 0.1, infos, indices=[0])
        assert len(relabel) == 1 and relabel[0].shape == (4,) and (relabel[0] == -1).all()
        model = SAC("MultiInputPolicy", env, replay_buffer_class=HerReplayBuffer, learning_starts=220,
                    batch_size=64, policy_kwargs=dict(net_arch=[32, 32]), seed=0, device="cpu",
                    replay_buffer_kwargs=dict(goal_selection_strategy="future", n_sampled_goal=4))
        model.learn(400)  # 100 vector steps = 2 episodes per robot
        buf = model.replay_buffer
        assert buf.pos == 100 and buf.n_envs == 4
        assert buf.timeouts[:100].sum() == 8  # two truncations per robot, each marked a timeout
        np.testing.assert_array_equal(buf.ep_length[:100], 50)
        sample = buf.sample(32)  # relabelled goals: rewards recomputed by compute_reward
        assert set(np.unique(sample.rewards.numpy())) <= {-1.0, 0.0}
    finally:
        env.close()


def test_train_with_num_envs_reaches_95(tmp_path, no_leftover_servers):
    """`robot-env train --num-envs 4`: SAC + HER on one batched server of 4 robots learns the task."""
    pytest.importorskip("stable_baselines3")
    from robot_env.training.train import load_bundle, train

    meta = train(steps=8000, out=str(tmp_path / "p"), seed=0, eval_every=1000, num_envs=4, log=None)
    t = meta["training"]
    assert t["reached_threshold"], t
    assert meta["num_envs"] == 4
    assert load_bundle(str(tmp_path / "p")).meta["observation_space"]["spaces"]["observation"]["shape"] == [10]


def test_bad_reset_options_change_nothing_and_rows_follow_the_mask(no_leftover_servers):
    env = FetchReachVectorEnv(num_envs=3)
    try:
        env.reset(seed=0)
        for _ in range(5):
            env.step(np.ones((3, 4), np.float32))
        q, goal, steps = env.robot_state["q"].copy(), env.goal.copy(), env._steps.copy()
        for opts, words in (({"goal": [0.5, 0.1]}, "shape"), ({"goal": np.full((3, 3), np.nan)}, "non-finite"),
                            ({"reset_mask": np.zeros(3, bool)}, "no env"),
                            ({"initial_arm_position": np.zeros((2, 7))}, "shape")):
            with pytest.raises(ValueError, match=words):
                env.reset(options=opts)
        np.testing.assert_array_equal(env.unwrapped._client.state()["q"], q)  # the server was not reset
        np.testing.assert_array_equal(env.goal, goal)
        np.testing.assert_array_equal(env._steps, steps)
        # per-env rows with a mask: only the masked envs' rows are used
        arms = np.tile(np.array([0.0, -0.8304, 0.0, 1.6775, 0.0, 0.724, 0.0]), (3, 1))
        arms[2, 0] = 0.3
        goals = np.array([[0.5, 0.0, 0.7], [0.6, 0.1, 0.8], [0.7, -0.1, 0.9]])
        env.reset(options={"reset_mask": np.array([False, False, True]), "initial_arm_position": arms,
                           "goal": goals})
        assert env.robot_state["q"][2, 1] == pytest.approx(0.3)
        np.testing.assert_array_equal(env.goal[2], goals[2])
        np.testing.assert_array_equal(env.goal[:2], goal[:2])
    finally:
        env.close()


def test_bad_reset_options_move_no_robot_and_keep_time_and_rng(no_leftover_servers):
    """Non-numeric and non-finite options are refused as ValueError before the reset request."""
    env = gym.make_vec(ENV_ID, num_envs=3)
    try:
        u = env.unwrapped
        env.reset(seed=0)
        for _ in range(5):
            env.step(np.ones((3, 4), np.float32))
        before = u._client.state()
        rng = u.np_random.bit_generator.state
        assert before["time"] > 0
        for opts in ({"goal": "abc"}, {"goal": {"x": 1}}, {"goal": [0.6, 0.0, np.nan]},
                     {"initial_arm_position": np.full((3, 7), np.inf)}, {"initial_arm_position": [[0.0] * 7] * 2},
                     {"goal": [0.6, 0.0, 0.7], "reset_mask": [1, 0, 1]}, {"goal": [0.6, 0.0, 0.7], "bogus": 1},
                     "goal"):
            with pytest.raises(ValueError):
                env.reset(seed=3, options=opts)
        after = u._client.state()
        assert after["time"] == before["time"]
        for key in ("q", "dq", "target"):
            np.testing.assert_array_equal(after[key], before[key])
        assert u.np_random.bit_generator.state == rng
    finally:
        env.close()


def test_sb3_vec_env_per_env_options_and_attributes(no_leftover_servers):
    pytest.importorskip("stable_baselines3")
    from robot_env.envs.sb3_vec_env import FetchReachVecEnv
    env = FetchReachVecEnv(2)
    try:
        goals = [np.array([0.5, 0.0, 0.7]), np.array([0.7, 0.1, 0.9])]
        env.set_options([{"goal": goals[0]}, {"goal": goals[1]}])
        obs = env.reset()
        np.testing.assert_array_equal(obs["desired_goal"], np.stack(goals))
        got = env.get_attr("goal", indices=[1])
        assert len(got) == 1 and np.array_equal(got[0], goals[1])
        assert env.get_attr("reward_type") == ["sparse", "sparse"]
    finally:
        env.close()


def test_sb3_vec_env_bad_options_move_nothing(no_leftover_servers):
    pytest.importorskip("stable_baselines3")
    from robot_env.envs.sb3_vec_env import FetchReachVecEnv
    env = FetchReachVecEnv(2)
    try:
        env.reset()
        env.step_async(np.ones((2, 4), np.float32))
        env.step_wait()
        before = env.venv._client.state()
        for options, word in (([{"goal": {"x": 1}}, {"goal": [0.6, 0.0, 0.7]}], "numbers"),
                              ([{"goal": [0.6, 0.0, np.nan]}, {"goal": [0.6, 0.0, 0.7]}], "non-finite"),
                              ([{"goal": [0.6, 0.0]}, {"goal": [0.6, 0.0]}], "shape")):
            env.set_options(options)
            with pytest.raises(ValueError, match=word):
                env.reset()
        after = env.venv._client.state()
        assert after["time"] == before["time"]
        np.testing.assert_array_equal(after["q"], before["q"])
    finally:
        env.close()


def test_next_step_autoreset_when_episodes_end_at_different_steps(no_leftover_servers):
    """After a partial reset the robots' episodes end apart: the step after one ends resets it
    (reward 0, at rest) while the others are stepped in the same request."""
    env = FetchReachVectorEnv(num_envs=3, max_episode_steps=4)
    try:
        env.reset(seed=0)
        push = np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (3, 1))
        for _ in range(2):
            env.step(push)
        env.reset(options={"reset_mask": np.array([False, True, False])})  # robot 1 starts over
        for _ in range(2):
            obs, reward, terminated, truncated, info = env.step(push)
        assert truncated.tolist() == [True, False, True]
        before = obs["achieved_goal"].copy()
        obs, reward, terminated, truncated, info = env.step(push)
        assert reward[0] == 0 and reward[2] == 0 and not truncated.any()
        np.testing.assert_allclose(obs["observation"][[0, 2], 5:], 0.0, atol=1e-12)  # reset, at rest
        assert obs["achieved_goal"][1, 0] > before[1, 0] + 1e-3  # robot 1 was stepped
        obs, reward, terminated, truncated, info = env.step(push)
        assert truncated.tolist() == [False, True, False]  # its fourth step since its reset
    finally:
        env.close()
