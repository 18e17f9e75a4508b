"""A Gymnasium-Robotics Fetch env in-process (FetchReach-v4, FetchPush-v4, FetchSlide-v4,
FetchPickAndPlace-v4), timed as `robot-env bench` times ours (the same random 4-d actions, warm-up, reset
on truncation). Runs in whatever Python has gymnasium-robotics and mujoco<3.12 (`--anchor-python`, or the
venv of `robot-env anchor-env`), so it imports nothing of robot_env.
Usage: anchor_fetch.py ENV_ID STEPS WARMUP SEED; prints one JSON line."""
import json
import platform
import sys
import time
import warnings


def main(env_id: str, steps: int, warmup: int, seed: int) -> None:
    warnings.filterwarnings("ignore")
    import gymnasium as gym
    import gymnasium_robotics
    import mujoco
    import numpy as np
    gym.register_envs(gymnasium_robotics)
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, 4)).astype(np.float32)
    env = gym.make(env_id)
    if env.action_space.shape != actions.shape[1:]:
        raise SystemExit(f"{env_id} takes actions of shape {env.action_space.shape}; this benchmark's are "
                         f"{actions.shape[1:]} (a Fetch env's)")
    env.reset(seed=seed)
    for i in range(warmup):
        _, _, term, trunc, _ = env.step(actions[i % steps])
        if term or trunc:
            env.reset()
    env.reset(seed=seed)
    data = env.unwrapped.data
    timer = data.timer[int(mujoco.mjtTimer.mjTIMER_STEP)]  # MuJoCo's own: time inside mj_step
    physics = -timer.duration
    t0 = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            physics += timer.duration  # a reset (mj_resetData) zeroes the timer
            env.reset()
            physics -= timer.duration
    secs = time.perf_counter() - t0
    physics += timer.duration
    env.close()
    print(json.dumps({"env": env_id, "steps": steps, "seconds": secs, "steps_per_s": steps / secs,
                      "physics_seconds": physics,
                      "gymnasium": gym.__version__, "gymnasium_robotics": gymnasium_robotics.__version__,
                      "mujoco": mujoco.__version__, "python": platform.python_version(),
                      "executable": sys.executable}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
