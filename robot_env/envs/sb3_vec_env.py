"""Stable-Baselines3 `VecEnv` over the batched FetchReach: N robots, one server, HER-ready.

SB3 wants its own vector semantics, not Gymnasium's: reset in the same step, the last observation
of a finished episode in ``infos[i]["terminal_observation"]``, ``infos[i]["TimeLimit.truncated"]``
so the replay buffer bootstraps through time limits, and `env_method("compute_reward", ...)`, which
`HerReplayBuffer` calls to relabel goals. This adapter gives exactly that on top of
`FetchReachVectorEnv` in SAME_STEP autoreset mode; nothing is stepped one robot at a time.
"""
from __future__ import annotations

import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from .fetch_reach_vector import FetchReachVectorEnv


class FetchReachVecEnv(VecEnv):
    """`FetchReachVecEnv(num_envs, **FetchReachVectorEnv kwargs)`: use it wherever SB3 takes a VecEnv."""

    def __init__(self, num_envs: int = 1, **kwargs):
        kwargs["autoreset_mode"] = AutoresetMode.SAME_STEP
        self.venv = FetchReachVectorEnv(num_envs=num_envs, **kwargs)
        super().__init__(num_envs, self.venv.single_observation_space, self.venv.single_action_space)
        self._actions = None

    # -- VecEnv API --------------------------------------------------------------------------
    def reset(self):
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        options = self._options[0] if self._options and self._options[0] else None
        obs, info = self.venv.reset(seed=seed, options=options)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{"is_success": float(s)} for s in info["is_success"]]
        return obs

    def step_async(self, actions) -> None:
        self._actions = actions

    def step_wait(self):
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        dones = terminated | truncated
        success = info.get("final_info", {}).get("is_success")
        infos = []
        for i in range(self.num_envs):
            if dones[i]:
                infos.append({"is_success": float(success[i]), "terminal_observation": info["final_obs"][i],
                              "TimeLimit.truncated": bool(truncated[i] and not terminated[i])})
            else:
                infos.append({"is_success": float(info["is_success"][i])})
        return obs, reward.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name, indices=None):
        return [getattr(self.venv, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name, value, indices=None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        """The task's methods are the same for every robot (`compute_reward` is vectorized): one call each."""
        method = getattr(self.venv, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._get_indices(indices))

    # -- extras ------------------------------------------------------------------------------
    @property
    def latency(self):
        return self.venv.latency
