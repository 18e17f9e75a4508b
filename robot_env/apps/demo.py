"""`robot-env demo`: a scripted agent through the Gymnasium env (`apps.scripted`: observation in, action
out), with live progress: FetchReach reaches; Push, Slide and PickAndPlace push, strike, or pick and place."""
from __future__ import annotations

import sys
import time

import numpy as np

from . import scripted

# The success rate each task's agent reaches at its episode length (measured: README, tasks/fetch.py);
# the demo exits 0 when an episode run does as well.
EXPECTED = {"FetchReach": 0.9, "FetchPush": 0.9, "FetchPickAndPlace": 0.95, "FetchSlide": 0.2}


def scripted_action(obs: dict, gain: float = 20.0) -> np.ndarray:
    """Proportional reach (FetchReach): full-scale action once the goal is more than 5 cm away on an axis."""
    return scripted.ReachAgent(gain).act(obs)


def run_episodes(env, episodes: int, seed: int = 0, progress=None, agent=None, on_episode=None):
    """Run the scripted agent of the env's task (or `agent`); return (successes, steps, seconds).

    Episode k is seeded `seed + k`; `on_episode(k, seed, success, steps, final distance)` after each."""
    agent = agent or scripted.for_env(env)
    successes = []
    steps = 0
    t0 = time.perf_counter()
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        agent.reset(obs)
        done = False
        info = {}
        n = 0
        while not done:
            obs, _, terminated, truncated, info = env.step(agent.act(obs))
            n += 1
            done = terminated or truncated
        successes.append(info["is_success"])
        steps += n
        if on_episode:
            dist = float(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]))
            on_episode(ep, seed + ep, bool(info["is_success"]), n, dist)
        if progress:
            progress(ep + 1, episodes, float(np.mean(successes)), steps / (time.perf_counter() - t0))
    return successes, steps, time.perf_counter() - t0


def success_by_length(env, episodes: int, seed: int = 0, agent=None) -> np.ndarray:
    """Success after each step of `episodes` seeded episodes (seed + k), (episodes, max steps): column
    L - 1 is the success an episode length of L gives (the agent does not know the length, so an episode
    cut at L is the first L steps of a longer one). `env` is made with the longest length."""
    agent = agent or scripted.for_env(env)
    out = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        agent.reset(obs)
        row, done = [], False
        while not done:
            obs, _, terminated, truncated, info = env.step(agent.act(obs))
            row.append(float(info["is_success"]))
            done = terminated or truncated
        out.append(row)
    return np.array(out)


def run_lengths(env_id: str, lengths, config=None, episodes: int = 100, seed: int = 0) -> int:
    """`robot-env demo --lengths`: the success rate at each episode length, one run of the longest."""
    import gymnasium as gym

    import robot_env  # noqa: F401

    lengths = sorted({int(n) for n in lengths})
    kw = {} if config is None else {"config": config}
    t0 = time.perf_counter()
    env = gym.make(env_id, max_episode_steps=lengths[-1], **kw)
    try:
        succ = success_by_length(env, episodes, seed)
    finally:
        env.close()
    print(f"{env_id}: success rate by episode length, {episodes} episodes (seeds {seed}..{seed + episodes - 1}), "
          f"{time.perf_counter() - t0:.0f} s")
    print("| steps | " + " | ".join(str(n) for n in lengths) + " |")
    print("|---|" + "---:|" * len(lengths))
    print("| success | " + " | ".join(f"{succ[:, n - 1].mean():.0%}" for n in lengths) + " |")
    return 0


def _bar(done, total, success, rate, width=30, stream=sys.stderr):
    filled = int(width * done / total)
    stream.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} episodes  "
                 f"success {success:5.1%}  {rate:7.0f} steps/s")
    if done == total:
        stream.write("\n")
    stream.flush()


def _episode_line(ep, seed, success, steps, dist):
    print(f"  episode {ep + 1:3d} (seed {seed}): {'success' if success else 'failure'}  "
          f"{steps} steps, object {dist:.3f} m from the goal", flush=True)


def run_demo(config=None, episodes: int = 50, seed: int = 0, env_id: str = "robot_env/FetchReach-v0",
             record=None, cameras=None) -> int:
    """`record`: also record the episodes (states, commands and the `cameras`' frames, one per step) to
    this MCAP file, as `RecordEpisodes` does: `robot-env export FILE --lerobot DIR` makes a dataset of it."""
    import gymnasium as gym

    import robot_env  # noqa: F401  (registers the env)

    from ..envs.registration import entry

    task = entry(env_id).task
    t0 = time.perf_counter()
    # no config: the id's own (the embedded simulator for FetchReach, MuJoCo for the object tasks)
    kw = {"cameras": list(cameras)} if cameras else {}
    env = gym.make(env_id, **kw) if config is None else gym.make(env_id, config=config, **kw)
    if record:
        from ..envs import RecordEpisodes
        env = RecordEpisodes(env, record=record)
    start = time.perf_counter() - t0
    try:
        u = env.unwrapped
        print(f"{env_id} on the {u.backend_kind} backend "
              f"(server {'spawned' if u._session.server else 'at ' + u._session.client.endpoint}, "
              f"ready in {start:.2f} s), {env.spec.max_episode_steps} steps an episode")
        if task.has_object:  # few, long episodes: one line each
            successes, steps, secs = run_episodes(env, episodes, seed, on_episode=_episode_line)
        else:
            successes, steps, secs = run_episodes(env, episodes, seed, progress=_bar)
        lat = u.latency.summary()
    finally:
        env.close()
    if record:
        print(f"recorded {env.stats}")
    rate = float(np.mean(successes))
    print(f"success rate   {rate:.1%} over {episodes} episodes ({steps} steps)")
    print(f"throughput     {steps / secs:,.0f} env steps/s")
    for name in ("rtt", "bridge", "action_to_obs"):
        s = lat[name]
        print(f"latency {name:<14} p50 {s['p50_ms']:.3f} ms   p99 {s['p99_ms']:.3f} ms")
    return 0 if rate >= EXPECTED.get(task.name, 0.9) else 1
