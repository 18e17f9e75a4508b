"""FetchReach for N robots behind one server: `gymnasium.make_vec("robot_env/FetchReach-v0", num_envs=N)`.

The vector env (`vector_env.BridgeVectorEnv`) with FetchReachEnv's task and arguments: robot i is
exactly a `FetchReachEnv` given its goal and actions.
"""
from __future__ import annotations

from gymnasium.vector import AutoresetMode

from .fetch_reach import FetchReachArgs, reach_task
from .vector_env import BridgeVectorEnv


class FetchReachVectorEnv(FetchReachArgs, BridgeVectorEnv):
    """`num_envs` FetchReach robots stepped in one request; arguments as `FetchReachEnv` plus
    `num_envs`, `max_episode_steps` (50) and `autoreset_mode` (NEXT_STEP or SAME_STEP)."""

    def __init__(self, num_envs: int = 1, config=None, reward_type: str = "sparse", control: str = "ee_delta",
                 block_gripper: bool = True, overrides: dict | None = None, max_episode_steps: int = 50,
                 autoreset_mode=AutoresetMode.NEXT_STEP, render_mode=None, cameras=None):
        super().__init__(reach_task(reward_type, control, block_gripper), num_envs, config, overrides,
                         max_episode_steps, autoreset_mode, render_mode, cameras)
