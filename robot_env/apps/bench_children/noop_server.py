"""The robot server with a backend that does nothing (the state it reports is fixed at reset): what
the protocol, the server loop and the env cost in Python with no simulation at all, the ceiling of
`robot-env bench`. Exits when stdin closes. Usage: python -m robot_env.apps.bench_children.noop_server
ENDPOINT STREAM_ENDPOINT [CONFIG [SCENE]]: the backend is the config's (default sim), so the spec and
the state (objects included) are what that backend announces and reports."""
import sys

from robot_env import config as config_mod
from robot_env.backends.registry import backend_class
from robot_env.bridge.server import RobotServer
from robot_env.config import safety_config


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

    settings = dict(cfg.get(f"server.{cfg['server']['backend']}", {}))
    b = NoopBackend(safety=safety_config(cfg), control_period=cfg["server"]["control_period"], **settings)
    b.reset(None, {})
    return b


if __name__ == "__main__":
    cfg = config_mod.load(sys.argv[3] if len(sys.argv) > 3 else "sim")
    if len(sys.argv) > 4 and sys.argv[4]:
        cfg[f"server.{cfg['server']['backend']}"]["scene"] = sys.argv[4]
    server = RobotServer(noop_backend(cfg), sys.argv[1], sys.argv[2], watch_fd=0, exit_on_close=True)
    print("READY", flush=True)
    server.serve_forever()
