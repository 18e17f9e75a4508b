"""FetchReach for N robots behind one batched simulator server: `gymnasium.make_vec`'s fast path.

`gymnasium.make_vec("robot_env/FetchReach-v0", num_envs=N)` lands here. One request steps all N
robots (`simulators.kinematic_batch`), so per robot the cost is a fraction of N single envs, each
with its own server. The task is `FetchReachEnv`'s, element for element: same observation, goals,
rewards, success, 50-step truncation; `compute_reward` is the same vectorized function.

Autoreset follows Gymnasium: NEXT_STEP by default (the step after an episode ends resets that
robot; its reward is 0), SAME_STEP on request (the reset happens in the same step; the last
observation is in ``info["final_obs"]``, as `SyncVectorEnv` puts it), which is what SB3's `VecEnv`
semantics need (`robot_env.envs.sb3.FetchReachVecEnv`).
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .. import config as config_mod
from ..model.description import ARM, GRIPPER
from ..errors import ConfigError
from ..bridge.session import Session
from .fetch_reach import ACTION_SCALE, DISTANCE_THRESHOLD, OBS_BOUND, TARGET_RANGE, BridgeEnvMixin, goal_distance, option_array, reset_options


def batch_config(config, num_envs: int, overrides: dict | None = None) -> tuple:
    """(config, overrides) for a batched server of `num_envs` robots from a config naming a kinematic
    simulator: the `kinematic` backend becomes `kinematic_batch` with the same sim-to-real knobs."""
    cfg = config_mod.load(config, overrides)
    backend = cfg["server"]["backend"]
    if cfg["client"]["endpoint"]:
        return config, overrides  # a running server: its hello must say it hosts num_envs robots
    if backend not in ("kinematic", "kinematic_batch"):
        raise ConfigError(f"{cfg['source']}: [server] backend {backend!r}: a vector env needs a simulator of "
                          "N robots ('kinematic' or 'kinematic_batch'); for a robot use gymnasium.make, or "
                          "make_vec(..., vectorization_mode='sync') for several robots with one server each")
    out = {k: dict(v) for k, v in (overrides or {}).items()}
    out.setdefault("server", {})["backend"] = "kinematic_batch"
    knobs = dict(cfg["server.kinematic"]) if backend == "kinematic" else dict(cfg["server.kinematic_batch"])
    knobs["num_robots"] = int(num_envs)
    out["server.kinematic_batch"] = {**out.get("server.kinematic_batch", {}), **knobs}
    return config, out


class FetchReachVectorEnv(BridgeEnvMixin, VectorEnv):
    """`num_envs` FetchReach robots stepped in one request; arguments as `FetchReachEnv` plus
    `num_envs`, `max_episode_steps` (50) and `autoreset_mode` (NEXT_STEP or SAME_STEP).

    `robot_state` is the batched state: (N, ...) arrays and `clipped` as {flag: [robot indices]};
    `latency` counts one sample per request (all N robots)."""

    def __init__(self, num_envs: int = 1, config=None, reward_type: str = "sparse", control: str = "ee_delta",
                 block_gripper: bool = True, overrides: dict | None = None, max_episode_steps: int = 50,
                 autoreset_mode=AutoresetMode.NEXT_STEP, render_mode=None):
        if reward_type not in ("sparse", "dense"):
            raise ValueError(f"reward_type must be 'sparse' or 'dense', got {reward_type!r}")
        if control not in ("ee_delta", "joint_velocity"):
            raise ValueError(f"control must be 'ee_delta' or 'joint_velocity', got {control!r}")
        if render_mode is not None:
            raise ValueError("FetchReachVectorEnv has no render modes")
        autoreset_mode = AutoresetMode(autoreset_mode)
        if autoreset_mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode must be NEXT_STEP or SAME_STEP, got {autoreset_mode}")
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.num_envs = num_envs
        self.reward_type = reward_type
        self.control = control
        self.block_gripper = block_gripper
        self.max_episode_steps = int(max_episode_steps)
        self.metadata = {"render_modes": [], "autoreset_mode": autoreset_mode}
        self.render_mode = None
        self._closed = True
        self._session = Session(*batch_config(config, num_envs, overrides))
        self._closed = False
        self._client = self._session.client
        # A batched step takes the server a few hundred µs: spin (yielding) that long for the reply
        # rather than sleep in poll and pay the wake-up on every step.
        self._client.spin = max(self._client.spin, 0.005)
        info = self._session.info
        if info.get("num_robots", 1) != num_envs or info["backend"] != "kinematic_batch":
            self.close()
            raise ConfigError(f"the server at {self._client.endpoint} hosts {info.get('num_robots', 1)} "
                              f"{info['backend']} robot(s); this vector env needs a kinematic_batch server "
                              f"of {num_envs}")
        self.dt = float(info["control_period"])
        lim = info["description"]["joints"]
        self._arm_vmax = np.array([j["velocity"] for j in lim[ARM]])
        self._width_max = float(lim[GRIPPER]["upper"])
        n_act = 4 if control == "ee_delta" else 8
        self.single_action_space = spaces.Box(-1.0, 1.0, (n_act,), dtype=np.float32)
        goal_box = spaces.Box(-OBS_BOUND, OBS_BOUND, (3,), dtype=np.float64)
        self.single_observation_space = spaces.Dict({
            "observation": spaces.Box(-OBS_BOUND, OBS_BOUND, (10,), dtype=np.float64),
            "achieved_goal": goal_box, "desired_goal": goal_box})
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
        st = self._reset_robots(idx, srv_seed, srv_opts, goal)
        obs = self._obs(st)
        return obs, {"is_success": self._success(obs["achieved_goal"], self.goal),
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
        if resetting.any():
            st = self._reset_robots(np.flatnonzero(resetting), None, {}, None)
            if live.any():
                st = self._client.step(self._command(a, np.flatnonzero(live)))
        else:
            st = self._client.step(self._command(a, None))
        self._state = st
        obs = self._obs(st)
        achieved = obs["achieved_goal"]
        reward = self.compute_reward(achieved, self.goal, None).astype(np.float64)
        success = self._success(achieved, self.goal)
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
            st = self._reset_robots(idx, None, {}, None)
            obs = self._obs(st)
            info["is_success"] = self._success(obs["achieved_goal"], self.goal)
        self._autoreset = done
        return obs, reward, terminated, truncated, info

    def compute_reward(self, achieved_goal, desired_goal, info):
        """Vectorized over leading dims, exactly `FetchReachEnv.compute_reward` (HER relabels with it)."""
        d = goal_distance(np.asarray(achieved_goal), np.asarray(desired_goal))
        if self.reward_type == "sparse":
            return -(d > DISTANCE_THRESHOLD).astype(np.float32)
        return -d

    # -- internals ---------------------------------------------------------------------------
    def _reset_robots(self, idx: np.ndarray, srv_seed, srv_opts: dict, goal) -> dict:
        opts = dict(srv_opts)
        if idx.size != self.num_envs:
            opts["robots"] = idx
        st = self._client.reset(seed=srv_seed, options=opts)
        self._state = st
        start = np.array(st["ee"][idx, :3])
        self.initial_gripper_xpos[idx] = start
        if goal is None:
            goal = start + self.np_random.uniform(-TARGET_RANGE, TARGET_RANGE, size=(idx.size, 3))
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
        if rows is not None:
            a = a[rows]
        if self.control == "ee_delta":
            cmd = {"ee_delta": a[:, :3] * ACTION_SCALE}
        else:
            cmd = {"arm_velocity": a[:, :7] * self._arm_vmax}
        if not self.block_gripper:
            cmd["gripper"] = (a[:, -1] + 1.0) * 0.5 * self._width_max
        if rows is not None:
            cmd["robots"] = rows
        return cmd

    def _obs(self, st: dict) -> dict:
        ee = st["ee"]
        half_w = 0.5 * st["q"][:, GRIPPER]
        half_v = 0.5 * self.dt * st["dq"][:, GRIPPER]
        obs = np.empty((self.num_envs, 10))
        obs[:, 0:3] = ee[:, :3]
        obs[:, 3] = half_w
        obs[:, 4] = half_w
        obs[:, 5:8] = st["ee_vel"][:, :3] * self.dt
        obs[:, 8] = half_v
        obs[:, 9] = half_v
        return {"observation": obs, "achieved_goal": obs[:, 0:3].copy(), "desired_goal": self.goal.copy()}

    def _success(self, achieved, goal) -> np.ndarray:
        return (goal_distance(achieved, goal) < DISTANCE_THRESHOLD).astype(np.float64)
