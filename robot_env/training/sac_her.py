"""SAC + HER with periodic evaluation and an early stop: one loop for `robot-env train` and for the
Gymnasium-Robotics anchor of `robot-env bench --train`.

This module imports only numpy, gymnasium, torch and stable-baselines3 (never the rest of
robot_env), so `bench --train` runs this very file in another Python (`--anchor-python`) on
`FetchReach-v4`: both sides share the hyper-parameters, the evaluation protocol and the clock.
Run as a script it trains on a Gymnasium-Robotics env and prints one JSON line.
"""
from __future__ import annotations

import json
import sys
import time

import gymnasium as gym
import numpy as np

# rl-baselines3-zoo's FetchReach settings (hyperparams/sac.yml, her variant), with a smaller buffer.
HYPERPARAMS = dict(batch_size=256, gamma=0.95, learning_rate=1e-3, learning_starts=1000, buffer_size=100_000,
                   tau=0.005, ent_coef="auto", net_arch=[64, 64], n_critics=1, n_sampled_goal=4)
# The object tasks (Push, Slide, PickAndPlace): rl-baselines3-zoo's Fetch settings (tqc.yml / her.yml:
# buffer 1e6, gamma 0.95, lr 1e-3, tau 0.05, 'future' goals k = 4, two critics), with the networks
# (2 x 256 instead of 3 x 512) and the batch (256 instead of 2048) cut to what one CPU thread trains
# at a useful rate here: ≈ 6-11 ms per gradient step, against ≈ 45 ms for 3 x 256 at batch 512.
OBJECT_HYPERPARAMS = dict(batch_size=256, gamma=0.95, learning_rate=1e-3, learning_starts=1000, buffer_size=1_000_000,
                          tau=0.05, ent_coef="auto", net_arch=[256, 256], n_critics=2, n_sampled_goal=4)
EVAL_EPISODES = 20
SUCCESS_THRESHOLD = 0.95


class TimeFeature(gym.ObservationWrapper):
    """sb3_contrib's TimeFeatureWrapper for dict observations: appends 1 - t / T to `observation`."""

    def __init__(self, env, max_steps: int = 50):
        super().__init__(env)
        self.max_steps = max_steps
        self._t = 0
        box = env.observation_space["observation"]
        low = np.append(box.low, 0.0).astype(box.dtype)
        high = np.append(box.high, 1.0).astype(box.dtype)
        spaces = dict(env.observation_space.spaces)
        spaces["observation"] = gym.spaces.Box(low, high, dtype=box.dtype)
        self.observation_space = gym.spaces.Dict(spaces)

    def reset(self, **kw):
        self._t = 0
        return super().reset(**kw)

    def step(self, action):
        self._t += 1
        return super().step(action)

    def observation(self, obs):
        obs = dict(obs)
        obs["observation"] = np.append(obs["observation"], 1.0 - self._t / self.max_steps)
        return obs


def evaluate(model, env, episodes: int, seed: int, normalize=None) -> float:
    """Deterministic policy, `episodes` seeded episodes, success = info['is_success'] at the end."""
    wins = 0
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, info = False, {}
        while not done:
            x = normalize.normalize_obs(obs) if normalize is not None else obs
            action, _ = model.predict(x, deterministic=True)
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        wins += bool(info.get("is_success", 0.0))
    return wins / episodes


def train_loop(make_env, steps: int, seed: int = 0, eval_every: int = 1000, eval_episodes: int = EVAL_EPISODES,
               threshold: float = SUCCESS_THRESHOLD, normalize: bool = False, log=None, make_venv=None,
               demos: int = 0, demo_agent=None, **overrides):
    """Train until `steps` or until evaluation success ≥ `threshold`.

    `make_env(eval: bool)` returns a single (TimeLimit-wrapped) goal env; `make_venv()`, when given,
    the training VecEnv instead of one such env (N robots: one gradient step per robot step unless
    `gradient_steps` says otherwise). `demos` > 0: that many episodes of `demo_agent` (an object with
    `reset(obs)` / `act(obs)` on the VecEnv's unnormalized observations) go into the replay buffer
    before learning (Nair et al. 2018, HER with demonstrations): exploration that rarely touches the
    object gives HER nothing to relabel. Returns (model, vecnormalize or None, result dict with the
    learning curve).
    """
    import torch
    from stable_baselines3 import SAC, HerReplayBuffer
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(1)  # the other core runs the robot server
    hp = dict(HYPERPARAMS, **overrides)
    venv = make_venv() if make_venv is not None else DummyVecEnv([lambda: make_env(False)])
    hp.setdefault("gradient_steps", venv.num_envs)
    vecnorm = None
    if normalize:
        venv = vecnorm = VecNormalize(venv, norm_obs=True, norm_reward=False, gamma=hp["gamma"])
    eval_env = make_env(True)
    curve: list[dict] = []
    t0 = time.perf_counter()
    eval_time = [0.0]

    class Evaluate(BaseCallback):
        next_eval = eval_every

        def _on_step(self) -> bool:
            n = self.num_timesteps  # grows by the number of envs per step
            if n < self.next_eval and n < steps:
                return True
            while self.next_eval <= n:
                self.next_eval += eval_every
            te = time.perf_counter()
            rate = evaluate(self.model, eval_env, eval_episodes, seed=10_000 + seed, normalize=vecnorm)
            eval_time[0] += time.perf_counter() - te
            wall = time.perf_counter() - t0
            curve.append({"steps": n, "success": rate, "wall_s": wall})
            if log:
                log(n, steps, rate, wall)
            return rate < threshold

    model = SAC("MultiInputPolicy", venv, seed=seed, verbose=0, device="cpu",
                batch_size=hp["batch_size"], gamma=hp["gamma"], learning_rate=hp["learning_rate"],
                learning_starts=hp["learning_starts"], buffer_size=hp["buffer_size"], tau=hp["tau"],
                ent_coef=hp["ent_coef"], gradient_steps=hp["gradient_steps"],
                replay_buffer_class=HerReplayBuffer,
                replay_buffer_kwargs=dict(goal_selection_strategy="future", n_sampled_goal=hp["n_sampled_goal"]),
                policy_kwargs=dict(net_arch=hp["net_arch"], n_critics=hp["n_critics"]))
    demo_result = seed_demonstrations(model, venv, vecnorm, demo_agent, demos) if demos else None
    try:
        model.learn(total_timesteps=steps, callback=Evaluate())
    finally:
        eval_env.close()
    wall = time.perf_counter() - t0
    reached = next((c for c in curve if c["success"] >= threshold), None)
    result = {
        "steps": int(model.num_timesteps), "wall_s": wall, "eval_wall_s": eval_time[0],
        "final_success": curve[-1]["success"] if curve else None,
        "reached_threshold": reached is not None, "threshold": threshold,
        "steps_to_threshold": reached["steps"] if reached else None,
        "wall_s_to_threshold": reached["wall_s"] if reached else None,
        "curve": curve, "seed": seed, "eval_every": eval_every, "eval_episodes": eval_episodes,
        "normalize": normalize, "hyperparams": hp,
    }
    if demo_result is not None:
        result["demonstrations"] = demo_result
    if vecnorm is not None:
        vecnorm.training = False
    return model, vecnorm, result


def seed_demonstrations(model, venv, vecnorm, agent, episodes: int) -> dict:
    """Roll `agent` for `episodes` episodes on the training VecEnv and store every transition in the
    model's (HER) replay buffer the way SB3 stores its own (`_store_transition`: unnormalized
    observations, the terminal observation of a finished episode). The observation normalizer's
    statistics learn from them too. Returns the demonstrations' count, steps and success rate."""
    if agent is None:
        raise ValueError("demos > 0 needs a demo_agent")
    original = vecnorm.get_original_obs if vecnorm is not None else None
    model._last_obs = venv.reset()
    model._last_original_obs = original() if original else model._last_obs
    agent.reset(model._last_original_obs)
    done_eps = wins = steps = 0
    while done_eps < episodes:
        action = np.clip(np.asarray(agent.act(model._last_original_obs), np.float32), -1.0, 1.0)
        new_obs, rewards, dones, infos = venv.step(action)
        model._store_transition(model.replay_buffer, action, new_obs, rewards, dones, infos)
        steps += venv.num_envs
        if dones.any():
            done_eps += int(dones.sum())
            wins += sum(bool(infos[i].get("is_success", 0.0)) for i in np.flatnonzero(dones))
            agent.reset(model._last_original_obs, dones)
    return {"episodes": done_eps, "steps": steps, "success": wins / max(done_eps, 1)}


def _anchor(argv) -> int:
    """`python sac_her.py '{"env": "FetchReach-v4", "steps": ..., ...}'`: train in-process, print JSON."""
    import warnings
    warnings.filterwarnings("ignore")
    args = json.loads(argv[0])
    import gymnasium_robotics
    import mujoco
    import stable_baselines3
    gym.register_envs(gymnasium_robotics)
    env_id = args.pop("env", "FetchReach-v4")
    time_feature = args.pop("time_feature", True)

    def make_env(evaluating):
        env = gym.make(env_id)
        return TimeFeature(env) if time_feature else env

    def log(n, total, rate, wall):
        print(f"  anchor {env_id}: {n:>6}/{total} steps  eval success {rate:5.0%}  {wall:6.1f} s",
              file=sys.stderr, flush=True)

    _, _, result = train_loop(make_env, log=log, **args)
    result.update(env=env_id, time_feature=time_feature, gymnasium_robotics=gymnasium_robotics.__version__,
                  mujoco=mujoco.__version__, stable_baselines3=stable_baselines3.__version__,
                  executable=sys.executable)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_anchor(sys.argv[1:]))
