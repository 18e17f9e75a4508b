"""Wrappers that are not part of the task itself."""
from __future__ import annotations

import gymnasium as gym
import numpy as np


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


class RecordEpisodes(gym.Wrapper):
    """Records the env's robot to an MCAP file: every state and applied command off the server's
    stream (`robot_env.recording.Recorder`), plus one ``/env/episode`` message per reset (episode
    number, seed, goal) and per episode end (length, return, success), and the frames of the cameras
    the env observes (`cameras=`) as images on ``/camera/<name>`` (Foxglove's RawImage).

    ``env = RecordEpisodes(gym.make("robot_env/FetchReach-v0"), record="run.mcap")``; the file is
    closed by ``env.close()`` (before the env's server stops). `stats` then holds the counts and gaps.
    Recording costs the stepping process a background thread's work per step (a few tens of µs).
    """

    def __init__(self, env: gym.Env, record, *, flush_interval: float = 0.2):
        super().__init__(env)
        from ..recording import Recorder

        self.path = str(record)
        self.recorder = Recorder(env.unwrapped, self.path, flush_interval=flush_interval).start()
        self.stats = None
        self.episode = -1
        self._cameras = tuple(getattr(env.unwrapped, "cameras", ()) or ())
        self._return = 0.0
        self._length = 0

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.episode += 1
        self._return, self._length = 0.0, 0
        msg = {"event": "reset", "episode": self.episode, "seed": seed}
        if isinstance(obs, dict) and "desired_goal" in obs:
            msg["goal"] = np.asarray(obs["desired_goal"]).tolist()
            msg["start"] = np.asarray(obs["achieved_goal"]).tolist()
        self.recorder.log("/env/episode", msg)
        self._frames(obs)
        return obs, info

    def _frames(self, obs) -> None:
        """The camera images of an observation (an env made with `cameras=`), one message each."""
        for name in self._cameras:
            img = obs.get(name) if isinstance(obs, dict) else None
            if img is not None:
                self.recorder.log_frame(name, np.asarray(img))

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames(obs)
        self._return += float(reward)
        self._length += 1
        if terminated or truncated:
            self.recorder.log("/env/episode", {
                "event": "end", "episode": self.episode, "length": self._length, "return": self._return,
                "terminated": bool(terminated), "truncated": bool(truncated),
                "is_success": bool(info.get("is_success", False))})
        return obs, reward, terminated, truncated, info

    def close(self):
        if self.stats is None and self.recorder is not None:
            self.stats = self.recorder.stop()
        super().close()
