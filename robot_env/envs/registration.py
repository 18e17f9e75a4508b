"""The env ids robot-env registers with Gymnasium, from one table: id -> (task, the config it runs on).

Every id makes the one goal env (`goal_env.BridgeGoalEnv`) and, with `gymnasium.make_vec`, the one
vector env (`vector_env.BridgeVectorEnv`) for its task; keyword arguments of `gymnasium.make` that
are the task's (`reward_type`, `control`, `block_gripper`, ...) change the task, the others (`config`,
`overrides`) choose the robot, and `cameras` / `render_mode` what the env shows of it (images in the
observation, `render()`). FetchReach keeps its own class names (`FetchReachEnv`,
`FetchReachVectorEnv`), which are these envs with its task.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from gymnasium.envs.registration import register, registry

from ..tasks.fetch import PICK_AND_PLACE, PUSH, REACH, SLIDE, FetchTask


@dataclass(frozen=True)
class EnvEntry:
    task: FetchTask
    config: str | None = None  # the config a `make` without one runs on (None: the embedded simulator)
    env: str = "robot_env.envs.registration:make_goal_env"
    vector_env: str = "robot_env.envs.registration:make_vector_env"


ENV_IDS: dict[str, EnvEntry] = {
    "robot_env/FetchReach-v0": EnvEntry(REACH, env="robot_env.envs.fetch_reach:FetchReachEnv",
                                        vector_env="robot_env.envs.fetch_reach_vector:FetchReachVectorEnv"),
    # the object tasks need physics: the MuJoCo backend (the `mujoco` extra)
    "robot_env/FetchPush-v0": EnvEntry(PUSH, config="mujoco"),
    "robot_env/FetchSlide-v0": EnvEntry(SLIDE, config="mujoco"),
    "robot_env/FetchPickAndPlace-v0": EnvEntry(PICK_AND_PLACE, config="mujoco"),
}
_TASK_ARGS = {f.name for f in fields(FetchTask)} - {"name"}


def entry(env_id: str) -> EnvEntry:
    try:
        return ENV_IDS[env_id]
    except KeyError:
        raise ValueError(f"unknown env id {env_id!r}; robot-env has: {', '.join(ENV_IDS)}") from None


def task_for(env_id: str, **task_args) -> FetchTask:
    """The task an id stands for, with some of its arguments changed."""
    bad = set(task_args) - _TASK_ARGS
    if bad:
        raise TypeError(f"{env_id}: unknown task argument(s) {', '.join(sorted(bad))}")
    return entry(env_id).task.with_(**task_args)


def _split(env_id: str, kwargs: dict) -> tuple[FetchTask, dict]:
    task_args = {k: kwargs.pop(k) for k in list(kwargs) if k in _TASK_ARGS}
    if kwargs.get("config") is None:  # None too: the config the id runs on
        kwargs["config"] = entry(env_id).config
    return task_for(env_id, **task_args), kwargs


def make_goal_env(env_id: str, **kwargs):
    from .goal_env import BridgeGoalEnv
    task, rest = _split(env_id, kwargs)
    return BridgeGoalEnv(task, **rest)


def make_vector_env(env_id: str, num_envs: int = 1, **kwargs):
    from .vector_env import BridgeVectorEnv
    task, rest = _split(env_id, kwargs)
    return BridgeVectorEnv(task, num_envs, **rest)


def register_envs() -> None:
    """Register every id in `ENV_IDS` (once: a second call changes nothing)."""
    for env_id, e in ENV_IDS.items():
        if env_id in registry:
            continue
        generic = e.env.endswith(":make_goal_env")
        register(id=env_id, entry_point=e.env, vector_entry_point=e.vector_env,
                 max_episode_steps=e.task.max_episode_steps,
                 kwargs={"env_id": env_id} if generic else {})
