"""Wrappers that are not part of the task itself."""
from __future__ import annotations

import gymnasium as gym


class LatencyInfo(gym.Wrapper):
    """Adds the bridge's running latency percentiles to `info["latency"]` (ms).

    Kept out of the plain env because wall-clock values differ run to run, and `check_env`
    compares `info` across seeded runs.
    """

    def __init__(self, env: gym.Env, every: int = 1):
        super().__init__(env)
        self.every = every
        self._n = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._n += 1
        if self._n % self.every == 0 or terminated or truncated:
            info = dict(info, latency=self.env.unwrapped.latency.summary())
        return obs, reward, terminated, truncated, info
