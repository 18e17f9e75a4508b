"""Exceptions shared by client and server; each carries a machine-readable code for error replies."""


class RobotEnvError(Exception):
    """Base class for every error robot-env raises on purpose."""


class RequestError(RobotEnvError):
    """A request the server refuses: nothing was applied. `code` travels in the error reply."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ServerError(RobotEnvError):
    """The server answered a request with an error reply."""

    def __init__(self, code: str, message: str, op: str = ""):
        super().__init__(f"{op + ': ' if op else ''}{message} [{code}]")
        self.code = code
        self.message = message


class ServerTimeout(RobotEnvError):
    """No reply within the client's timeout: the server is dead, unreachable or wedged."""


class ConfigError(RobotEnvError, ValueError):
    """A config file or value is wrong; the message names the file and the key."""
