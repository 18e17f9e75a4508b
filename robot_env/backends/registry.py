"""The one place a backend's name is written: config `[server] backend` name -> "module:Class".

`robot_env` never imports a backend directly: `load_backend` imports the module a config names, only
then. Each backend class carries its own settings table (`Settings`: key -> (type, default, check,
what the check wants[, "path"])), validated as the config's `[server.<name>]` table.
"""
from __future__ import annotations

import importlib

from ..errors import ConfigError

BACKENDS = {
    "kinematic": "simulators.kinematic:KinematicSim",
    # The name N kinematic robots had before `kinematic` took `num_robots`: configs that use it keep working.
    "kinematic_batch": "simulators.kinematic:KinematicSim",
    "mujoco": "simulators.mujoco_sim.backend:MujocoSim",  # the `mujoco` extra
    "dynamixel": "drivers.hardware:DynamixelBackend",
}


def backend_class(name: str):
    """The class a backend name stands for (its module imported now)."""
    target = BACKENDS.get(name)
    if target is None:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    module, cls = target.split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"backend {name!r} is not available here: {exc}") from exc
    return getattr(mod, cls)


def settings_of(name: str) -> dict:
    """The `[server.<name>]` settings table a backend declares."""
    return dict(getattr(backend_class(name), "Settings", {}))


def load_backend(name: str, **kwargs):
    """Instantiate the backend a config names (settings already validated by `config.load`)."""
    return backend_class(name)(**kwargs)
