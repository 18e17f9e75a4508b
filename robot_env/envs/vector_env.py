"""The vector env over the bridge: N robots of one server stepped in one request, any task.

`gymnasium.make_vec(ENV_ID, num_envs=N)` lands here. The server hosts the N robots (a spawned one
is asked for them; a running one must say so in its `hello`), so per robot the cost is a fraction of
N single envs with a server each. Robot i is exactly the goal env (`goal_env.BridgeGoalEnv`) given
its goal and actions: the task's batch functions are the same numbers as its one-robot ones.

Autoreset follows Gymnasium: NEXT_STEP by default (the step after an episode ends resets that
robot; its reward is 0), SAME_STEP on request (the reset happens in the same step; the last
observation is in ``info["final_obs"]``, as `SyncVectorEnv` puts it), which is what SB3's `VecEnv`
semantics need (`robot_env.envs.sb3_vec_env`).

`cameras=[...]` and `render_mode="rgb_array"` as in the goal env: image keys are (N, h, w, c), the
frames of the last request of a step (every robot's); `render()` returns one frame per robot.
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ..tasks.base import Task
from .goal_env import RENDER_MODES, BridgeEnvMixin, camera_names, option_array, reset_options


class BridgeVectorEnv(BridgeEnvMixin, VectorEnv):
    """`num_envs` robots of `task` stepped in one request; `max_episode_steps` (the task's) and
    `autoreset_mode` (NEXT_STEP or SAME_STEP).

    `robot_state` is the batched state: (N, ...) arrays and `clipped` as {flag: [robot indices]};
    `latency` counts one sample per request (all N robots)."""

    def __init__(self, task: Task, num_envs: int = 1, config=None, overrides: dict | None = None,
                 max_episode_steps: int | None = None, autoreset_mode=AutoresetMode.NEXT_STEP, render_mode=None,
                 cameras=None):
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be None or one of {RENDER_MODES}, got {render_mode!r}")
        camera_names(cameras)  # a bad argument fails before a server starts
        autoreset_mode = AutoresetMode(autoreset_mode)
        if autoreset_mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode must be NEXT_STEP or SAME_STEP, got {autoreset_mode}")
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.num_envs = num_envs
        self.max_episode_steps = int(max_episode_steps or task.max_episode_steps)
        self.metadata = {"render_modes": RENDER_MODES, "render_fps": 25, "autoreset_mode": autoreset_mode}
        self.render_mode = None
        self._open(task, config, overrides, num_robots=num_envs)
        try:
            images = self._open_cameras(cameras, render_mode)
        except BaseException:
            self.close()
            raise
        # A batched step takes the server a few hundred µs: spin (yielding) that long for the reply
        # rather than sleep in poll and pay the wake-up on every step.
        self._client.spin = max(self._client.spin, 0.005)
        self.single_action_space = self.bound.action_space
        self.single_observation_space = self.bound.observation_space
        if images:
            self.single_observation_space = spaces.Dict({**self.single_observation_space.spaces, **images})
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.goal = np.zeros((num_envs, 3))
        self.initial_gripper_xpos = np.zeros((num_envs, 3))
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._state: dict | None = None

    # -- Gymnasium vector API ----------------------------------------------------------------
    def reset(self, *, seed=None, options=None):
        """`seed`: an int (or a list, seeded from its first entry); `options`: `goal` ((3,) or (N, 3)),
        `initial_arm_position` ((7,) or (N, 7)), `reset_mask` ((N,) bool: reset only those)."""
        if isinstance(seed, (list, tuple)):
            seed = seed[0] if seed else None
        # Everything is checked before anything is reset: a bad option changes nothing.
        options = reset_options(options)
        mask = options.pop("reset_mask", None)
        if mask is None:
            idx = np.arange(self.num_envs)
        else:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != bool:
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},)")
            if not mask.any():
                raise ValueError("options['reset_mask'] selects no env to reset")
            idx = np.flatnonzero(mask)
        goal = self._rows("goal", options.pop("goal", None), 3, idx)
        srv_opts = {}
        arm = self._rows("initial_arm_position", options.pop("initial_arm_position", None), 7, idx)
        if arm is not None:
            srv_opts["initial_arm_position"] = arm
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; known: goal, initial_arm_position, reset_mask")
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        srv_seed = int(self.np_random.integers(2**31)) if seed is not None else None
        st = self._reset_robots(idx, srv_seed, srv_opts, goal, frames=True)
        obs = self._observe(st)
        return obs, {"is_success": self.bound.is_success(obs["achieved_goal"], self.goal),
                     "_is_success": np.ones(self.num_envs, bool)}

    def step(self, actions):
        a = np.asarray(actions, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"actions must have shape {self.action_space.shape}, got {a.shape}")
        if not np.isfinite(a).all():
            bad = np.flatnonzero(~np.isfinite(a).all(axis=1)).tolist()
            raise ValueError(f"actions of env(s) {bad} have non-finite values")
        a = np.clip(a, -1.0, 1.0)
        resetting = self._autoreset.copy() if self.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP \
            else np.zeros(self.num_envs, bool)
        live = ~resetting
        # Frames come with the last request of the step only: they show every robot after it.
        frames = self._frame_names
        if resetting.any():
            st = self._reset_robots(np.flatnonzero(resetting), None, {}, None, frames=not live.any())
            if live.any():
                st = self._client.step(self._command(a, np.flatnonzero(live)), frames)
        else:
            st = self._client.step(self._command(a, None), frames)
        if frames:
            self._take_frames(st)
        self._state = st
        obs = self._observe(st)
        achieved = obs["achieved_goal"]
        reward = self.compute_reward(achieved, self.goal, None).astype(np.float64)
        success = self.bound.is_success(achieved, self.goal)
        self._steps[live] += 1
        terminated = np.zeros(self.num_envs, bool)
        truncated = live & (self._steps >= self.max_episode_steps)
        reward[resetting] = 0.0
        info = {"is_success": success, "_is_success": np.ones(self.num_envs, bool)}
        done = truncated | terminated
        if self.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP and done.any():
            idx = np.flatnonzero(done)
            final = np.full(self.num_envs, None, dtype=object)
            for i in idx:
                final[i] = {k: v[i].copy() for k, v in obs.items()}
            info["final_obs"], info["_final_obs"] = final, done.copy()
            info["final_info"] = {"is_success": success.copy(), "_is_success": done.copy()}
            info["_final_info"] = done.copy()
            st = self._reset_robots(idx, None, {}, None, frames=True)
            obs = self._observe(st)
            info["is_success"] = self.bound.is_success(obs["achieved_goal"], self.goal)
        self._autoreset = done
        return obs, reward, terminated, truncated, info

    def compute_reward(self, achieved_goal, desired_goal, info):
        """Vectorized over leading dims, the task's own (HER relabels with it)."""
        return self.bound.compute_reward(achieved_goal, desired_goal, info)

    def render(self):
        """`render_mode="rgb_array"`: one RGB frame (h, w, 3) per robot, of the last step or reset."""
        frames = self._render_frames()
        return None if frames is None else tuple(frames)

    # -- internals ---------------------------------------------------------------------------
    def _observe(self, st: dict) -> dict:
        obs = self.bound.observe(st, self.goal)
        for c in self.cameras:
            obs[c] = self._frames[c]
        return obs

    def _reset_robots(self, idx: np.ndarray, srv_seed, srv_opts: dict, goal, frames: bool = False) -> dict:
        opts = dict(self.bound.reset_options(self.np_random, idx.size))
        opts.update(srv_opts)  # what the caller asked for wins over the task's start
        if idx.size != self.num_envs:
            opts["robots"] = idx
        st = self._client.reset(seed=srv_seed, options=opts, frames=self._frame_names if frames else None)
        self._take_frames(st)
        self._state = st
        self.initial_gripper_xpos[idx] = np.array(st["ee"][idx, :3])
        if goal is None:
            goal = self.bound.sample_goals(self.np_random, st, idx)
        self.goal[idx] = goal
        self._steps[idx] = 0
        self._autoreset[idx] = False
        return st

    def _rows(self, name: str, value, width: int, idx: np.ndarray):
        """A reset option given once ((width,)) or per env ((N, width)) -> one finite row per reset env."""
        if value is None:
            return None
        arr = option_array(name, value)
        if arr.shape == (width,):
            arr = np.broadcast_to(arr, (idx.size, width))
        elif arr.shape == (self.num_envs, width):
            arr = arr[idx]
        else:
            raise ValueError(f"options[{name!r}] must have shape ({width},) or ({self.num_envs}, {width}), "
                             f"got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"options[{name!r}] has non-finite values")
        return arr

    def _command(self, a: np.ndarray, rows) -> dict:
        cmd = self.bound.command(a if rows is None else a[rows])
        if rows is not None:
            cmd["robots"] = rows
        return cmd
