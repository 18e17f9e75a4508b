"""The robot server with the config's real backend, timing where each request's time goes: the whole
request in the server (`_on_request`: decode, checks, backend, state, encode, send), the backend's calls
(safety layer, IK, limiter, plant, state), and the physics inside them when the backend can tell
(`physics_seconds()`: MuJoCo's own timer). `robot-env bench` sets these against the client's wall
time of the same requests. Writes the totals as JSON to OUT when stdin closes, then exits.
Usage: python -m robot_env.apps.bench_children.timed_server ENDPOINT STREAM_ENDPOINT OUT CONFIG [SCENE]"""
import json
import sys
import time

from robot_env.backends.registry import backend_class
from robot_env.bridge.server import RobotServer
from robot_env.config import backend_kwargs

from .noop_server import config_from_args

_clock = time.perf_counter
TIMED = ("reset", "apply", "advance", "state", "render")


def timed_backend(cfg: dict, totals: dict):
    """The config's backend, each call in `TIMED` adding its duration to totals["backend"]."""
    base = backend_class(cfg["server"]["backend"])

    def timed(name):
        inner = getattr(base, name)

        def call(self, *args, **kwargs):
            t0 = _clock()
            try:
                return inner(self, *args, **kwargs)
            finally:
                totals["backend"] += _clock() - t0
        return call

    cls = type(f"Timed{base.__name__}", (base,), {name: timed(name) for name in TIMED if hasattr(base, name)})
    return cls(**backend_kwargs(cfg))


class TimedServer(RobotServer):
    def __init__(self, backend, *args, totals: dict, **kwargs):
        self.totals = totals
        super().__init__(backend, *args, **kwargs)

    def _on_request(self, frames: list) -> None:
        t0 = _clock()
        try:
            super()._on_request(frames)
        finally:
            self.totals["server"] += _clock() - t0
            self.totals["requests"] += 1


if __name__ == "__main__":
    endpoint, stream, out = sys.argv[1:4]
    totals = {"server": 0.0, "backend": 0.0, "requests": 0}
    backend = timed_backend(config_from_args(sys.argv[4:]), totals)
    server = TimedServer(backend, endpoint, stream, watch_fd=0, exit_on_close=True, totals=totals)
    print("READY", flush=True)
    try:
        server.serve_forever()
    finally:
        physics = getattr(backend, "physics_seconds", None)
        totals["physics"] = physics() if physics else None
        with open(out, "w") as fh:
            json.dump(totals, fh)
