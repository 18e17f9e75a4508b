"""robot-env: Gymnasium environments for a Fetch-style robot, bridged over ZeroMQ to a robot server.

`import robot_env` registers `robot_env/FetchReach-v0` (`gymnasium.make`, and `gymnasium.make_vec`
for N simulated robots behind one batched server).
"""
from gymnasium.envs.registration import register

from .errors import ConfigError, RequestError, RobotEnvError, ServerError, ServerTimeout
from .robot import MoveError, Robot, connect

__version__ = "0.1.0"

register(
    id="robot_env/FetchReach-v0",
    entry_point="robot_env.envs.fetch_reach:FetchReachEnv",
    # gymnasium.make_vec(..., num_envs=N): N robots behind one batched simulator server
    vector_entry_point="robot_env.envs.fetch_reach_vector:FetchReachVectorEnv",
    max_episode_steps=50,
)

__all__ = ["ConfigError", "MoveError", "RequestError", "Robot", "RobotEnvError", "ServerError", "ServerTimeout",
           "__version__", "connect"]
