"""robot-env: Gymnasium environments for a Fetch-style robot, bridged over ZeroMQ to a robot server.

`import robot_env` registers the envs (`robot_env/FetchReach-v0`: `gymnasium.make`, and
`gymnasium.make_vec` for N simulated robots behind one server) as soon as Gymnasium is imported,
before or after this package, and loads nothing heavy itself: the drivers and simulators import
`robot_env`'s model and safety layer without Gymnasium or ZeroMQ. `robot_env.connect` and
`robot_env.Robot` load the client on first use.
"""
import importlib.abc
import importlib.util
import logging
import sys

from .errors import ConfigError, RequestError, RobotEnvError, ServerError, ServerTimeout

__version__ = "0.1.0"
_LAZY = {"connect": "robot", "Robot": "robot", "MoveError": "robot"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'robot_env' has no attribute {name!r}")


def _register() -> None:
    try:
        from .envs.registration import register_envs
        register_envs()
    except Exception:  # never break `import gymnasium` for someone else's code
        logging.getLogger("robot_env").exception("could not register robot-env's Gymnasium envs")


class _Then(importlib.abc.Loader):
    """A module's own loader, then `after()` once the module has run."""

    def __init__(self, inner, after):
        self.inner, self.after = inner, after

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        self.after()


class _WhenGymnasiumLoads(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "gymnasium":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _Then(spec.loader, _register)
        return spec


if "gymnasium" in sys.modules:
    _register()
elif not any(isinstance(f, _WhenGymnasiumLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _WhenGymnasiumLoads())

__all__ = ["ConfigError", "MoveError", "RequestError", "Robot", "RobotEnvError", "ServerError", "ServerTimeout",
           "__version__", "connect"]
