"""What a page may ask for, checked before anything reaches the robot; and the hold-to-run jogs.

A page's messages are JSON objects with a `type`. `parse` turns one into a `Request` or raises
`BadMessage` (the page gets an error reply, nothing moves). Motion is hold-to-run: the page sends
the full set of axes it holds (`{"type": "jog", "axes": {"x": 1}, "seq": n}`) on every change (n + 1)
and again every ~100 ms while any is held (the same n); `Holds` forgets the axes whose last refresh
is older than its deadline, so a page that freezes, sleeps or loses its socket stops the robot
without the browser's help. A refresh that comes after its hold lapsed (a late message) does not
start the robot again: only a new press (a new n) does.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from ...model.description import ARM, GRIPPER, HEAD, READY_ARM, READY_TORSO, TORSO
from ..teleop import CHANNEL_OF, GROUPS, Jog, Jogs, Teleop

MAX_MESSAGE = 4096  # bytes: a page's messages are small; anything larger is refused unread
HOME = "home"  # a hold-to-run "axis": torso and arm toward the ready pose
AXES = frozenset(GROUPS) | {HOME}
TYPES = frozenset({"jog", "stop", "estop", "clear", "speed", "take", "release", "ping"})
SPEED_MIN, SPEED_MAX = 0.05, 1.0


class BadMessage(ValueError):
    """A message a page must not send; `code` goes back in the error reply."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Request:
    type: str
    axes: dict = field(default_factory=dict)  # jog: axis -> +1 / -1
    value: float = 0.0  # speed: the scale; ping: the page's stamp (echoed)
    seq: int = 0  # jog: the number of this held set (a refresh repeats it)


def parse(raw) -> Request:
    """One WebSocket text message -> a Request; anything else is a BadMessage (nothing is applied)."""
    if not isinstance(raw, str):
        raise BadMessage("bad_message", "messages are JSON text")
    if len(raw.encode("utf-8", "replace")) > MAX_MESSAGE:
        raise BadMessage("too_large", f"a message may hold at most {MAX_MESSAGE} bytes")
    try:
        msg = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadMessage("bad_json", f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise BadMessage("bad_message", "a message is a JSON object with a 'type'")
    kind = msg.get("type")
    if kind not in TYPES:
        raise BadMessage("unknown_type", f"unknown message type {kind!r}; known: {', '.join(sorted(TYPES))}")
    extra = set(msg) - {"type", "axes", "value", "seq"}
    if extra:
        raise BadMessage("bad_message", f"unknown field(s) {', '.join(sorted(map(str, extra)))} in {kind!r}")
    if kind == "jog":
        axes = msg.get("axes")
        if not isinstance(axes, dict):
            raise BadMessage("bad_axes", "jog needs 'axes': {axis: 1 or -1}")
        for axis, sign in axes.items():
            if axis not in AXES:
                raise BadMessage("bad_axes", f"unknown axis {axis!r}; known: {', '.join(sorted(AXES))}")
            if type(sign) is not int or sign not in (-1, 1):
                raise BadMessage("bad_axes", f"axis {axis!r} needs 1 or -1, got {sign!r}")
        if HOME in axes and len(axes) > 1:
            raise BadMessage("bad_axes", "home moves alone: release the other axes first")
        seq = msg.get("seq")
        if type(seq) is not int or not 0 <= seq < 2 ** 53:
            raise BadMessage("bad_seq", f"jog needs 'seq', a whole number >= 0, got {seq!r}")
        return Request("jog", axes=dict(axes), seq=seq)
    if kind in ("speed", "ping"):
        value = msg.get("value")
        if type(value) not in (int, float) or not math.isfinite(value):
            raise BadMessage("bad_value", f"{kind} needs a finite number 'value', got {value!r}")
        if kind == "speed" and not SPEED_MIN <= value <= SPEED_MAX:
            raise BadMessage("bad_value", f"speed must lie in [{SPEED_MIN}, {SPEED_MAX}], got {value}")
        return Request(kind, value=float(value))
    return Request(kind)


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


class Holds(Jogs):
    """The axes a page holds, each alive until `deadline` s after its last refresh."""

    def __init__(self, deadline: float):
        super().__init__(window=deadline, first_window=deadline)

    def hold(self, axes: dict[str, int], now: float) -> None:
        """The page's whole held set: others are released, the named ones refreshed (or started)."""
        for axis in [a for a in self.jogs if a not in axes]:
            del self.jogs[axis]
        for axis, sign in axes.items():
            self.jogs[axis] = Jog(sign, now + self.window)


class WebTeleop(Teleop):
    """Teleop's command logic (jog steps, integrated targets, stopping released groups) with a
    continuous speed scale and a hold-to-run home."""

    def __init__(self, robot, *, speed: float, hold_timeout: float):
        super().__init__(robot, speed=speed)
        self.jogs = Holds(hold_timeout)
        self.scale = float(speed)

    @property
    def speed(self) -> float:
        return self.scale

    def unavailable(self, axes) -> str | None:
        """Why this backend cannot move one of these axes (None: it can)."""
        for axis in axes:
            need = ("arm_position", "torso") if axis == HOME else (CHANNEL_OF[GROUPS[axis]],)
            missing = [c for c in need if self.channels and c not in self.channels]
            if missing:
                return f"this backend does not take the {', '.join(missing)} channel ({axis})"
        return None

    def _halt(self) -> dict:
        """Teleop's stop from the newest state this thread has (a reply to the last jog command, one
        period old at most), not a fresh one: the stop goes out one round trip sooner."""
        if self.state is None:
            return super()._halt()
        q = self.state["q"]
        return self.robot.send(arm_velocity=[0.0] * 7, base_twist=[0.0, 0.0], torso=float(q[TORSO]),
                               head=q[HEAD].tolist(), gripper=float(q[GRIPPER]))

    def command(self, active: dict[str, int]) -> dict:
        if HOME not in active:
            return super().command(active)
        st = self.state or self.robot.state()
        q = st["q"]
        limit = self.robot.velocity * self.speed * self.period
        arm = q[ARM] + np.clip(np.asarray(READY_ARM) - q[ARM], -limit[ARM], limit[ARM])
        torso = float(q[TORSO] + np.clip(READY_TORSO - q[TORSO], -limit[TORSO], limit[TORSO]))
        self.targets.clear()
        self.sent_groups = {"arm", "torso"}  # released: the stop holds both
        return {"arm_position": arm.tolist(), "torso": torso}

