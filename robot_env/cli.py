"""The `robot-env` command: serve, demo, bench, emulate-bus, calibrate, setup-servos."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys


def _serve(args) -> int:
    from . import config
    from .server import build_server

    cfg = config.load(json.loads(args.config_json) if args.config_json else args.config)
    if args.clock:
        cfg["server"]["clock"] = args.clock
    if args.serial_port:
        cfg["server.dynamixel"]["serial_port"] = args.serial_port
    server = build_server(cfg, endpoint=args.endpoint, stream_endpoint=args.stream_endpoint,
                          exit_on_close=args.exit_on_close, watch_fd=args.watch_fd)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    if args.ready:
        print(f"READY {server.endpoint} {server.stream_endpoint}", flush=True)
    else:
        print(f"robot-env server: {server.backend.kind} backend, {server.clock} clock, "
              f"period {server.period:g} s\n  requests on {server.endpoint}\n  state stream on "
              f"{server.stream_endpoint}\n  config {cfg['source']}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _demo(args) -> int:
    from .demo import run_demo
    return run_demo(config=args.config, episodes=args.episodes, seed=args.seed)


def _bench(args) -> int:
    from .bench import run_bench
    return run_bench(steps=args.steps, anchor_python=args.anchor_python, anchor=not args.no_anchor,
                     out=args.json)


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
    from . import config
    cfg = config.load(args.config)
    dyn = cfg["server.dynamixel"]
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
    p.add_argument("--exit-on-close", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--watch-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo", help="scripted reaching agent through the Gymnasium env (embedded simulator)")
    p.add_argument("--config", default=None, help="config name or path (default: embedded simulator)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)

    p = sub.add_parser("bench", help="env steps/s and latency over ipc and tcp, next to FetchReach-v4")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--anchor-python", help="a Python with gymnasium-robotics and mujoco<3.12 for the anchor")
    p.add_argument("--no-anchor", action="store_true", help="skip the Gymnasium-Robotics anchor")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_bench)

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

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        return args.func(args)
    except Exception as exc:
        from .errors import RobotEnvError
        if isinstance(exc, RobotEnvError):
            print(f"robot-env: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
