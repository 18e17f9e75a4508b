"""FetchReach over the bridge: Gymnasium-Robotics' FetchReach task (`tasks.REACH`) on whichever backend a
config names, as `gymnasium.make("robot_env/FetchReach-v0")` makes it.

The task is pinned to Gymnasium-Robotics' FetchReach-v4 (observation layout, goal range, success
threshold, rewards, 50 steps), so results compare; only the robot behind it changes. With no
config endpoint the env starts an embedded simulator server and stops it on `close()`.
"""
from __future__ import annotations

from ..tasks.fetch import OBS_BOUND, REACH, goal_distance  # noqa: F401  (kept importable from here)
from .goal_env import BridgeEnvMixin, BridgeGoalEnv, option_array, reset_options  # noqa: F401

DISTANCE_THRESHOLD = REACH.distance_threshold
TARGET_RANGE = REACH.target_range
ACTION_SCALE = REACH.action_scale  # m per step for a full-scale action, as Gymnasium-Robotics' mocap delta


class FetchReachArgs:
    """FetchReachEnv's own arguments, read back from its task (code written for the old class reads them)."""

    @property
    def reward_type(self) -> str:
        return self.task.reward_type

    @property
    def control(self) -> str:
        return self.task.control

    @property
    def block_gripper(self) -> bool:
        return self.task.block_gripper


def reach_task(reward_type: str, control: str, block_gripper: bool):
    return REACH.with_(reward_type=reward_type, control=control, block_gripper=block_gripper)


class FetchReachEnv(FetchReachArgs, BridgeGoalEnv):
    """Goal-conditioned reaching; `control` is "ee_delta" (default, Box(4)) or "joint_velocity" (Box(8)).

    Observation `observation` (10): gripper position (3), finger positions (2), gripper linear
    velocity × dt (3), finger velocities × dt (2), as FetchReach. Goals are gripper positions.
    """

    def __init__(self, config=None, reward_type: str = "sparse", control: str = "ee_delta",
                 block_gripper: bool = True, overrides: dict | None = None, render_mode=None, cameras=None):
        super().__init__(reach_task(reward_type, control, block_gripper), config, overrides, render_mode, cameras)
