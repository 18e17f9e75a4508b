"""The robot server with a backend that does nothing (the state it reports is fixed at reset): what
the protocol, the server loop and the env cost in Python with no simulation at all, the ceiling of
`robot-env bench`. Exits when stdin closes. Usage: python -m robot_env.apps.bench_children.noop_server
ENDPOINT STREAM_ENDPOINT [CONFIG [SCENE]]: the backend is the config's (default sim), so the spec and
the state (objects included) are what that backend announces and reports."""
import sys

from robot_env import config as config_mod
from robot_env.backends.registry import backend_class
from robot_env.bridge.server import RobotServer
from robot_env.config import backend_kwargs


def config_from_args(argv: list) -> dict:
    """[CONFIG [SCENE]] -> the loaded config, the scene (an object task's) put in its backend's table."""
    cfg = config_mod.load(argv[0] if argv else "sim")
    if len(argv) > 1 and argv[1]:
        cfg[f"server.{cfg['server']['backend']}"]["scene"] = argv[1]
    return cfg


def noop_backend(cfg: dict):
    """The config's backend class, with apply and advance doing nothing and the state fixed at reset."""
    base = backend_class(cfg["server"]["backend"])

    class NoopBackend(base):
        def reset(self, seed, options, robots=None):
            out = super().reset(seed, options, robots)
            self._st = super().state()
            return out

        def apply(self, command, robots=None):
            return []

        def advance(self, dt):
            pass

        def state(self):
            return dict(self._st)

    b = NoopBackend(**backend_kwargs(cfg))
    b.reset(None, {})
    return b


if __name__ == "__main__":
    server = RobotServer(noop_backend(config_from_args(sys.argv[3:])), sys.argv[1], sys.argv[2],
                         watch_fd=0, exit_on_close=True)
    print("READY", flush=True)
    server.serve_forever()
