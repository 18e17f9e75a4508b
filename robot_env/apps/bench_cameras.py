"""`robot-env bench --cameras`: what a camera frame adds to a step, and where the time goes.

Everything in one run, on this machine, against spawned MuJoCo servers (one robot, lockstep, the
table scene): for each camera setting (frame size, shadows, antialiasing) a server of its own, on
which steps *without* frames and steps *with* one RGB frame of the external camera alternate in
blocks (same server, same physics, same random actions), so the difference is the frame's cost:

- added ms: median step round trip with the frame minus without it;
- render ms: how much longer the server held the request (its `tr` .. `tx` stamps): rendering, the
  copy into the frames array, and the frame's bookkeeping;
- transport ms: the rest of the difference (the round trip outside the server): ZeroMQ carrying the
  extra part, and the client's checks and zero-copy decode;
- in-process render ms: the backend's `render` alone, timed in this process (scene update, OpenGL
  draw and read-back on the CPU renderer), as a cross-check of the server's figure.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time

import numpy as np

from .bench import _markdown_and_json, _text_table

SEED = 0
CAMERA = "external"
# (label, camera size, shadows, antialias)
SETTINGS = [
    ("84×84", 84, False, False),
    ("128×128", 128, False, False),
    ("480×480", 480, False, False),
    ("84×84, shadows", 84, True, False),
    ("84×84, antialias", 84, False, True),
    ("480×480, shadows", 480, True, False),
    ("480×480, antialias", 480, False, True),
]
HEADER = ["", "bytes/frame", "step ms, no frame", "step ms, 1 frame", "added ms", "render ms (server)",
          "transport ms", "in-process render ms"]


def _overrides(size: int, shadows: bool, antialias: bool) -> dict:
    return {"server.mujoco": {"camera_height": size, "camera_width": size, "shadows": shadows,
                              "antialias": antialias, "cameras": [CAMERA]}}


def _time_server(size: int, shadows: bool, antialias: bool, steps: int, block: int = 25) -> dict:
    """Alternate blocks of steps without and with a frame on one server; per-step samples of each."""
    from ..bridge.session import Session

    rng = np.random.default_rng(SEED)
    s = Session("mujoco", _overrides(size, shadows, antialias))
    try:
        c = s.client
        samples = {False: {"rtt": [], "held": []}, True: {"rtt": [], "held": []}}
        n = 0
        c.reset(seed=SEED, frames=[CAMERA])  # the renderer is made here, not in a timed step
        for _ in range(2 * block):  # warm-up
            c.request("step", cmd={"ee_delta": list(rng.uniform(-0.02, 0.02, 3))}, frames=[CAMERA])
        with_frame = False
        while min(len(samples[False]["rtt"]), len(samples[True]["rtt"])) < steps:
            for _ in range(block):
                if n % 50 == 0:
                    c.reset(seed=SEED)
                n += 1
                fields = {"cmd": {"ee_delta": list(rng.uniform(-0.02, 0.02, 3))}}
                if with_frame:
                    fields["frames"] = [CAMERA]
                t0 = time.perf_counter()
                reply = c.request("step", **fields)
                rtt = time.perf_counter() - t0
                if with_frame:
                    img = reply["frames"][CAMERA]
                    assert img.shape == (1, size, size, 3)
                samples[with_frame]["rtt"].append(rtt)
                samples[with_frame]["held"].append(reply["tx"] - reply["tr"])
            with_frame = not with_frame
    finally:
        s.close()
    med = {k: {m: 1e3 * statistics.median(v[m]) for m in v} for k, v in samples.items()}
    return {"no_frame_ms": med[False]["rtt"], "frame_ms": med[True]["rtt"],
            "added_ms": med[True]["rtt"] - med[False]["rtt"],
            "render_ms": med[True]["held"] - med[False]["held"],
            "transport_ms": (med[True]["rtt"] - med[True]["held"]) - (med[False]["rtt"] - med[False]["held"]),
            "p99_frame_ms": 1e3 * float(np.percentile(samples[True]["rtt"], 99)),
            "steps": steps, "bytes": size * size * 3}


def _time_in_process(size: int, shadows: bool, antialias: bool, frames: int) -> float:
    """Median ms per `render([CAMERA])` of the backend itself (no server, no transport)."""
    from ..backends.registry import load_backend
    from ..config import backend_kwargs, load

    cfg = load("mujoco", _overrides(size, shadows, antialias))
    b = load_backend("mujoco", **backend_kwargs(cfg))
    try:
        b.reset(SEED, {})
        b.advance(0.04)
        for _ in range(10):
            b.render([CAMERA])
        times = []
        for _ in range(frames):
            t0 = time.perf_counter()
            b.render([CAMERA])
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)
    finally:
        b.close()


def _time_env(steps: int, block: int = 25) -> dict:
    """The goal env's step on the mujoco config, without cameras and with `cameras=["external"]`: both
    envs open at once, stepped in alternating blocks with the same actions; median ms per step."""
    import gymnasium as gym

    kinds = (("no camera", {}), ("cameras=['external']", {"cameras": [CAMERA]}))
    envs = []
    try:
        for _, kw in kinds:
            envs.append(gym.make("robot_env/FetchReach-v0", config="mujoco", **kw))
        space = envs[0].action_space
        space.seed(SEED)
        actions = [space.sample() for _ in range(block)]
        times: list = [[], []]
        for e in envs:
            e.reset(seed=SEED)
            for a in actions:  # warm-up
                e.step(a)
        while len(times[1]) < steps:
            for k, e in enumerate(envs):
                e.reset(seed=SEED)
                for a in actions:
                    t0 = time.perf_counter()
                    e.step(a)
                    times[k].append(time.perf_counter() - t0)
    finally:
        for e in envs:
            e.close()
    return {label: 1e3 * statistics.median(t) for (label, _), t in zip(kinds, times)}


def run_bench_cameras(steps: int = 300, out=None, settings=None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless; the spawned servers inherit it
    import mujoco

    steps = int(steps)
    if steps < 10:
        raise ValueError(f"steps must be >= 10, got {steps}")
    settings = SETTINGS if settings is None else settings
    print(f"robot-env bench --cameras: {steps} steps with and {steps} without one {CAMERA!r} RGB frame per "
          f"setting, alternating blocks on one server each; MuJoCo {mujoco.__version__}, MUJOCO_GL="
          f"{os.environ['MUJOCO_GL']}, Python {platform.python_version()}, {os.cpu_count()} CPUs", flush=True)
    res: dict = {"steps": steps, "camera": CAMERA, "mujoco": mujoco.__version__, "gl": os.environ["MUJOCO_GL"],
                 "python": platform.python_version(), "cpus": os.cpu_count(), "rows": {}}
    rows = []
    for label, size, shadows, antialias in settings:
        print(f"  {label} ...", flush=True)
        r = _time_server(size, shadows, antialias, steps)
        r["in_process_render_ms"] = _time_in_process(size, shadows, antialias, max(20, steps // 5))
        res["rows"][label] = r
        rows.append([label, f"{r['bytes']:,}", f"{r['no_frame_ms']:.3f}", f"{r['frame_ms']:.3f}",
                     f"{r['added_ms']:.3f}", f"{r['render_ms']:.3f}", f"{r['transport_ms']:.3f}",
                     f"{r['in_process_render_ms']:.3f}"])
    print("  the env (FetchReach-v0 on mujoco) ...", flush=True)
    res["env_ms"] = _time_env(steps)
    print()
    print(_text_table(rows, HEADER))
    print()
    base = res["rows"].get("84×84")
    if base:
        verdict = "within" if base["added_ms"] <= 3.0 else "over"
        print(f"one 84×84 RGB frame adds {base['added_ms']:.2f} ms per step ({verdict} the 3 ms aim): "
              f"{base['render_ms']:.2f} ms rendering on the server, {base['transport_ms']:.2f} ms transport and decode")
    e = res["env_ms"]
    a, b = e.values()
    print(f"env step: {a:.3f} ms without a camera, {b:.3f} ms with cameras=['external'] (+{b - a:.3f} ms)")
    for label in ("84×84", "480×480"):
        plain = res["rows"].get(label)
        for extra in ("shadows", "antialias"):
            r = res["rows"].get(f"{label}, {extra}")
            if plain and r and plain["in_process_render_ms"] > 0 and math.isfinite(r["in_process_render_ms"]):
                print(f"{label} {extra}: {r['in_process_render_ms']:.2f} ms per frame rendered, "
                      f"{r['in_process_render_ms'] / plain['in_process_render_ms']:.1f}× the plain frame's "
                      f"{plain['in_process_render_ms']:.2f} ms")
    _markdown_and_json(rows, HEADER, res, out)
    return 0
