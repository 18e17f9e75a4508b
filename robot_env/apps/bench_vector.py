"""`robot-env bench --vector N`: robot-steps/s of N robots behind one batched server, next to N single
envs each with its own server, in the same run, with the same random actions.

Rows:
- batched: `gymnasium.make_vec("robot_env/FetchReach-v0", num_envs=N)`: one server process steps
  all N robots per request (`simulators.kinematic_batch`).
- N single servers: `gymnasium.make_vec(..., vectorization_mode="sync")`: Gymnasium's SyncVectorEnv
  over N `FetchReachEnv`s, each spawning its own embedded server: N round trips per vector step.
For each: robot-steps/s (N × vector steps/s), one request's round trip p50/p99 (a batched step is one
request; a single-server vector step is N of them), server processes, their resident memory
(VmRSS from /proc, summed), and the seconds `make_vec` took to start them.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from .bench import _markdown_and_json, _ms, _text_table

ENV_ID = "robot_env/FetchReach-v0"
SEED = 0
HEADER = ["", "robot-steps/s", "vs single servers", "request rtt p50 / p99 ms", "servers", "server RSS MB",
          "start-up s"]


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _server_pids(env) -> list[int]:
    u = env.unwrapped
    if hasattr(u, "_session"):  # the batched env: one session
        return [u._session.server.proc.pid]
    return [e.unwrapped._session.server.proc.pid for e in u.envs]  # SyncVectorEnv of single envs


def _clients(env) -> list:
    u = env.unwrapped
    return [u._client] if hasattr(u, "_client") else [e.unwrapped._client for e in u.envs]


def _time(make, actions: np.ndarray, warmup: int) -> dict:
    t0 = time.perf_counter()
    env = make()
    startup = time.perf_counter() - t0
    try:
        env.reset(seed=SEED)
        for i in range(warmup):
            env.step(actions[i % len(actions)])
        clients = _clients(env)
        for c in clients:
            c.latency.reset()
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)  # NEXT_STEP autoreset in both: the step after truncation resets
        secs = time.perf_counter() - t0
        pids = _server_pids(env)
        rss = [_rss_mb(p) for p in pids]
        rtt = clients[0].latency.summary()["rtt"]  # every client sees the same kind of request
        n = env.num_envs
        return {"num_envs": n, "vector_steps": len(actions), "seconds": secs,
                "robot_steps_per_s": n * len(actions) / secs, "startup_s": startup,
                "servers": len(pids), "server_rss_mb": float(np.sum(rss)), "rtt": rtt}
    finally:
        env.close()


def run_bench_vector(num_envs: int = 64, steps: int = 1000, singles: int | None = None, warmup: int = 100,
                     env_id: str = ENV_ID,
                     out=None) -> int:
    """Time both rows; `singles` sets how many single-server envs the comparison row runs (default N)."""
    import gymnasium as gym

    import robot_env  # noqa: F401  (registers the env)

    n, m = int(num_envs), int(singles or num_envs)
    if n < 1 or m < 1 or steps < 1:
        raise ValueError("num_envs, singles and steps must be >= 1")
    rng = np.random.default_rng(SEED)
    print(f"robot-env bench --vector {n}: {steps} timed vector steps per row after {warmup} warm-up steps, "
          f"random actions (seed {SEED}); Python {platform.python_version()}, {os.cpu_count()} CPUs", flush=True)
    res: dict = {"num_envs": n, "singles": m, "steps": steps, "warmup": warmup, "cpus": os.cpu_count(),
                 "python": platform.python_version(), "robot_env": robot_env.__version__}
    print(f"  one batched server, {n} robots ...", flush=True)
    res["batched"] = _time(lambda: gym.make_vec(env_id, num_envs=n),
                           rng.uniform(-1, 1, (steps, n, 4)).astype(np.float32), warmup)
    print(f"  {m} single-env servers (SyncVectorEnv) ...", flush=True)
    res["singles_row"] = _time(lambda: gym.make_vec(env_id, num_envs=m, vectorization_mode="sync"),
                               rng.uniform(-1, 1, (steps, m, 4)).astype(np.float32), warmup)
    b, s = res["batched"], res["singles_row"]
    res["ratio"] = b["robot_steps_per_s"] / s["robot_steps_per_s"]
    rows = []
    for label, r in ((f"batched server, N = {n}", b), (f"{m} single-env servers", s)):
        rows.append([label, f"{r['robot_steps_per_s']:,.0f}", f"{r['robot_steps_per_s'] / s['robot_steps_per_s']:.2f}×",
                     f"{_ms(r['rtt']['p50_ms'])} / {_ms(r['rtt']['p99_ms'])}", str(r["servers"]),
                     f"{r['server_rss_mb']:,.0f}", f"{r['startup_s']:.1f}"])
    print()
    print(_text_table(rows, HEADER))
    print()
    print(f"per robot: {1e6 / b['robot_steps_per_s']:.1f} µs batched, {1e6 / s['robot_steps_per_s']:.1f} µs "
          f"with a server each; server memory per robot {b['server_rss_mb'] / n:.2f} MB vs "
          f"{s['server_rss_mb'] / m:.1f} MB")
    _markdown_and_json(rows, HEADER, res, out)
    return 0
