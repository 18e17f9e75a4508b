"""Stable-Baselines3 `VecEnv` over the vector env: N robots, one server, HER-ready, any task.

SB3 wants its own vector semantics, not Gymnasium's: reset in the same step, the last observation
of a finished episode in ``infos[i]["terminal_observation"]``, ``infos[i]["TimeLimit.truncated"]``
so the replay buffer bootstraps through time limits, and `env_method("compute_reward", ...)`, which
`HerReplayBuffer` calls to relabel goals. This adapter gives exactly that on top of the vector
env (`vector_env.BridgeVectorEnv`) in SAME_STEP autoreset mode; nothing is stepped one robot at a time.
"""
from __future__ import annotations

import numpy as np
from gymnasium.vector import AutoresetMode

try:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv
except ImportError as exc:  # the core install has no SB3: say how to get it
    from ..training import TRAIN_HINT
    raise ImportError(f"robot_env.envs.sb3_vec_env needs Stable-Baselines3 ({exc}): {TRAIN_HINT}") from None

from .goal_env import option_array
from .registration import entry


class BridgeVecEnv(VecEnv):
    """`BridgeVecEnv(env_id, num_envs, **vector env kwargs)`: use it wherever SB3 takes a VecEnv."""

    def __init__(self, env_id: str, num_envs: int = 1, **kwargs):
        import importlib
        kwargs["autoreset_mode"] = AutoresetMode.SAME_STEP
        module, name = entry(env_id).vector_env.split(":")
        make = getattr(importlib.import_module(module), name)
        if name == "make_vector_env":
            kwargs["env_id"] = env_id
        self.venv = make(num_envs=num_envs, **kwargs)
        super().__init__(num_envs, self.venv.single_observation_space, self.venv.single_action_space)
        self._actions = None

    # -- VecEnv API --------------------------------------------------------------------------
    def reset(self):
        # SB3 seeds env i with seed + i: one seed (the first) fixes the whole batch's episode.
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs, info = self.venv.reset(seed=seed, options=self._batched_options())
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{"is_success": float(s)} for s in info["is_success"]]
        return obs

    def _batched_options(self):
        """SB3 keeps one options dict per env (`set_options`); the vector env takes per-env rows."""
        given = [o or {} for o in (self._options or [])]
        if not any(given):
            return None
        keys = set().union(*given)
        if any(set(o) != keys for o in given):
            raise ValueError("set_options: give every env the same option keys (here: per-env goal or "
                             "initial_arm_position rows)")
        try:  # checked here and in the vector env's reset, before its reset request
            return {k: np.stack([option_array(k, o[k]) for o in given]) for k in keys}
        except ValueError as exc:
            raise ValueError(f"set_options: {exc}") from None

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
        """Per-env rows of batched attributes (`goal`, `initial_gripper_xpos`: (N, ...) arrays), else the
        one shared value for each index."""
        value = getattr(self.venv, attr_name)
        idx = self._get_indices(indices)
        if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == self.num_envs:
            return [value[i] for i in idx]
        return [value] * len(idx)

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


class FetchReachVecEnv(BridgeVecEnv):
    """`FetchReachVecEnv(num_envs, **FetchReachVectorEnv kwargs)`: `BridgeVecEnv` for FetchReach."""

    def __init__(self, num_envs: int = 1, **kwargs):
        super().__init__("robot_env/FetchReach-v0", num_envs, **kwargs)
