"""robot-env: Gymnasium environments for a Fetch-style robot, bridged over ZeroMQ to a robot server.

`import robot_env` registers `robot_env/FetchReach-v0`.
"""
from gymnasium.envs.registration import register

from .errors import ConfigError, RequestError, RobotEnvError, ServerError, ServerTimeout
from .robot import MoveError, Robot, connect

__version__ = "0.1.0"

register(
    id="robot_env/FetchReach-v0",
    entry_point="robot_env.envs.fetch_reach:FetchReachEnv",
    max_episode_steps=50,
)

__all__ = ["ConfigError", "MoveError", "RequestError", "Robot", "RobotEnvError", "ServerError", "ServerTimeout",
           "__version__", "connect"]
