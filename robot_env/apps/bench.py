"""`robot-env bench`: env steps/s and latency over ipc and tcp, next to the transport floor and FetchReach-v4.

Everything is measured in the same run, on this machine, with the same fixed random action
sequence: nothing is hard-coded. Rows:

- robot-env ipc / tcp: `gymnasium.make("robot_env/FetchReach-v0")` on the embedded kinematic
  simulator, over the default private ipc endpoint and over tcp on 127.0.0.1, with the latency
  percentiles the client measured (`env.unwrapped.latency`).
- robot-env ipc, no-op backend: the same env, client and server loop, but the server's backend does
  no work (its state is fixed at reset): what the protocol, the server and the env cost in Python.
  No simulator can make a step faster than this row.
- where a step goes (a line under the table, "split" in the JSON): the env over ipc once more, to a
  server that times its requests, its backend's calls and, for MuJoCo, the time inside `mj_step`
  (MuJoCo's own timer); the anchor's child reads the same timer. Means per step over every request of
  that run (warm-up included): env and transport, server loop and protocol, control, physics.
- bare zmq round trip: a DEALER in this process and a ROUTER in a child process on an abstract ipc
  endpoint, exchanging messages of the sizes a step request and its reply have. No msgpack, no
  simulator: the floor the transport puts under every step.
- FetchReach-v4 in-process (the anchor): Gymnasium-Robotics' MuJoCo env of the same task (`anchor_id`:
  FetchPush-v4 for a FetchPush env, ...) in a child Python, same actions, same warm-up, same
  reset-on-truncation. The child Python is `--anchor-python`, else this one if it can run the anchor,
  else the venv `robot-env anchor-env` builds (`anchor_env.pick`): Gymnasium-Robotics' Fetch envs need
  mujoco<3.12, which robot-env's own MuJoCo backend does not use.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import anchor_env, bench_children

WARMUP = 300
SEED = 0
ANCHOR_HINT = anchor_env.HINT
ANCHOR_VERSION = "v4"  # Gymnasium-Robotics' Fetch envs: FetchReach-v4, FetchPush-v4, FetchSlide-v4, ...


def anchor_id(env_id: str) -> str:
    """Gymnasium-Robotics' env of the task our `env_id` runs: the task's name and ANCHOR_VERSION."""
    from ..envs.registration import entry
    return f"{entry(env_id).task.name}-{ANCHOR_VERSION}"


def _actions(steps: int) -> np.ndarray:
    return np.random.default_rng(SEED).uniform(-1, 1, (steps, 4)).astype(np.float32)


def _time_env(env, actions: np.ndarray) -> dict:
    """Warm up, reset the latency stats, then time len(actions) steps (resetting on truncation)."""
    steps = len(actions)
    env.reset(seed=SEED)
    for i in range(WARMUP):
        _, _, term, trunc, _ = env.step(actions[i % steps])
        if term or trunc:
            env.reset()
    env.reset(seed=SEED)
    env.unwrapped.latency.reset()
    t0 = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    secs = time.perf_counter() - t0
    return {"steps": steps, "seconds": secs, "steps_per_s": steps / secs,
            "latency": env.unwrapped.latency.summary()}


def _message_sizes(env) -> tuple[int, int]:
    """Bytes on the wire of one step request and its reply, as the env and the server encode them
    (the command as a list of floats; the reply's state packed, see `protocol.pack_state`)."""
    from ..tasks.fetch import REACH
    ACTION_SCALE = REACH.action_scale
    from ..bridge.protocol import VERSION, encode, pack_state

    client = env.unwrapped._client
    cmd = {"ee_delta": [0.5 * ACTION_SCALE] * 3}
    request = {"cmd": cmd, "v": VERSION, "op": "step", "seq": client.seq + 1, "t": time.time()}
    env.reset(seed=SEED)
    reply = client.request("step", cmd=cmd)
    reply["state"] = pack_state(dict(reply["state"]))
    return len(encode(request)), len(encode(reply))


def _free_tcp_pair(host: str = "127.0.0.1", tries: int = 50) -> int:
    """A port p with p and p + 1 both free (the server puts its state stream on p + 1)."""
    for _ in range(tries):
        with socket.socket() as a:
            a.bind((host, 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind((host, port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("could not find two adjacent free tcp ports on 127.0.0.1")


def _config_name(env_id: str, config: str | None = None) -> str:
    """The config the env runs on: `--config`, else the env id's own (the object tasks': mujoco)."""
    from ..envs.registration import entry
    return config or entry(env_id).config or "sim"


def _backend_name(config: str) -> str:
    from .. import config as config_mod
    return config_mod.load(config)["server"]["backend"]


def _bench_ipc(actions, env_id: str, config: str) -> tuple[dict, tuple[int, int]]:
    import gymnasium as gym

    env = gym.make(env_id, config=config)
    try:
        res = _time_env(env, actions)
        res["endpoint"] = env.unwrapped._session.client.endpoint
        res["control_period"] = env.unwrapped._session.info["control_period"]  # what the server runs
        sizes = _message_sizes(env)
    finally:
        env.close()
    return res, sizes


def _bench_tcp(actions, env_id: str, config: str) -> dict:
    import gymnasium as gym

    from .. import config as config_mod
    from ..bridge.spawn import ServerProcess

    endpoint = f"tcp://127.0.0.1:{_free_tcp_pair()}"
    cfg = config_mod.load(config)
    cfg["server"]["endpoint"] = endpoint
    env = gym.make(env_id, config=cfg)
    server = None
    note = None
    if not env.unwrapped._session.client.endpoint.startswith("tcp://"):
        # The spawned server did not listen where [server] endpoint says: start it ourselves on
        # that endpoint and point the env's client at it, so this row really is tcp.
        used = env.unwrapped._session.client.endpoint
        env.close()
        note = (f"the env spawned its server on {used} despite [server] endpoint = {endpoint!r}; "
                "bench started the tcp server itself")
        server = ServerProcess(cfg, endpoint=endpoint)
        client_cfg = config_mod.load(config)
        client_cfg["client"]["endpoint"] = server.endpoint
        env = gym.make(env_id, config=client_cfg)
    try:
        res = _time_env(env, actions)
        res["endpoint"] = env.unwrapped._session.client.endpoint
    finally:
        env.close()
        if server is not None:
            server.close()
    if not res["endpoint"].startswith("tcp://"):
        raise RuntimeError(f"tcp row ran over {res['endpoint']}, not tcp")
    if note:
        res["note"] = note
    return res


@contextlib.contextmanager
def _child(module: str, args: list, what: str):
    """A helper process running `script` that says READY when it serves and exits when stdin closes."""
    proc = subprocess.Popen([sys.executable, "-m", f"robot_env.apps.bench_children.{module}", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode(errors="replace").strip()
        if line != "READY":
            proc.wait(5)
            raise RuntimeError(f"{what} failed to start: {proc.stderr.read().decode(errors='replace')}")
        yield proc
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _bench_noop(actions, env_id: str, config: str) -> dict:
    """The env over ipc to a server whose backend does no work: the ceiling of this path in Python."""
    import gymnasium as gym

    from ..bridge.endpoints import private_ipc
    from ..envs.registration import entry

    endpoint, stream = private_ipc("noop")
    with _child("noop_server", [endpoint, stream, config, entry(env_id).task.needs.scene or ""],
                "no-op robot server"):
        env = gym.make(env_id, config=config, overrides={"client": {"endpoint": endpoint}})
        try:
            res = _time_env(env, actions)
            res["endpoint"] = endpoint
        finally:
            env.close()
    return res


def _bench_split(actions, env_id: str, config: str) -> dict:
    """Where a step's time goes: the env over ipc to a server that times its requests, its backend's
    calls and the physics inside them (`bench_children.timed_server`), every request of the run
    (warm-up included) on both sides, as means per env step in µs."""
    import gymnasium as gym

    from ..bridge.endpoints import private_ipc
    from ..envs.registration import entry

    endpoint, stream = private_ipc("timed")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "totals.json")
        with _child("timed_server", [endpoint, stream, out, config, entry(env_id).task.needs.scene or ""],
                    "timed robot server"):
            env = gym.make(env_id, config=config, overrides={"client": {"endpoint": endpoint}})
            try:
                t0 = time.perf_counter()
                _time_env(env, actions)  # the server's totals count every request of it: so does the wall
                wall = time.perf_counter() - t0
            finally:
                env.close()
        with open(out) as fh:
            totals = json.load(fh)
    n = WARMUP + len(actions)
    us = {k: 1e6 * totals[k] / n for k in ("server", "backend")}
    physics = None if totals["physics"] is None else 1e6 * totals["physics"] / n
    return {"steps": n, "requests": totals["requests"], "step_us": 1e6 * wall / n,
            "client_and_transport_us": 1e6 * wall / n - us["server"], "server_loop_us": us["server"] - us["backend"],
            "backend_us": us["backend"], "physics_us": physics,
            "control_us": None if physics is None else us["backend"] - physics}


def _bench_zmq_echo(steps: int, request_size: int, reply_size: int) -> dict:
    """Round trips between a DEALER here and a ROUTER in a child process, over abstract ipc."""
    import zmq

    from ..bridge.endpoints import private_ipc
    from ..bridge.latency import Histogram

    endpoint = private_ipc("echo")[0]
    ctx = zmq.Context()
    with _child("echo_router", [endpoint, str(reply_size)], "zmq echo process"):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        payload = b"q" * request_size
        # Spin briefly on the reply before sleeping in poll, as RobotClient does (it also yields the
        # CPU each turn, which matters once both ends compute, not on a bare echo: same floor).
        spin = 0.0003
        now = time.time

        def round_trip() -> None:
            sock.send(payload)
            spin_until = now() + spin
            while True:
                try:
                    sock.recv(zmq.NOBLOCK)
                    return
                except zmq.Again:
                    if now() < spin_until:
                        continue
                    if not sock.poll(5000):
                        raise RuntimeError("zmq echo process stopped answering")

        try:
            for _ in range(WARMUP):
                round_trip()
            hist = Histogram()
            t0 = time.perf_counter()
            for _ in range(steps):
                ts = now()
                round_trip()
                hist.add(now() - ts)
            secs = time.perf_counter() - t0
        finally:
            sock.close(0)
            ctx.term()
    return {"round_trips": steps, "seconds": secs, "round_trips_per_s": steps / secs,
            "request_bytes": request_size, "reply_bytes": reply_size, "endpoint": "ipc://@...",
            "rtt": hist.summary(), "p50_us": 1e6 * hist.percentile(50)}


def _bench_anchor(steps: int, python: str, gr_id: str = "FetchReach-v4") -> tuple[dict | None, str | None]:
    """Gymnasium-Robotics' `gr_id` in a child Python; (result, None) or (None, why it did not run)."""
    timeout = 120.0 + 0.05 * (steps + WARMUP)
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run([python, bench_children.path("anchor_fetch"), gr_id, str(steps), str(WARMUP),
                                   str(SEED)],
                                  stdout=subprocess.PIPE, stderr=err, timeout=timeout,
                                  env=anchor_env.child_env(python), check=False)
        except FileNotFoundError:
            return None, f"{python!r} does not exist"
        except subprocess.TimeoutExpired:
            return None, f"{gr_id} did not finish within {timeout:.0f} s"
        err.seek(0)
        stderr = err.read().decode(errors="replace").strip()
    result = None
    for line in reversed(proc.stdout.decode(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except ValueError:
                pass
            break
    if proc.returncode == 0 and result and result.get("steps_per_s", 0) > 0:
        return result, None
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    tail = "\n".join("    " + ln for ln in lines[-6:]) or "    (no error output)"
    why = f"{gr_id} failed in {python} (exit {proc.returncode}):\n{tail}"
    missing = re.search(r"No module named '([\w.]+)'", stderr)
    if missing:
        why = f"module {missing.group(1)!r} is not installed in {python}, so {gr_id} cannot run there"
    elif "AssertionError" in stderr and "mujoco" in stderr.lower():
        why = (f"{gr_id} failed in {python} with an assertion inside mujoco "
               f"(gymnasium-robotics needs mujoco<3.12):\n{tail}")
    return None, why


# -- report ------------------------------------------------------------------------------------
def _clean(obj):
    """NaN -> None so the JSON is strict."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _ms(v) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _rows(res: dict) -> list[list[str]]:
    anchor = res.get("anchor")
    a_rate = anchor["steps_per_s"] if anchor else None

    def ratio(rate):
        return f"{rate / a_rate:.2f}×" if a_rate else "—"

    rows = []
    for key, label in (("ipc", "robot-env ipc"), ("tcp", "robot-env tcp"),
                       ("noop", "robot-env ipc, no-op backend (the Python ceiling)")):
        r = res[key]
        lat = r["latency"]
        rows.append([label, f"{r['steps_per_s']:,.0f}", ratio(r["steps_per_s"]),
                     f"{_ms(lat['rtt']['p50_ms'])} / {_ms(lat['rtt']['p99_ms'])}",
                     f"{_ms(lat['bridge']['p50_ms'])} / {_ms(lat['bridge']['p99_ms'])}"])
    z = res["zmq_echo"]
    rows.append([f"bare zmq round trip (ipc, {z['request_bytes']} B → {z['reply_bytes']} B)",
                 f"{z['round_trips_per_s']:,.0f}", ratio(z["round_trips_per_s"]),
                 f"{_ms(z['rtt']['p50_ms'])} / {_ms(z['rtt']['p99_ms'])}", "—"])
    label = f"{res.get('anchor_id', 'FetchReach-v4')} in-process (anchor)"
    if anchor:
        rows.append([label, f"{a_rate:,.0f}", "1.00×", "—", "—"])
    else:
        rows.append([label, "not run", "—", "—", "—"])
    return rows


HEADER = ["", "steps/s", "vs anchor", "rtt p50 / p99 ms", "bridge p50 / p99 ms"]


def _text_table(rows, header=HEADER) -> str:
    table = [header] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def fmt(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    return "\n".join(lines)


def _markdown_table(rows, header=HEADER) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# -- entry point -------------------------------------------------------------------------------
def run_bench(steps: int = 5000, anchor_python: str | None = None, anchor: bool = True, out=None,
              env_id: str = "robot_env/FetchReach-v0", config: str | None = None) -> int:
    import gymnasium

    import robot_env  # noqa: F401  (registers the env)

    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    actions = _actions(steps)
    config = _config_name(env_id, config)
    print(f"robot-env bench: {steps} timed steps per row after {WARMUP} warm-up steps, fixed random "
          f"actions (seed {SEED}), reset on truncation; Python {platform.python_version()} on "
          f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs; config {config}",
          flush=True)

    res: dict = {"steps": steps, "warmup": WARMUP, "seed": SEED,
                 "python": platform.python_version(), "platform": platform.platform(),
                 "cpus": os.cpu_count(), "gymnasium": gymnasium.__version__,
                 "robot_env": robot_env.__version__, "backend": f"{_backend_name(config)} (spawned, lockstep)",
                 "config": config}
    print("  robot-env over ipc ...", flush=True)
    res["env"], res["anchor_id"] = env_id, anchor_id(env_id)  # a clear error for an unknown id, before anything starts
    res["ipc"], (req_bytes, rep_bytes) = _bench_ipc(actions, env_id, config)
    print("  robot-env over tcp ...", flush=True)
    res["tcp"] = _bench_tcp(actions, env_id, config)
    print("  robot-env over ipc, no-op backend ...", flush=True)
    res["noop"] = _bench_noop(actions, env_id, config)
    print("  robot-env over ipc, timing where a step goes ...", flush=True)
    res["split"] = _bench_split(actions, env_id, config)
    print("  bare zmq round trip ...", flush=True)
    res["zmq_echo"] = _bench_zmq_echo(steps, req_bytes, rep_bytes)

    res["anchor"] = None
    res["anchor_note"] = None
    res["anchor_python"] = None
    if anchor:
        python, res["anchor_note"] = anchor_env.pick(anchor_python)
        res["anchor_python"] = python
        if python:
            print(f"  {res['anchor_id']} in-process ({python}) ...", flush=True)
            res["anchor"], res["anchor_note"] = _bench_anchor(steps, python, res["anchor_id"])
    else:
        res["anchor_note"] = "skipped (--no-anchor)"

    a = res["anchor"]
    res["ratio_vs_anchor"] = None if not a else {
        "ipc": res["ipc"]["steps_per_s"] / a["steps_per_s"],
        "tcp": res["tcp"]["steps_per_s"] / a["steps_per_s"],
        "noop": res["noop"]["steps_per_s"] / a["steps_per_s"],
        "zmq_echo": res["zmq_echo"]["round_trips_per_s"] / a["steps_per_s"]}

    rows = _rows(res)
    print()
    print(_text_table(rows))
    print()
    ipc_rtt = res["ipc"]["latency"]["rtt"]["p50_ms"] * 1e3
    floor = res["zmq_echo"]["p50_us"]
    print(f"transport floor: a bare zmq round trip takes {floor:.0f} µs p50, "
          f"{floor / ipc_rtt:.0%} of the {ipc_rtt:.0f} µs p50 round trip of an ipc env step.")
    noop, ipc = res["noop"]["steps_per_s"], res["ipc"]["steps_per_s"]
    print(f"Python ceiling: with a backend that does nothing the env steps {noop:,.0f}/s; the "
          f"{res['backend'].split()[0]} "
          f"simulator adds {1e6 / ipc - 1e6 / noop:.0f} µs per step to the {1e6 / noop:.0f} µs the bridge "
          "itself costs.")
    print(_split_text(res))
    if "note" in res["tcp"]:
        print(f"note: {res['tcp']['note']}")
    if a:
        print(f"anchor: Gymnasium-Robotics {a['gymnasium_robotics']}, mujoco {a['mujoco']}, "
              f"Python {a['python']} ({a['executable']})")
    elif anchor:
        print(f"note: anchor not run, so no ratio: {res['anchor_note']}\n"
              f"  to include it: {ANCHOR_HINT}")
    _markdown_and_json(rows, HEADER, res, out)
    return 0


def _split_text(res: dict) -> str:
    """The time of one step, part by part, ours and the anchor's, and what the anchor's speed times
    1.5 would leave."""
    sp = res["split"]
    parts = [f"env and transport {sp['client_and_transport_us']:.0f}",
             f"server loop and protocol {sp['server_loop_us']:.0f}"]
    if sp["physics_us"] is None:
        parts.append(f"backend {sp['backend_us']:.0f}")
    else:
        parts += [f"control (safety layer, IK, limiter, servo trajectory, state) {sp['control_us']:.0f}",
                  f"MuJoCo mj_step {sp['physics_us']:.0f}"]
    text = f"where a step goes (µs, means): {sp['step_us']:.0f} = " + " + ".join(parts)
    a = res.get("anchor")
    if a and a.get("physics_seconds") is not None:
        step, phys = 1e6 * a["seconds"] / a["steps"], 1e6 * a["physics_seconds"] / a["steps"]
        text += (f"\n  anchor: {step:.0f} = MuJoCo mj_step {phys:.0f} + Python and the rest {step - phys:.0f}; "
                 f"1.5x its speed is {step / 1.5:.0f} µs a step")
    return text


def _markdown_and_json(rows, header, res: dict, out) -> None:
    """The report's tail, shared by every bench: the table as Markdown, and the results as JSON to `out`."""
    print()
    print("Markdown:")
    print()
    print(_markdown_table(rows, header))
    if out:
        with open(out, "w") as fh:
            json.dump(_clean(res), fh, indent=2)
            fh.write("\n")
        print(f"\nwrote {out}")
