"""The recording format: topics, metadata names, the MCAP magic, sequence counting and JSON encoding,
shared by the recorder, the reader and replay."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import RobotEnvError

log = logging.getLogger("robot_env.recording")
_now = time.time

FORMAT = "robot-env-recording"
FORMAT_VERSION = 1
TOPIC_STATE = "/robot/state"
TOPIC_COMMAND = "/robot/command"
TOPIC_EPISODE = "/env/episode"
TOPIC_RECORDER = "/recorder"
# The writer registers these first, in this order: a reader that lost the chunk holding the channel
# records (the first one) still knows what the messages in later chunks are.
FIXED_CHANNELS = {1: TOPIC_STATE, 2: TOPIC_COMMAND, 3: TOPIC_RECORDER}
META_INFO = "robot_env.recording"
META_SUMMARY = "robot_env.summary"
MAX_RANGES = 100  # missing-seq ranges kept in the summary
MAX_REASONS = 10  # reasons for skipped records listed one per line in `Recording.problems`
MAX_EXAMPLES = 3  # examples kept per reason
DEFAULT_MAX_WAIT = 5.0  # s: the longest a replay waits between two commands (`replay(max_wait=...)`)
MAGIC = bytes((137, 77, 67, 65, 80, 48, 13, 10))


class RecordingError(RobotEnvError):
    """A recording that cannot be written, read or replayed; the message says what and where."""


def _need_mcap():
    import importlib.util
    if importlib.util.find_spec("mcap") is None:
        raise RecordingError("recordings need the `mcap` package: pip install 'robot-env[record]'")


# -- JSON conversion ---------------------------------------------------------------------------
def _plain(obj):
    """Arrays and numpy scalars -> lists and floats, recursively (JSON-ready)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.hex()
    return obj


def _finite(obj):
    """NaN/inf -> null: JSON has no such numbers, and strict parsers (Foxglove's) reject them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _dumps(msg: dict) -> bytes:
    try:
        return json.dumps(msg, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        return json.dumps(_finite(msg), separators=(",", ":")).encode()


def _ns(t) -> int:
    try:
        return max(0, int(float(t) * 1e9))
    except (TypeError, ValueError, OverflowError):
        return 0


# -- gap counting ------------------------------------------------------------------------------
class SeqCounter:
    """Counts gaps in a numbered stream: `gaps` holes, `lost` numbers missing, `restarts` (seq went back)."""

    def __init__(self):
        self.first = self.last = None
        self.count = self.gaps = self.lost = self.restarts = 0
        self.missing: list[tuple[int, int]] = []

    def see(self, seq) -> None:
        if not isinstance(seq, int) or isinstance(seq, bool):
            return
        self.count += 1
        last = self.last
        if last is None:
            self.first = seq
        elif seq > last + 1:
            self.gaps += 1
            self.lost += seq - last - 1
            if len(self.missing) < MAX_RANGES:
                self.missing.append((last + 1, seq - 1))
        elif seq <= last:
            self.restarts += 1  # a restarted server numbers from 1 again
        self.last = seq

    def as_dict(self) -> dict:
        return {"first": self.first, "last": self.last, "count": self.count, "gaps": self.gaps,
                "lost": self.lost, "restarts": self.restarts, "missing": [list(r) for r in self.missing]}


@dataclass
class RecordingStats:
    """What `Recorder.stop` returns (and writes as the file's `robot_env.summary` metadata)."""
    path: str
    states: int = 0
    commands: int = 0
    events: int = 0
    state_gaps: int = 0
    states_lost: int = 0
    command_gaps: int = 0
    commands_lost: int = 0
    restarts: int = 0
    malformed: int = 0
    tail_lost: int = 0
    first_state: int | None = None
    first_command: int | None = None
    started: float = 0.0
    stopped: float = 0.0
    reason: str = ""
    missing_states: list = field(default_factory=list)
    missing_commands: list = field(default_factory=list)

    @property
    def duration(self) -> float:
        return max(0.0, self.stopped - self.started)

    def as_metadata(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "path"}
        d["duration"] = self.duration
        return {k: json.dumps(v) for k, v in d.items()}

    def __str__(self) -> str:
        s = (f"{self.states} states, {self.commands} commands over {self.duration:.1f} s to {self.path}; "
             f"state gaps: {self.state_gaps} ({self.states_lost} lost)")
        if self.command_gaps:
            s += f", command gaps: {self.command_gaps} ({self.commands_lost} lost)"
        if self.restarts:
            s += f", server restarts: {self.restarts}"
        if self.tail_lost:
            s += f"; {self.tail_lost} states sampled before the stop never arrived"
        return s
