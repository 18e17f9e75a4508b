"""The `robot-env` command: serve, keys, demo, train, run, bench, anchor-env, emulate-bus, calibrate,
setup-servos, teleop, web, record, replay, plot, export, view, cameras."""
from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys


def _serve(args) -> int:
    import os

    from .. import config
    from ..bridge.server import build_server

    cfg = config.load(json.loads(args.config_json) if args.config_json else args.config)
    if args.clock:
        cfg["server"]["clock"] = args.clock
    if args.serial_port:
        cfg = config.load(cfg, config.serial_port_override(cfg, args.serial_port))
    owner = None
    if args.owner_from_watch_fd and args.watch_fd is not None:
        # The spawning session hands us its secret on the pipe we watch (not argv or environ, which
        # other processes can read): only it may close this server.
        owner = os.read(args.watch_fd, 256).decode(errors="replace").strip() or None
        if owner is None:
            return 0  # the parent is gone before it could say who it is
    server = build_server(cfg, endpoint=args.endpoint, stream_endpoint=args.stream_endpoint,
                          exit_on_close=not args.keep_on_close, watch_fd=args.watch_fd, owner=owner,
                          allow_client_keys=args.allow_client_key or ())
    # SIGTERM / Ctrl-C: park (hardware: the rest pose, while still serving the e-stop), then exit.
    # A second signal exits at once, leaving torque on (never drops the arm).
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    server.wake_fd = wake_r
    signals = []

    def stop(signum, frame):
        signals.append(signum)
        if len(signals) > 1:
            raise SystemExit(0)
        server.request_shutdown(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.ready:
        print(f"READY {server.endpoint} {server.stream_endpoint}", flush=True)
    else:
        print(f"robot-env server: {server.backend.kind} backend, {server.clock} clock, "
              f"period {server.period:g} s\n  requests on {server.endpoint}\n  state stream on "
              f"{server.stream_endpoint}\n  config {cfg['source']}", flush=True)
        if server.guard is not None:
            print(f"  CurveZMQ on: {len(server.guard.keys.allowed)} allowed client key(s), server public key "
                  f"{server.guard.keys.public.decode()}", flush=True)
        if server.estopped:
            print(f"  E-STOP LATCHED since a previous run ({server.latch.path}): clear_estop to move", flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


def _keys(args) -> int:
    from ..bridge.security import create_keypair

    public, secret = create_keypair(args.out, args.name, force=args.force)
    print(f"public key  {public}\nsecret key  {secret}  (mode 0600: keep it on this machine)\n"
          f"A server lists client .key files in [server.security] allowed_clients and names its own "
          f".key_secret as server_secret_key;\na client names its .key_secret as [client] client_secret_key "
          f"and the server's .key as server_public_key.")
    return 0


def _env_config(args) -> None:
    """No --config: the config the env id is registered with (the object tasks' is `mujoco`)."""
    if getattr(args, "config", "") is None and getattr(args, "env", None):
        from ..envs.registration import entry
        args.config = entry(args.env).config


def _demo(args) -> int:
    if args.lengths:
        from .demo import run_lengths
        return run_lengths(args.env, args.lengths, config=args.config, episodes=args.episodes, seed=args.seed)
    from .demo import run_demo
    return run_demo(config=args.config, episodes=args.episodes, seed=args.seed, env_id=args.env, record=args.record,
                    cameras=args.camera)


def _bench(args) -> int:
    if args.cameras:
        from .bench_cameras import run_bench_cameras
        return run_bench_cameras(steps=args.camera_steps, out=args.json)
    if args.vector:
        from .bench_vector import run_bench_vector
        return run_bench_vector(num_envs=args.vector, steps=args.vector_steps, singles=args.singles, out=args.json,
                                env_id=args.env)
    if args.train:
        from .bench_train import run_bench_train
        return run_bench_train(steps=args.train_steps, seed=args.seed, anchor_python=args.anchor_python,
                               anchor=not args.no_anchor, out=args.json)
    from .bench import run_bench
    return run_bench(steps=args.steps, anchor_python=args.anchor_python, anchor=not args.no_anchor,
                     out=args.json, env_id=args.env, config=args.config)


def _anchor_env(args) -> int:
    from .anchor_env import run_anchor_env_cli
    return run_anchor_env_cli(args)


def _train(args) -> int:
    if args.ray:
        from ..training.ray_servers import run_ray_train_cli
        return run_ray_train_cli(args)
    if args.insecure or args.ray_servers is not None or args.ray_cpus is not None or args.vec_env is not None:
        print("robot-env: error: --ray-servers, --ray-cpus, --insecure and --vec-env go with --ray",
              file=sys.stderr)
        return 2
    from ..training.train import run_train_cli
    return run_train_cli(args)


def _run(args) -> int:
    from ..training.train import run_run_cli
    return run_run_cli(args)


def _emulate_bus(args) -> int:
    """Serve an emulated servo bus on a pty until SIGTERM/SIGINT; the device path is line one."""
    import os
    import select
    import threading

    from simulators.servo_bus import ServoBusEmulator, serve_control, servos_from_config

    servos, initial, baud = servos_from_config(args.config)
    emu = ServoBusEmulator(servos, baud=args.baud or baud, timing=args.timing, link=args.link,
                           initial_positions=initial)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.watch_fd is not None:  # exit when the parent closes the pipe or dies
        parent = os.getppid()

        def watch():
            while not stop.is_set():
                ready, _, _ = select.select([args.watch_fd], [], [], 0.5)
                if (ready and not os.read(args.watch_fd, 4096)) or os.getppid() != parent:
                    stop.set()

        threading.Thread(target=watch, name="watch-parent", daemon=True).start()
    path = emu.start()
    try:
        print(path, flush=True)
        logging.getLogger("robot_env.cli").info(
            "emulating %d servo(s) (ids %s) at %d baud%s on %s", len(servos),
            ", ".join(map(str, sorted(servos))), emu.baud, ", wire timing" if args.timing else "", path)
        if args.control:
            serve_control(emu, args.control, stop)
        else:
            while not stop.wait(0.5):
                pass
    finally:
        emu.stop()
    return 0


def _dynamixel_settings(args):
    from .. import config
    cfg = config.load(args.config)
    dyn = cfg.get("server.dynamixel")
    if dyn is None:
        from ..errors import ConfigError
        raise ConfigError(f"{cfg['source']}: the servo tools need a config of the 'dynamixel' backend, "
                          f"not {cfg['server']['backend']!r}")
    return dyn["serial_port"] if not args.serial_port else args.serial_port, dyn


def _calibrate(args) -> int:
    from drivers import calibrate
    from drivers.bus import DynamixelBus
    from drivers.calibration import load_calibration

    port, dyn = _dynamixel_settings(args)
    path = args.out or dyn["calibration"]
    cal = load_calibration(dyn["calibration"])
    with DynamixelBus(port, dyn["baud"]) as bus:
        values = calibrate.record(bus, cal)
    calibrate.update_file(path, values)
    print(f"calibration written to {path} (previous version kept as {path}.bak)")
    return 0


def _setup_servos(args) -> int:
    from drivers import setup_servos
    from drivers.calibration import load_calibration

    port, dyn = _dynamixel_settings(args)
    cal = load_calibration(dyn["calibration"])
    setup_servos.run(port, cal, args.baud or dyn["baud"], only=args.joint or None)
    return 0


def _teleop(args) -> int:
    from .teleop import run_teleop
    return run_teleop(args.config, speed=args.speed, window=args.jog_window, first_window=args.first_window,
                      timeout=args.timeout, record=args.record, cameras=args.camera, view=args.view)


def _web(args) -> int:
    from .web import run_web
    return run_web(args.config, endpoint=args.endpoint, host=args.host, port=args.port, token=args.token,
                   fps=args.fps, speed=args.speed, hold_timeout=args.hold_timeout)


def _record(args) -> int:
    """Record a running server's stream until --duration, Ctrl-C/SIGTERM, or the server is lost."""
    import threading
    import time

    from .. import config
    from ..recording import Recorder

    endpoint = args.endpoint
    if not endpoint:
        cfg = config.load(args.config)
        endpoint = cfg["client"]["endpoint"]
        if not endpoint:
            print(f"robot-env: error: config {cfg['source']} names no [client] endpoint, and recording "
                  "listens to a server that is already running (someone else drives it). Start one, e.g. "
                  f"`robot-env serve --config {args.config} --endpoint tcp://127.0.0.1:5555`, then record with "
                  "`--endpoint tcp://127.0.0.1:5555` or a config whose [client] endpoint points there. To "
                  "record what you drive yourself: `robot-env teleop --record FILE`, or in Python "
                  "`Recorder(robot, FILE)` / `RecordEpisodes(env, record=FILE)`.", file=sys.stderr)
            return 2
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    keys = None
    if not args.endpoint:
        try:  # CurveZMQ: the [client] keys of the config, when it names some
            from ..bridge.security import client_keys
            keys = client_keys(cfg)
        except ImportError:
            pass
    rec = Recorder(endpoint, args.out, flush_interval=args.flush_interval, keys=keys,
                   cameras=args.camera or (), camera_rate=args.camera_rate).start()
    print(f"RECORDING {endpoint} -> {args.out} ({rec.info.get('backend')} backend, {rec.info.get('clock')} "
          "clock); Ctrl-C stops", flush=True)
    start = time.monotonic()
    last_probe = time.monotonic()
    reason, code, sync = "stopped", 0, True
    while not stop.wait(0.1):
        now = time.monotonic()
        if args.duration is not None and now - start >= args.duration:
            reason = "duration reached"
            break
        if not rec.running:
            reason, code = f"recorder failed: {rec.error}", 1
            break
        # A lockstep server is quiet between requests, a realtime one publishes every period:
        # after a quiet spell, ask whether it is still there.
        quiet = time.time() - (rec.last_receive or 0.0)
        if quiet > args.server_timeout and now - last_probe > args.server_timeout:
            last_probe = now
            if not rec.ping():
                reason, code, sync = "server lost", 3, False
                print(f"robot-env: error: the server at {endpoint} stopped answering; the recording up to "
                      f"that point is kept in {args.out}", file=sys.stderr)
                break
    stats = rec.stop(reason, sync=sync)
    print(f"recorded {stats} ({reason})", flush=True)
    for name, fs in rec.frame_stats.items():
        print(f"camera {name} at {rec.camera_rate:g} Hz: {fs}", flush=True)
    return code


def _cameras(args) -> int:
    """What each camera of the config delivers (exit 1 when one does not)."""
    from drivers.camera_probe import probe, table
    rows = probe(args.config, seconds=args.seconds)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(table(rows))
    else:
        print("the config names no cameras: add [server.dynamixel.cameras.<name>] tables (see README)")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


REPLAY_EXIT = ("Exit status: 0 every recorded command was replayed, with its recorded timing; 3 replayed, "
               "with problems (invalid records skipped, a damaged or unclosed file, a hole in the command "
               "numbers, waits cut to --max-wait or a step back in recorded time, an e-stop); 2 nothing "
               "replayed or the replay failed (not an MCAP recording, empty or cut before any record, no valid "
               "command, a config or robot that does not fit the recording, a command the server refused).")
PLOT_EXIT = ("Exit status: 0 drawn from an intact file; 3 drawn from what is valid, with warnings (invalid "
             "records skipped, a damaged or unclosed file); 2 nothing drawn (not an MCAP recording, empty or "
             "cut before any record, fewer than 2 valid states, no such robot).")


def _replay(args) -> int:
    from ..recording import replay

    result = replay(args.file, args.config, speed=args.speed, reset=not args.no_reset, record=args.record,
                    through_gaps=args.through_gaps, max_wait=args.max_wait,
                    echo=lambda text: print(text, file=sys.stderr, flush=True))
    print(result, flush=True)
    if result.recording is not None:
        print(f"replay recorded: {result.recording}")
    return 3 if (result.problems or result.stopped) else 0


def _plot(args) -> int:
    from ..recording import read_recording

    rec = read_recording(args.file)
    written = []
    if args.rrd:  # nothing to convert: an error, no warnings first
        from ..recording.rrd import recording_to_rrd
        written.append(recording_to_rrd(rec, args.rrd, robot=args.robot))
    if args.out or not args.rrd:
        from ..recording.plot import plot_recording
        written.append(f"wrote {plot_recording(rec, args.out, robot=args.robot)}")
    for problem in rec.problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(rec.report().splitlines()[0])
    for line in written:
        print(line)
    return 3 if rec.problems else 0


def _view(args) -> int:
    """Stream a running server to Rerun until --duration, Ctrl-C/SIGTERM, or the server is lost."""
    import threading

    from .view import Sinks, run_view

    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: stop.set())
    sinks = Sinks(save=args.save, web=args.web, spawn=args.spawn or not (args.web or args.save), bind=args.bind,
                  grpc_port=args.grpc_port, web_port=args.web_port)
    return run_view(config=args.config, endpoint=args.endpoint, sinks=sinks, duration=args.duration, rate=args.rate,
                    cameras=args.camera, camera_rate=args.camera_rate, robot=args.robot,
                    server_timeout=args.server_timeout, stop=stop,
                    echo=lambda *a, **k: print(*a, **k, flush=True))


def _seconds(text: str) -> float:
    """argparse type: a number of seconds >= 0 (``inf``: no cap)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


DEFAULT_ENV = "robot_env/FetchReach-v0"  # the ids are envs.registration.ENV_IDS (checked when used)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="robot-env", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("serve", help="run a robot server for the backend a config names")
    p.add_argument("--config", default="sim", help="shipped config name (sim, ...) or a TOML path")
    p.add_argument("--config-json", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help="request endpoint (default: the config's, or a private ipc one)")
    p.add_argument("--stream-endpoint", help="state stream endpoint (default: next to --endpoint)")
    p.add_argument("--clock", choices=("lockstep", "realtime"), help="override the config's clock")
    p.add_argument("--serial-port", help="hardware backends: the servo bus device (overrides the config)")
    p.add_argument("--ready", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep-on-close", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--watch-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--owner-from-watch-fd", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--allow-client-key", action="append", help=argparse.SUPPRESS)
    p.set_defaults(func=_serve)

    p = sub.add_parser("keys", help="create a CurveZMQ key pair (NAME.key public, NAME.key_secret 0600)")
    p.add_argument("--out", required=True, help="directory for the key files (created if missing, mode 0700)")
    p.add_argument("--name", default="robot-env", help="file name stem (default: robot-env)")
    p.add_argument("--force", action="store_true", help="replace existing key files of that name")
    p.set_defaults(func=_keys)

    p = sub.add_parser("demo", help="scripted agent through the Gymnasium env: reach, push, slide, pick and place")
    p.add_argument("--env", default=DEFAULT_ENV, help=f"env id (default {DEFAULT_ENV})")
    p.add_argument("--config", default=None,
                   help="config name or path (default: the env's own: the embedded simulator, mujoco for object tasks)")
    p.add_argument("--episodes", type=int, default=50, help="episodes, seeded --seed, --seed + 1, ... (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lengths", type=lambda v: [int(x) for x in v.split(",")], default=None, metavar="L1,L2,...",
                   help="instead: the success rate at each of these episode lengths (one run of the longest)")
    p.add_argument("--record", metavar="FILE", help="also record the episodes to this MCAP file (`robot-env export` "
                   "makes a LeRobot dataset of it)")
    p.add_argument("--camera", action="append", metavar="NAME", help="with --record: record this camera's frames, "
                   "one per step (repeatable)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("train", help="SAC+HER on the simulator until eval success >= 95%%; writes a policy bundle")
    p.add_argument("--env", default=DEFAULT_ENV, help=f"env id (default {DEFAULT_ENV})")
    p.add_argument("--config", default=None, help="config name or path (default: the embedded simulator)")
    p.add_argument("--steps", type=int, default=30000, help="most training steps (stops early at --threshold)")
    p.add_argument("--out", default="policy", help="bundle directory to write (default: ./policy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=1000, help="evaluate every N training steps")
    p.add_argument("--eval-episodes", type=int, default=20, help="episodes per evaluation (separate env)")
    p.add_argument("--threshold", type=float, default=0.95, help="stop once eval success reaches this")
    p.add_argument("--sim2real", action="store_true",
                   help="action latency, joint noise and speed randomization from [server.kinematic]")
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="do not normalize observations (default: VecNormalize, stats saved in the bundle)")
    p.add_argument("--time-feature", action="store_true", help="append the remaining-time feature (rl-zoo)")
    p.add_argument("--demos", type=int, default=0, metavar="N",
                   help="seed the replay buffer with N episodes of the task's scripted agent (robot-env demo)")
    p.add_argument("--num-envs", type=int, default=1,
                   help="robots trained on at once, all behind one batched simulator server (default 1)")
    p.add_argument("--ray", metavar="ADDRESS", help="scale out: simulator servers as Ray actors on this cluster "
                   "(auto: the running one; local: start one here), env workers connect over tcp")
    p.add_argument("--ray-servers", type=int, metavar="K",
                   help="--ray: env workers, each on its own server (2; +1 server evaluates)")
    p.add_argument("--ray-cpus", type=float, metavar="C", help="--ray: Ray CPUs each server reserves (1)")
    p.add_argument("--insecure", action="store_true",
                   help="--ray: servers without CurveZMQ keys (private cluster networks only)")
    p.add_argument("--vec-env", choices=("dummy", "subproc"),
                   help="--ray: step the env workers in turn here (dummy) or in a process each (subproc)")
    p.set_defaults(func=_train)

    p = sub.add_parser("run", help="run a policy bundle on the robot a config names; success and latency")
    p.add_argument("--policy", required=True, help="bundle directory from `robot-env train`")
    p.add_argument("--config", default=None, help="config name or path (default: the embedded simulator)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serial-port", help="hardware backends: the servo bus device (overrides the config)")
    p.set_defaults(func=_run)

    p = sub.add_parser("bench", help="env steps/s and latency over ipc and tcp, next to FetchReach-v4")
    p.add_argument("--env", default=DEFAULT_ENV, help=f"env id (default {DEFAULT_ENV})")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--config", help="config name or path the env's server runs (default: the env's own), "
                   "e.g. one with another [server.mujoco] timestep")
    p.add_argument("--train", action="store_true",
                   help="instead: wall-clock time to 95%% eval success, SAC+HER here vs on FetchReach-v4")
    p.add_argument("--train-steps", type=int, default=30000, help="--train: most steps per side")
    p.add_argument("--vector", type=int, metavar="N",
                   help="instead: robot-steps/s of N robots on one batched server vs N single-env servers")
    p.add_argument("--vector-steps", type=int, default=1000, help="--vector: timed vector steps per row")
    p.add_argument("--singles", type=int, help="--vector: single-env servers in the comparison row (default N)")
    p.add_argument("--cameras", action="store_true",
                   help="instead: what one camera frame adds to a MuJoCo step (84, 128, 480 px; shadows, antialias)")
    p.add_argument("--camera-steps", type=int, default=300, help="--cameras: steps with and without a frame per row")
    p.add_argument("--seed", type=int, default=0, help="--train: training seed (both sides)")
    p.add_argument("--anchor-python", help="a Python with gymnasium-robotics and mujoco<3.12 for the anchor "
                   "(default: this one if it has them, else the venv `robot-env anchor-env` builds)")
    p.add_argument("--no-anchor", action="store_true", help="skip the Gymnasium-Robotics anchor")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_bench)

    p = sub.add_parser("anchor-env", help="build (or reuse) the venv the benchmarks' Gymnasium-Robotics anchor runs "
                       "in (gymnasium-robotics, mujoco<3.12); prints its python",
                       description="Gymnasium-Robotics' Fetch envs fail on mujoco>=3.12, robot-env's MuJoCo backend "
                       "uses the current MuJoCo: the anchor of `robot-env bench` runs in a venv of its own. This "
                       "builds it, or reuses it when it already has what it needs, and prints its python (the "
                       "only line on stdout). `robot-env bench` finds it at the default place by itself.")
    p.add_argument("--dir", help="where the venv goes (default ~/.cache/robot-env/anchor-py<major>.<minor>, "
                   "$XDG_CACHE_HOME if set)")
    p.add_argument("--train", action="store_true", help="also torch and Stable-Baselines3 for `bench --train`, "
                   "pinned to the versions this Python has")
    p.add_argument("--python", help="the interpreter to build the venv from (default: this one)")
    p.set_defaults(func=_anchor_env)

    p = sub.add_parser("emulate-bus", help="serve an emulated Dynamixel servo bus on a pty (prints its path)")
    p.add_argument("--config", required=True,
                   help="config name or TOML path: servos from its [server.dynamixel] calibration, or [servos]")
    p.add_argument("--link", help="also make this stable symlink to the pty (re-pointed on reopen)")
    p.add_argument("--timing", action="store_true", help="return delays and baud-rate pacing, as a real bus")
    p.add_argument("--baud", type=int, help="the servos' baud rate (default: the config's, else 1000000)")
    p.add_argument("--control", help="zmq endpoint (ipc://...) taking fault-injection requests")
    p.add_argument("--watch-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=_emulate_bus)

    p = sub.add_parser("calibrate", help="record zero offsets and joint ranges (torque off, move by hand)")
    p.add_argument("--config", default="fetch_dynamixel", help="hardware config name or path")
    p.add_argument("--serial-port", help="the servo bus device (overrides the config)")
    p.add_argument("--out", help="write the calibration here instead of updating the config's file")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("setup-servos", help="assign IDs and the bus baud rate to fresh servos, one at a time")
    p.add_argument("--config", default="fetch_dynamixel", help="hardware config name or path")
    p.add_argument("--serial-port", help="the servo bus device (overrides the config)")
    p.add_argument("--baud", type=int, help="baud rate to set (default: the config's)")
    p.add_argument("--joint", action="append", help="only this joint (repeatable)")
    p.set_defaults(func=_setup_servos)

    p = sub.add_parser("teleop", help="drive the robot from the keyboard in a terminal (jog keys, e-stop, live state)")
    p.add_argument("--config", default=None,
                   help="config name or TOML path (default: an embedded simulator on the realtime clock)")
    p.add_argument("--speed", type=float, default=0.5, help="initial speed scale: 0.1, 0.25, 0.5 or 1.0 (+/- keys)")
    p.add_argument("--jog-window", type=float, default=0.25,
                   help="s a key repeat keeps its axis moving (the terminal's auto-repeat refreshes it)")
    p.add_argument("--first-window", type=float, default=0.5,
                   help="s a first key press moves (bridges the terminal's auto-repeat delay)")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="s without a reply before teleop reports the server lost and exits")
    p.add_argument("--record", metavar="FILE",
                   help="also record the session (states, commands, stamps) to this MCAP file")
    p.add_argument("--camera", action="append", metavar="NAME",
                   help="with --record: also record this camera's frames at the control rate (repeatable)")
    p.add_argument("--view", nargs="?", const="native", metavar="native|web|FILE.rrd",
                   help="also show the session in Rerun: a native viewer (default), the web viewer, or an .rrd file")
    p.set_defaults(func=_teleop)

    p = sub.add_parser("web", help="a control page in the browser: cameras, live state, hold-to-run jogs, e-stop")
    p.add_argument("--config", default=None,
                   help="config name or TOML path (default: an embedded simulator on the realtime clock)")
    p.add_argument("--endpoint", help="a running robot server's request endpoint (instead of the config's)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1; any other needs the token)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (8080)")
    p.add_argument("--token", help="login token (default: none on loopback, a fresh one printed otherwise)")
    p.add_argument("--fps", type=float, default=12.0, help="camera frames per second sent to the pages (12; 0: none)")
    p.add_argument("--speed", type=float, default=0.5, help="initial speed scale, 0.05..1 (0.5)")
    p.add_argument("--hold-timeout", type=float, default=0.3,
                   help="s a held axis moves without the page saying it is still held (0.3)")
    p.set_defaults(func=_web)

    p = sub.add_parser("record", help="record a running server's states and applied commands to an MCAP file")
    p.add_argument("--config", default="sim", help="config whose [client] endpoint names the server to record")
    p.add_argument("--endpoint", help="the server's request endpoint (instead of a config)")
    p.add_argument("--out", required=True, help="the MCAP file to write (Foxglove, `mcap` tools open it)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: Ctrl-C or SIGTERM)")
    p.add_argument("--flush-interval", type=float, default=0.2,
                   help="close and flush a chunk this often, s: the most a killed recorder loses (0.2)")
    p.add_argument("--server-timeout", type=float, default=2.0,
                   help="after this long without a message, check the server is alive (s, 2)")
    p.add_argument("--camera", action="append", metavar="NAME",
                   help="also record this camera's frames on /camera/NAME (repeatable; the server must offer it)")
    p.add_argument("--camera-rate", type=_positive, metavar="HZ",
                   help="frames per second asked of each --camera (default: the server's control rate); missed "
                   "ones are counted. On a lockstep server record the env's own frames (demo --record)")
    p.set_defaults(func=_record)

    p = sub.add_parser("cameras", help="open each camera the config names; what it delivers (size, fps) or why not")
    p.add_argument("--config", default="fetch_dynamixel", help="config name or path ([server.dynamixel.cameras.*])")
    p.add_argument("--seconds", type=_positive, default=2.0, help="how long to watch each camera (2 s)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=_cameras)

    p = sub.add_parser("replay", help="re-send a recording's commands with their timing, on any backend",
                       description="Re-send a recording's commands with their recorded timing through the normal "
                       "client. Records that fail the recording's schema (commands: the server's own rules) are "
                       "skipped and counted, never sent. " + REPLAY_EXIT)
    p.add_argument("file", help="a recording (MCAP) from `robot-env record`, Recorder or RecordEpisodes")
    p.add_argument("--config", default=None,
                   help="config name or path (default: an embedded simulator on the recording's clock)")
    p.add_argument("--speed", type=_positive, default=1.0, help="time scale of the waits between commands (1.0)")
    p.add_argument("--max-wait", type=_seconds, default=5.0, metavar="SECONDS",
                   help="the longest wait between two commands (5 s): a longer recorded gap (a pause, a clock "
                   "jump) is cut to it and reported; inf keeps every pause")
    p.add_argument("--no-reset", action="store_true",
                   help="start from where the robot is, not from the recorded start pose")
    p.add_argument("--record", help="also record the replay to this MCAP file")
    p.add_argument("--through-gaps", action="store_true",
                   help="go on past commands missing from the recording (default: stop before the hole)")
    p.set_defaults(func=_replay)

    p = sub.add_parser("export", help="recordings (MCAP) to a LeRobot dataset (v3.0: parquet, mp4, meta)",
                       description="Cut recordings into episodes (at resets), resample them onto an fps grid "
                       "(each frame the latest state and image at or before it) and write a LeRobotDataset v3.0: "
                       "observation.state and action (the accepted joint targets after each frame), one video per "
                       "camera. " + __import__("robot_env.apps.export", fromlist=["EXIT"]).EXIT)
    p.add_argument("files", nargs="+", metavar="FILE.mcap", help="recordings, exported in this order")
    p.add_argument("--lerobot", required=True, metavar="DIR", help="the dataset directory to create (must not exist)")
    p.add_argument("--fps", type=int, help="frames per second (default: the recording's control rate)")
    p.add_argument("--task", help="the task text of every episode (default: 'robot-env demonstration')")
    p.add_argument("--camera", action="append", metavar="NAME",
                   help="a camera to export (repeatable; default: every RGB camera recorded)")
    p.add_argument("--no-cameras", action="store_true", help="no images: state and action only")
    p.add_argument("--vcodec", help="video encoder (default: libsvtav1 where PyAV has it, else libx264)")
    p.set_defaults(func=lambda a: __import__("robot_env.apps.export", fromlist=["run_export"]).run_export(
        a.files, a.lerobot, a.fps, a.task, [] if a.no_cameras else a.camera, a.vcodec))

    p = sub.add_parser("plot", help="PNG of a recording: joint trajectories vs targets, latency distributions",
                       description="Draw a recording's joint trajectories against their targets and its latency "
                       "distributions to a PNG, from the records that pass the recording's schema (the others "
                       "are skipped and counted in a warning). " + PLOT_EXIT)
    p.add_argument("file", help="a recording (MCAP)")
    p.add_argument("--out", help="the PNG to write (default: FILE with .png)")
    p.add_argument("--robot", type=int, default=0, help="a batched server's recording: which robot to draw (0)")
    p.add_argument("--rrd", metavar="OUT.rrd", help="instead (or with --out, as well): convert the recording to a "
                   "Rerun file on its own timestamps (joints, 3D scene, camera frames, mode, latency)")
    p.set_defaults(func=_plot)

    p = sub.add_parser("view", help="stream a running server to a Rerun viewer (joints vs targets, 3D, cameras, "
                       "mode, latency); an observer: no lease, moves nothing",
                       description="Watch a running server in Rerun: a native viewer where there is a display, "
                       "the browser viewer (--web), or an .rrd file (--save, headless). Exit status: 0 stopped "
                       "(--duration, Ctrl-C); 3 the server stopped answering (what was received is kept); 2 "
                       "nothing viewed (no server, no display, bad arguments).")
    p.add_argument("--config", default="sim", help="config whose [client] endpoint names the server to watch")
    p.add_argument("--endpoint", help="the server's request endpoint (instead of a config)")
    p.add_argument("--web", action="store_true", help="serve Rerun's web viewer (prints the URL to open)")
    p.add_argument("--save", metavar="FILE.rrd", help="write the view to an .rrd file (no viewer needed)")
    p.add_argument("--spawn", action="store_true", help="a native viewer as well as --save")
    p.add_argument("--duration", type=_seconds, help="stop after this many seconds (default: Ctrl-C or SIGTERM)")
    p.add_argument("--rate", type=_positive, default=50.0, help="most states logged per second (50): the latest wins")
    p.add_argument("--camera", action="append", help="show this camera (repeatable; default: every one announced)")
    p.add_argument("--camera-rate", type=_seconds, default=10.0, help="camera frame requests per second (10; 0: none)")
    p.add_argument("--robot", type=int, default=0, help="a batched server: which robot to show (0)")
    p.add_argument("--bind", default="127.0.0.1", help="--web: the address the data's gRPC server listens on")
    p.add_argument("--grpc-port", type=int, default=9876, help="--web / native viewer: the gRPC port (9876)")
    p.add_argument("--web-port", type=int, default=9090, help="--web: the web viewer's HTTP port (9090)")
    p.add_argument("--server-timeout", type=_positive, default=2.0,
                   help="after this long without a message, check the server is alive (s, 2)")
    p.set_defaults(func=_view)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        _env_config(args)
        return args.func(args)
    except Exception as exc:
        from ..errors import RobotEnvError
        if isinstance(exc, RobotEnvError):
            print(f"robot-env: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
