"""The goal-conditioned env over the bridge: any task (`robot_env.tasks`) on whichever robot a config names.

`BridgeGoalEnv(task, config=...)`: the server (spawned when the config names no endpoint, stopped
on `close()`) is checked against what the task needs before anything moves; the spaces come from
the task and the server's spec. An env step is one `step` request; the task maps the action to
command channels and the state to an observation, reward and success. One robot: the task's plain-
float paths, which give the same numbers as its batch functions (what the vector env runs).

Cameras: `cameras=["head", ...]` adds an image per camera to the Dict observation (`Box(0, 255,
(h, w, 3), uint8)`, depth `Box(0, far, (h, w, 1), float32)` in metres), from the frames every step
and reset request asks the server for (none without it: a state-only env pays nothing).
`render_mode="rgb_array"` makes `render()` return the external camera's RGB frame of the last step
(or the first RGB camera's), which is what Gymnasium's `RecordVideo` records. Images are read-only
views of the frames as received, not copies.
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

from ..bridge.session import Session
from ..errors import ConfigError
from ..tasks.base import Task

RENDER_MODES = ["rgb_array"]
RENDER_CAMERA = "external"  # what render() shows when the server has it


def camera_space(cam: dict) -> gym.spaces.Box:
    """The observation space of one camera's frames (a hello's spec entry): RGB uint8, or depth (m)."""
    shape = (cam["height"], cam["width"], cam["channels"])
    if cam["dtype"] == "uint8":
        return gym.spaces.Box(0, 255, shape, np.uint8)
    top = cam.get("max")  # depth: the far plane the server announces (finite bounds keep check_env quiet)
    return gym.spaces.Box(0.0, np.inf if top is None else float(top), shape, np.dtype(cam["dtype"]).type)


def camera_names(cameras) -> tuple:
    """The `cameras` argument as a tuple of distinct names (None: none); anything else is a ValueError."""
    if cameras is None:
        return ()
    if isinstance(cameras, str) or not all(isinstance(c, str) for c in cameras):
        raise ValueError(f"cameras must be a list of camera names, got {cameras!r}")
    names = tuple(cameras)
    if len(set(names)) != len(names):
        raise ValueError(f"cameras names a camera more than once: {list(names)}")
    return names


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


def vector_option(name: str, value, n: int) -> np.ndarray:
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
        """The last full state the server returned (joints, mode, faults, clipped flags)."""
        return self._state

    def _render_frames(self):
        """The render camera's frames (one per robot) of the last step or reset (a `state` request
        for them when there were none yet); None without a render mode."""
        if self.render_camera is None:
            return None
        frames = self._frames
        if frames is None or self.render_camera not in frames:
            st = self._client.state(frames=[self.render_camera])
            frames = self._frames = st.pop("frames")
        return frames[self.render_camera]

    def _open(self, task: Task, config, overrides, num_robots: int | None = None) -> None:
        """The session (asking a spawned server for the task's robots and scene) and the task bound to
        its server; a server that lacks what the task needs is refused, and closed, before anything moves."""
        self.task = task
        self._closed = True
        self._session = Session(config, overrides, num_robots=num_robots, scene=task.needs.scene)
        self._closed = False
        try:
            self.bound = task.bind(self._session.info, f"the server at {self._session.client.endpoint}")
        except BaseException:
            self.close()
            raise
        self._client = self._session.client
        self.dt = float(self._session.info["control_period"])

    def _open_cameras(self, cameras, render_mode) -> dict:
        """Check the cameras (and the render camera) against the server's spec before anything moves;
        set what every request asks for. Returns name -> observation space of the image keys.
        The caller closes the session on an error."""
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be None or one of {RENDER_MODES}, got {render_mode!r}")
        names = camera_names(cameras)
        info = self._session.info
        offered = (info.get("spec") or {}).get("cameras") or {}
        where = f"the server at {self._client.endpoint} ({info.get('backend')} backend)"
        missing = [c for c in names if c not in offered]
        if missing:
            raise ConfigError(f"camera(s) {', '.join(missing)} asked for, which {where} does not offer (it has "
                              f"{', '.join(offered) or 'no cameras'}). Nothing was moved")
        clash = [c for c in names if c in self.bound.observation_space.spaces]
        if clash:
            raise ConfigError(f"camera(s) {', '.join(clash)} would replace the task's observation key(s)")
        self.render_mode = render_mode
        self.render_camera = None
        rgb = [c for c in offered if offered[c]["channels"] == 3 and offered[c]["dtype"] == "uint8"]
        # What this instance can render: nothing on a server without an RGB camera (check_env reads it).
        self.metadata = dict(self.metadata, render_modes=list(RENDER_MODES) if rgb else [], render_fps=1.0 / self.dt)
        if render_mode == "rgb_array":
            if not rgb:
                raise ConfigError(f"render_mode='rgb_array' needs an RGB camera, and {where} has "
                                  f"{', '.join(offered) or 'no cameras'}. Nothing was moved")
            own = [c for c in names if c in rgb]
            self.render_camera = RENDER_CAMERA if RENDER_CAMERA in rgb else (own or rgb)[0]
        if (names or self.render_camera) and "frames" not in info:
            raise ConfigError(f"{where} predates camera frames (its hello announces no 'frames'). Nothing was moved")
        self.cameras = names
        # Every step and reset asks for these: the image keys, and the render camera's frame.
        self._frame_names = names + ((self.render_camera,) if self.render_camera and
                                     self.render_camera not in names else ())
        self._frames = None  # the last reply's frames: name -> (n, h, w, c)
        return {c: camera_space(offered[c]) for c in names}

    def _take_frames(self, st: dict) -> None:
        """Keep the state's frames (the state itself stays the server's state schema)."""
        frames = st.pop("frames", None)
        if frames is not None:
            self._frames = frames


class BridgeGoalEnv(BridgeEnvMixin, gym.Env):
    """A goal env (`observation`, `achieved_goal`, `desired_goal`; vectorized `compute_reward` for
    HER; `info["is_success"]`) for `task` on the server a config names. Reset options: `goal` (3)
    and `initial_arm_position` (7)."""

    metadata = {"render_modes": RENDER_MODES, "render_fps": 25}

    def __init__(self, task: Task, config=None, overrides: dict | None = None, render_mode=None, cameras=None):
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be None or one of {RENDER_MODES}, got {render_mode!r}")
        camera_names(cameras)  # a bad argument fails before a server starts
        self._open(task, config, overrides)
        try:
            images = self._open_cameras(cameras, render_mode)
        except BaseException:
            self.close()
            raise
        self.backend_kind = self._session.info["backend"]
        self.action_space = self.bound.action_space
        self.observation_space = self.bound.observation_space
        if images:
            self.observation_space = gym.spaces.Dict({**self.observation_space.spaces, **images})
        # A subclass that changes reward or success is asked; the task's own are computed in floats.
        cls = type(self)
        self._plain_reward = (cls.compute_reward is BridgeGoalEnv.compute_reward
                              and cls._success is BridgeGoalEnv._success)
        self.goal = np.zeros(3)
        self.initial_gripper_xpos = np.zeros(3)
        self._state: dict | None = None

    # -- Gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed=None, options=None):
        # Every option is checked before anything changes: on hardware the reset request moves the arm.
        options = reset_options(options)
        goal = options.pop("goal", None)
        if goal is not None:
            goal = vector_option("goal", goal, 3)
        srv_opts = {}
        if "initial_arm_position" in options:
            srv_opts["initial_arm_position"] = vector_option("initial_arm_position",
                                                             options.pop("initial_arm_position"), 7)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; known: goal, initial_arm_position")
        super().reset(seed=seed)
        # The server's RNG (noise, randomization) is seeded from ours so one seed fixes the episode.
        srv_seed = int(self.np_random.integers(2**31)) if seed is not None else None
        task_opts = self.bound.reset_options(self.np_random, 1)
        for k, v in task_opts.items():  # what the caller asked for wins over the task's start
            srv_opts.setdefault(k, v[0])
        st = self._client.reset(seed=srv_seed, options=srv_opts, frames=self._frame_names)
        self._take_frames(st)
        self._state = st
        self.initial_gripper_xpos = np.array(st["ee"][:3])
        if goal is None:
            goal = self.bound.sample_goals(self.np_random, st, np.zeros(1, dtype=np.int64))[0]
        self.goal = goal.copy()
        obs = self.bound.observe_one(st, self.goal)
        for c in self.cameras:
            obs[c] = self._frames[c][0]
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
        st = self._client.step(self.bound.command_one(a), self._frame_names)
        if self._frame_names:
            self._take_frames(st)
        self._state = st
        obs = self.bound.observe_one(st, self.goal)
        for c in self.cameras:
            obs[c] = self._frames[c][0]
        achieved = obs["achieved_goal"]
        if self._plain_reward:
            reward, success = self.bound.reward_one(achieved, self.goal)
        else:  # a subclass changed the task's reward or success: ask it
            success = self._success(achieved)
            reward = float(self.compute_reward(achieved, self.goal, None))
        return obs, reward, False, False, {"is_success": success}

    def render(self):
        """`render_mode="rgb_array"`: the render camera's RGB frame (h, w, 3) of the last step or reset
        (a `state` request for one when there was none yet); None without a render mode."""
        frames = self._render_frames()
        return None if frames is None else frames[0]

    def compute_reward(self, achieved_goal, desired_goal, info):
        """Vectorized over leading dims, as HER relabelling calls it."""
        return self.bound.compute_reward(achieved_goal, desired_goal, info)

    def compute_terminated(self, achieved_goal, desired_goal, info):
        return False

    def compute_truncated(self, achieved_goal, desired_goal, info):
        return False

    def _success(self, achieved) -> float:
        return float(self.bound.is_success(achieved, self.goal))
