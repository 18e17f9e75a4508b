"""The `robot-env` command: serve, demo, bench."""
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
