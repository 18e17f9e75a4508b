"""FetchReach over the bridge: Gymnasium-Robotics' FetchReach task on whichever backend a config names.

The task is pinned to Gymnasium-Robotics' FetchReach-v4 (observation layout, goal range, success
threshold, rewards, 50 steps), so results compare; only the robot behind it changes. With no
config endpoint the env starts an embedded simulator server and stops it on `close()`.
"""
from __future__ import annotations

import math

import numpy as np
import gymnasium as gym
from gymnasium import spaces

from ..model.description import ARM, GRIPPER
from ..bridge.session import Session

DISTANCE_THRESHOLD = 0.05
TARGET_RANGE = 0.15
ACTION_SCALE = 0.05  # m per step for a full-scale action, as Gymnasium-Robotics' mocap delta
OBS_BOUND = 5.0


def goal_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1)


def option_array(name: str, value) -> np.ndarray:
    """A numeric reset option as a float array; anything that is not numbers is a ValueError naming it."""
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"options[{name!r}] must be numbers, got {value!r}") from None


def reset_options(options) -> dict:
    """A copy of the reset options (None: none); a non-dict is a ValueError."""
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"reset options must be a dict, got {type(options).__name__}")
    return dict(options or {})


def _vector_option(name: str, value, n: int) -> np.ndarray:
    arr = option_array(name, value)
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise ValueError(f"options[{name!r}] must be {n} finite numbers, got {value!r}")
    return arr


class BridgeEnvMixin:
    """What every env over the bridge has beside the Gymnasium API: its client's latency, the last
    full server state, and a `close()` (safe twice) that stops a server the env spawned."""

    def close(self, **kwargs):
        if not self._closed:
            self._closed = True
            self.closed = True  # what Gymnasium's VectorEnv reports
            self._session.close()

    @property
    def latency(self):
        """Running round-trip / bridge / action-to-observation latency percentiles (one sample per request)."""
        return self._client.latency

    @property
    def robot_state(self) -> dict | None:
        """The last full state the server returned (joints, mode, faults, clipped flags, stamps)."""
        return self._state


class FetchReachEnv(BridgeEnvMixin, gym.Env):
    """Goal-conditioned reaching; `control` is "ee_delta" (default, Box(4)) or "joint_velocity" (Box(8)).

    Observation `observation` (10): gripper position (3), finger positions (2), gripper linear
    velocity × dt (3), finger velocities × dt (2), as FetchReach. Goals are gripper positions.
    """

    metadata = {"render_modes": []}

    def __init__(self, config=None, reward_type: str = "sparse", control: str = "ee_delta",
                 block_gripper: bool = True, overrides: dict | None = None, render_mode=None):
        if reward_type not in ("sparse", "dense"):
            raise ValueError(f"reward_type must be 'sparse' or 'dense', got {reward_type!r}")
        if control not in ("ee_delta", "joint_velocity"):
            raise ValueError(f"control must be 'ee_delta' or 'joint_velocity', got {control!r}")
        if render_mode is not None:
            raise ValueError("FetchReachEnv has no render modes; use the state stream or `robot-env plot`")
        self.reward_type = reward_type
        self.control = control
        self.block_gripper = block_gripper
        self._session = Session(config, overrides)
        self._client = self._session.client
        info = self._session.info
        self.dt = float(info["control_period"])
        self.backend_kind = info["backend"]
        n_act = 4 if control == "ee_delta" else 8
        self.action_space = spaces.Box(-1.0, 1.0, (n_act,), dtype=np.float32)
        # Finite bounds (check_env prefers them): the gripper never leaves a few metres of the base,
        # and velocities are multiplied by dt.
        obs_box = spaces.Box(-OBS_BOUND, OBS_BOUND, (10,), dtype=np.float64)
        goal_box = spaces.Box(-OBS_BOUND, OBS_BOUND, (3,), dtype=np.float64)
        self.observation_space = spaces.Dict(
            {"observation": obs_box, "achieved_goal": goal_box, "desired_goal": goal_box})
        lim = info["description"]["joints"]
        self._arm_vmax = np.array([j["velocity"] for j in lim[ARM]])
        self._arm_vmax_list = self._arm_vmax.tolist()
        cls = type(self)
        self._plain_reward = (cls.compute_reward is FetchReachEnv.compute_reward
                              and cls._success is FetchReachEnv._success)
        self._width_max = float(lim[GRIPPER]["upper"])
        self.goal = np.zeros(3)
        self.initial_gripper_xpos = np.zeros(3)
        self._state: dict | None = None
        self._closed = False

    # -- Gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed=None, options=None):
        # Every option is checked before anything changes: on hardware the reset request moves the arm.
        options = reset_options(options)
        goal = options.pop("goal", None)
        if goal is not None:
            goal = _vector_option("goal", goal, 3)
        srv_opts = {}
        if "initial_arm_position" in options:
            srv_opts["initial_arm_position"] = _vector_option("initial_arm_position",
                                                              options.pop("initial_arm_position"), 7)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; known: goal, initial_arm_position")
        super().reset(seed=seed)
        # The server's RNG (noise, randomization) is seeded from ours so one seed fixes the episode.
        srv_seed = int(self.np_random.integers(2**31)) if seed is not None else None
        st = self._client.reset(seed=srv_seed, options=srv_opts)
        self._state = st
        self.initial_gripper_xpos = np.array(st["ee"][:3])
        if goal is None:
            goal = self.initial_gripper_xpos + self.np_random.uniform(-TARGET_RANGE, TARGET_RANGE, size=3)
        self.goal = goal.copy()
        obs = self._obs(st)
        return obs, {"is_success": self._success(obs["achieved_goal"])}

    def step(self, action):
        # Plain floats from here on: a handful of numbers, where numpy's per-call cost would
        # dominate. The same clipping and scaling as np.clip / array arithmetic, bit for bit.
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {action.shape}")
        a = action.tolist()
        if not all(map(math.isfinite, a)):
            raise ValueError(f"action has non-finite values: {action}")
        a = [-1.0 if x < -1.0 else 1.0 if x > 1.0 else x for x in a]
        if self.control == "ee_delta":
            cmd = {"ee_delta": [a[0] * ACTION_SCALE, a[1] * ACTION_SCALE, a[2] * ACTION_SCALE]}
        else:
            cmd = {"arm_velocity": [x * v for x, v in zip(a, self._arm_vmax_list)]}
        if not self.block_gripper:
            cmd["gripper"] = (a[-1] + 1.0) * 0.5 * self._width_max
        st = self._client.step(cmd)
        self._state = st
        obs = self._obs(st)
        achieved = obs["achieved_goal"]
        if self._plain_reward:
            # goal_distance for one goal, as floats (np.linalg.norm sums the squares in this order)
            gx, gy, gz = self.goal.tolist()
            ax, ay, az = achieved.tolist()
            dx, dy, dz = ax - gx, ay - gy, az - gz
            d = math.sqrt(dx * dx + dy * dy + dz * dz)
            success = 1.0 if d < DISTANCE_THRESHOLD else 0.0
            if self.reward_type == "sparse":
                reward = -1.0 if d > DISTANCE_THRESHOLD else -0.0  # float(-(d > t).astype(float32))
            else:
                reward = -d
        else:  # a subclass changed the task's reward or success: ask it
            success = self._success(achieved)
            reward = float(self.compute_reward(achieved, self.goal, None))
        return obs, reward, False, False, {"is_success": success}

    def compute_reward(self, achieved_goal, desired_goal, info):
        """Vectorized over leading dims, as HER relabelling calls it."""
        d = goal_distance(np.asarray(achieved_goal), np.asarray(desired_goal))
        if self.reward_type == "sparse":
            return -(d > DISTANCE_THRESHOLD).astype(np.float32)
        return -d

    def compute_terminated(self, achieved_goal, desired_goal, info):
        return False

    def compute_truncated(self, achieved_goal, desired_goal, info):
        return False

    # -- internals ---------------------------------------------------------------------------
    def _obs(self, st: dict) -> dict:
        ex, ey, ez = st["ee"].tolist()[:3]
        half_w, half_v = 0.5 * st["q"].item(GRIPPER), 0.5 * st["dq"].item(GRIPPER)
        dt = self.dt
        vx, vy, vz = st["ee_vel"].tolist()[:3]
        obs = np.array([ex, ey, ez, half_w, half_w, vx * dt, vy * dt, vz * dt, half_v * dt, half_v * dt])
        return {"observation": obs, "achieved_goal": np.array([ex, ey, ez]), "desired_goal": self.goal.copy()}

    def _success(self, achieved) -> float:
        return float(goal_distance(achieved, self.goal) < DISTANCE_THRESHOLD)
