"""The kinematic simulator backend: N robots whose joints follow their targets under the safety layer.

No contact or dynamics, so it is fast and exactly repeatable under a seed: the embedded default
for training, and what vector envs run (`num_robots`: one request steps them all). Batch-first
like every backend; one robot takes a plain-float kernel (`kinematic_one`), N robots an (N, ...)
array kernel (`kinematic_many`), which agree robot for robot. Sim-to-real knobs (all off by
default): action latency in control steps, Gaussian noise on measured joints, per-joint speed
scaling drawn at reset.
"""
from __future__ import annotations

from robot_env.backends.spec import BackendSpec, SafetyParams, ready_gripper
from robot_env.control.commands import CHANNELS, RESET_OPTIONS
from robot_env.control.safety import SafetyConfig
from robot_env.model.description import FETCH

from .kernel_backend import KernelBackend
from .kinematic_many import MAX_ROBOTS, ManyRobots
from .kinematic_one import OneRobot

_num = (int, float)


class KinematicSim(KernelBackend):
    """`KinematicSim(safety, control_period, num_robots=1, **sim-to-real knobs)`."""

    kind = "kinematic"
    max_robots = MAX_ROBOTS
    channels = frozenset(CHANNELS)
    # The config's [server.kinematic] table (`robot_env.config` validates it from here).
    Settings = {
        "num_robots": (int, 1, lambda v: 1 <= v <= MAX_ROBOTS,
                       f"between 1 and {MAX_ROBOTS} (a reply holds ~500 bytes per robot)"),
        "action_latency_steps": (int, 0, lambda v: 0 <= v <= 50, "between 0 and 50"),
        "observation_noise": (_num, 0.0, lambda v: 0 <= v <= 0.1, "between 0 and 0.1 (rad)"),
        "speed_randomization": (_num, 0.0, lambda v: 0 <= v < 1, "in [0, 1)"),
    }

    def __init__(self, safety: SafetyConfig | None = None, control_period: float = 0.04, num_robots: int = 1,
                 action_latency_steps: int = 0, observation_noise: float = 0.0,
                 speed_randomization: float = 0.0, description=FETCH):
        if not isinstance(num_robots, int) or not 1 <= num_robots <= MAX_ROBOTS:
            raise ValueError(f"num_robots must be in 1..{MAX_ROBOTS}, got {num_robots!r}")
        safety = safety or SafetyConfig()
        knobs = dict(action_latency_steps=action_latency_steps, observation_noise=observation_noise,
                     speed_randomization=speed_randomization, description=description)
        self.num_robots = num_robots
        self.description = description
        self.kernel = OneRobot(safety, control_period, **knobs) if num_robots == 1 else \
            ManyRobots(safety, control_period, num_robots=num_robots, **knobs)
        self.spec = BackendSpec(kind=self.kind, num_robots=num_robots, channels=dict(CHANNELS),
                                reset_options=dict(RESET_OPTIONS), safety=SafetyParams.of(safety),
                                description=description, ready_ee=ready_gripper())
        self._bind_kernel()
