"""Open a client on the server a config names, spawning an embedded one when it names none."""
from __future__ import annotations

from .. import config as config_mod
from .client import RobotClient
from .security import client_keys
from .spawn import ServerProcess


class Session:
    """A connected client plus, when we started it, the server process we own."""

    def __init__(self, config=None, overrides: dict | None = None):
        self.cfg = config_mod.load(config, overrides)
        cc = self.cfg["client"]
        self.server: ServerProcess | None = None
        endpoint = cc["endpoint"]
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
