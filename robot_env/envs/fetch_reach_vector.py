"""FetchReach for N robots behind one server: `gymnasium.make_vec("robot_env/FetchReach-v0", num_envs=N)`.

The vector env (`vector_env.BridgeVectorEnv`) with FetchReachEnv's task and arguments: robot i is
exactly a `FetchReachEnv` given its goal and actions.
"""
from __future__ import annotations

from gymnasium.vector import AutoresetMode

from ..tasks.fetch import REACH
from .vector_env import BridgeVectorEnv


class FetchReachVectorEnv(BridgeVectorEnv):
    """`num_envs` FetchReach robots stepped in one request; arguments as `FetchReachEnv` plus
    `num_envs`, `max_episode_steps` (50) and `autoreset_mode` (NEXT_STEP or SAME_STEP)."""

    def __init__(self, num_envs: int = 1, config=None, reward_type: str = "sparse", control: str = "ee_delta",
                 block_gripper: bool = True, overrides: dict | None = None, max_episode_steps: int = 50,
                 autoreset_mode=AutoresetMode.NEXT_STEP, render_mode=None):
        task = REACH.with_(reward_type=reward_type, control=control, block_gripper=block_gripper)
        super().__init__(task, num_envs, config, overrides, max_episode_steps, autoreset_mode, render_mode)

    @property
    def reward_type(self) -> str:
        return self.task.reward_type

    @property
    def control(self) -> str:
        return self.task.control

    @property
    def block_gripper(self) -> bool:
        return self.task.block_gripper
