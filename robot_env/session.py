"""Open a client on the server a config names, spawning an embedded one when it names none."""
from __future__ import annotations

from . import config as config_mod
from .client import RobotClient
from .spawn import ServerProcess


class Session:
    """A connected client plus, when we started it, the server process we own."""

    def __init__(self, config=None, overrides: dict | None = None):
        self.cfg = config_mod.load(config, overrides)
        cc = self.cfg["client"]
        self.server: ServerProcess | None = None
        endpoint = cc["endpoint"]
        if not endpoint:
            self.server = ServerProcess(self.cfg)
            endpoint = self.server.endpoint
        try:
            self.client = RobotClient(endpoint, timeout=cc["timeout"], retries=cc["retries"])
            self.info = self.client.hello()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close(shutdown=self.server is not None)
            self.client = None
        if self.server is not None:
            self.server.close()
            self.server = None
