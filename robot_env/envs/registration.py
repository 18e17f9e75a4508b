"""The env ids robot-env registers with Gymnasium, from one table."""
from __future__ import annotations

from gymnasium.envs.registration import register, registry

# id -> (goal env entry point, vector env entry point, episode length)
ENV_IDS = {
    "robot_env/FetchReach-v0": ("robot_env.envs.fetch_reach:FetchReachEnv",
                                "robot_env.envs.fetch_reach_vector:FetchReachVectorEnv", 50),
}


def register_envs() -> None:
    """Register every id in `ENV_IDS` (once: a second call changes nothing)."""
    for env_id, (entry, vector_entry, steps) in ENV_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=entry, vector_entry_point=vector_entry, max_episode_steps=steps)
