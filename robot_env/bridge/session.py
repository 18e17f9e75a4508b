"""Open a client on the server a config names, spawning an embedded one when it names none."""
from __future__ import annotations

from .. import config as config_mod
from ..errors import ConfigError
from .client import RobotClient
from .security import client_keys
from .spawn import ServerProcess


class Session:
    """A connected client plus, when we started it, the server process we own.

    `num_robots`: the robots the caller needs (a vector env); `scene`: the scene its task needs. A
    server this session spawns is asked for them (its backend must be able to host them); a
    running server is checked against its `hello` and refused on a mismatch. The user's config
    file is never rewritten for it.
    """

    def __init__(self, config=None, overrides: dict | None = None, *, num_robots: int | None = None,
                 scene: str | None = None):
        self.cfg = config_mod.load(config, overrides)
        cc = self.cfg["client"]
        self.server: ServerProcess | None = None
        endpoint = cc["endpoint"]
        if num_robots is not None and not endpoint:
            self._ask_for_robots(num_robots)
        if scene is not None and not endpoint:
            self._ask_for_scene(scene)
        # CurveZMQ keys from [client] (a server we spawn: its public key from its secret key file, and
        # a fresh client key pair when [client] names none, which the spawned server is told to allow).
        self.keys = client_keys(self.cfg, spawning=not endpoint)
        if not endpoint:
            allow = [self.keys.public.decode()] if self.keys is not None else []
            self.server = ServerProcess(self.cfg, allow_client_keys=allow)
            endpoint = self.server.endpoint
        try:
            self.client = RobotClient(endpoint, timeout=cc["timeout"], retries=cc["retries"], keys=self.keys,
                                      owner=self.server.owner if self.server is not None else None)
            self.info = self.client.hello()
            if num_robots is not None:
                self._check_robots(num_robots)
        except BaseException:
            self.close()
            raise

    def _ask_for_robots(self, n: int) -> None:
        from ..backends.registry import backend_class
        backend = self.cfg["server"]["backend"]
        cls = backend_class(backend)
        if n > 1 and (n > cls.max_robots or "num_robots" not in cls.Settings):
            raise ConfigError(f"{self.cfg['source']}: [server] backend {backend!r} hosts "
                              f"{'one robot' if cls.max_robots == 1 else f'at most {cls.max_robots} robots'}, "
                              f"not {n}; a vector env needs a simulator of N robots (a backend that hosts N, e.g. "
                              "'kinematic'). For robots with a server each: make_vec(..., vectorization_mode='sync')")
        if "num_robots" in cls.Settings:
            self.cfg[f"server.{backend}"]["num_robots"] = n

    def _ask_for_scene(self, scene: str) -> None:
        from ..backends.registry import backend_class
        backend = self.cfg["server"]["backend"]
        if "scene" in backend_class(backend).Settings:  # else the task's bind names what is missing
            self.cfg[f"server.{backend}"]["scene"] = scene

    def _check_robots(self, n: int) -> None:
        got = self.info.get("num_robots", 1)
        if got != n:
            raise ConfigError(f"the server at {self.client.endpoint} hosts {got} robot(s) "
                              f"({self.info.get('backend')} backend); this needs {n}")

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close(shutdown=self.server is not None)
            self.client = None
        if self.server is not None:
            self.server.close()
            self.server = None
