"""The robot server with a backend that does nothing (the state it reports is fixed at reset): what
the protocol, the server loop and the env cost in Python with no simulation at all, the ceiling of
`robot-env bench`. Exits when stdin closes. Usage: python -m robot_env.apps.bench_children.noop_server
ENDPOINT STREAM_ENDPOINT"""
import sys

from robot_env.bridge.server import RobotServer
from simulators.kinematic import KinematicSim


class NoopBackend(KinematicSim):
    def __init__(self):
        super().__init__()
        self.reset(None, {})

    def reset(self, seed, options, robots=None):
        self.kernel.reset(seed, options, robots)
        self._st = self.kernel.state()

    def apply(self, command, robots=None):
        return []

    def advance(self, dt):
        pass

    def state(self):
        return dict(self._st)


if __name__ == "__main__":
    server = RobotServer(NoopBackend(), sys.argv[1], sys.argv[2], watch_fd=0, exit_on_close=True)
    print("READY", flush=True)
    server.serve_forever()
