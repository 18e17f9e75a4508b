"""The control lease: one controller at a time, bound to a session token (DESIGN's "forced takeover explicit").

Motion ops (step, command, reset) run only for the controller: a request whose token is the
controller's passes with one comparison (`controller`), the server's hot path. Anything else
takes `claim`: a free lease (nobody, released, or lapsed) is taken implicitly by the request's
token, so a client that never calls `acquire` still works while nobody else holds control. A
request without a token moves the robot only while the lease is free and never holds it. A lease
lapses after `timeout` s without a motion request, never while `latched()` says the e-stop or a
fault is latched (whoever was in control then decides on recovery). A client that lost control is
told once, on its next motion request. Times are the caller's (monotonic) clock: no sockets here.
"""
from __future__ import annotations

import logging

from ..errors import RequestError

log = logging.getLogger("robot_env.server")
MAX_LOST = 256  # sessions remembered as having lost control (each told once)


def check_token(tok, required: bool = False):
    """A request's session token: None (if allowed) or a string of 8 to 128 characters."""
    if tok is None and not required:
        return None
    if tok.__class__ is not str or not 8 <= len(tok) <= 128:
        raise RequestError("bad_request", "'token' (the client's session token) must be a string of "
                                          "8 to 128 characters")
    return tok


class Lease:
    def __init__(self, timeout: float | None, latched=lambda: False):
        self.timeout = timeout or None  # None: never lapses
        self.latched = latched
        self.controller: str | None = None
        self.seen = 0.0  # time of the controller's last motion request
        self.lost: dict[str, str] = {}

    # -- queries -----------------------------------------------------------------------------
    def free(self, now: float) -> bool:
        if self.controller is None:
            return True
        if self.timeout is None or now - self.seen <= self.timeout:
            return False
        return not self.latched()

    def info(self, tok, now: float) -> dict:
        held = not self.free(now)
        return {"held": held, "yours": tok is not None and tok == self.controller,
                "idle": now - self.seen if held else None, "timeout": self.timeout}

    def held_message(self, op: str, now: float) -> str:
        lapse = (f", or until its lease lapses ({self.timeout:g} s without a command)"
                 if self.timeout is not None else "")
        return (f"{op} refused: another client holds control of the robot (its last command "
                f"{now - self.seen:.1f} s ago); nothing was applied. This client may observe (hello, "
                f"state, the state stream) and estop. Take over with acquire(force=True) "
                f"(RobotClient.acquire(force=True)), or wait until the controller releases control{lapse}")

    # -- changes -----------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        """What `restore` puts back: a refused request must not keep the lease it took."""
        return self.controller, self.seen, dict(self.lost)

    def restore(self, snap: tuple) -> None:
        self.controller, self.seen, self.lost = snap[0], snap[1], dict(snap[2])

    def claim(self, tok, op: str, now: float) -> None:
        """The motion check's slow path (`tok` is not the controller's): take a free lease, or refuse."""
        tok = check_token(tok)
        if tok is not None:
            lost = self.lost.pop(tok, None)
            if lost is not None:
                raise RequestError("not_controller", f"{op} refused: {lost}; nothing was applied. Call "
                                                     "acquire() to take control again (force=True to take it over)")
        if not self.free(now):
            raise RequestError("not_controller", self.held_message(op, now))
        self._grant(tok, now, f"implicitly, by its first {op}")

    def require(self, tok, op: str, now: float) -> None:
        """For ops only the controller may send while someone holds control (clear_estop)."""
        if tok != self.controller and not self.free(now):
            raise RequestError("not_controller", f"{op} refused: another client holds control of the robot, "
                                                 f"and only the controller may {op} while it does. Take over "
                                                 "with acquire(force=True) (RobotClient.acquire(force=True))")

    def acquire(self, tok, force, now: float) -> dict:
        tok = check_token(tok, required=True)
        if force.__class__ is not bool:
            raise RequestError("bad_request", "acquire 'force' must be true or false")
        self.lost.pop(tok, None)
        current = self.controller
        if current == tok or self.free(now):
            self._grant(tok, now, "acquire")
        elif force:
            self._lose(current, "control was taken over by another client (forced acquire)")
            log.warning("control taken over by session %s... (forced acquire; the previous controller's last "
                        "command was %.1f s ago)", tok[:6], now - self.seen)
            self.controller = tok
            self.seen = now
        else:
            raise RequestError("not_controller", self.held_message("acquire", now))
        return self.info(tok, now)

    def release(self, tok, now: float) -> tuple[bool, dict]:
        tok = check_token(tok, required=True)
        released = tok == self.controller
        if released:
            self.controller = None
            log.info("control released by session %s...", tok[:6])
        self.lost.pop(tok, None)
        return released, self.info(tok, now)

    def _grant(self, tok, now: float, how: str) -> None:
        old = self.controller
        if old is not None and old != tok:  # only reached when the old lease has lapsed
            self._lose(old, f"control passed to another client after your lease lapsed "
                            f"({self.timeout:g} s without a command)")
            log.info("the lease of session %s... lapsed (%.1f s without a command)", old[:6], now - self.seen)
        self.controller = tok
        self.seen = now
        if tok is not None and tok != old:
            log.info("control acquired by session %s... (%s)", tok[:6], how)

    def _lose(self, tok: str, why: str) -> None:
        self.lost[tok] = why
        if len(self.lost) > MAX_LOST:
            del self.lost[next(iter(self.lost))]
