"""`robot-env demo`: a scripted goal-reaching agent through the Gymnasium env, with live progress."""
from __future__ import annotations

import sys
import time

import numpy as np


def scripted_action(obs: dict, gain: float = 20.0) -> np.ndarray:
    """Proportional reach (FetchReach): full-scale action once the goal is more than 5 cm away on an axis."""
    a = np.zeros(4, dtype=np.float32)
    a[:3] = np.clip((obs["desired_goal"] - obs["achieved_goal"]) * gain, -1.0, 1.0)
    return a


def run_episodes(env, episodes: int, seed: int = 0, progress=None):
    """Run the scripted agent; return (successes, steps, seconds)."""
    successes = []
    steps = 0
    t0 = time.perf_counter()
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        info = {}
        while not done:
            obs, _, terminated, truncated, info = env.step(scripted_action(obs))
            steps += 1
            done = terminated or truncated
        successes.append(info["is_success"])
        if progress:
            progress(ep + 1, episodes, float(np.mean(successes)), steps / (time.perf_counter() - t0))
    return successes, steps, time.perf_counter() - t0


def _bar(done, total, success, rate, width=30, stream=sys.stderr):
    filled = int(width * done / total)
    stream.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} episodes  "
                 f"success {success:5.1%}  {rate:7.0f} steps/s")
    if done == total:
        stream.write("\n")
    stream.flush()


def run_demo(config=None, episodes: int = 50, seed: int = 0, env_id: str = "robot_env/FetchReach-v0") -> int:
    import gymnasium as gym

    import robot_env  # noqa: F401  (registers the env)

    from ..envs.registration import entry

    if entry(env_id).task.has_object:
        raise ValueError(f"{env_id}: the scripted agent reaches; it has no object tasks yet")
    t0 = time.perf_counter()
    env = gym.make(env_id, config=config)
    start = time.perf_counter() - t0
    try:
        u = env.unwrapped
        print(f"{env_id} on the {u.backend_kind} backend "
              f"(server {'spawned' if u._session.server else 'at ' + u._session.client.endpoint}, "
              f"ready in {start:.2f} s)")
        successes, steps, secs = run_episodes(env, episodes, seed, progress=_bar)
        lat = u.latency.summary()
    finally:
        env.close()
    rate = float(np.mean(successes))
    print(f"success rate   {rate:.1%} over {episodes} episodes ({steps} steps)")
    print(f"throughput     {steps / secs:,.0f} env steps/s")
    for name in ("rtt", "bridge", "action_to_obs"):
        s = lat[name]
        print(f"latency {name:<14} p50 {s['p50_ms']:.3f} ms   p99 {s['p99_ms']:.3f} ms")
    return 0 if rate >= 0.9 else 1
