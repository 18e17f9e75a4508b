"""Record a robot server's state stream and applied commands to an MCAP file; read and replay it.

What is recorded. A `Recorder` subscribes to the server's stream (the endpoint `hello` announces)
from a background thread and writes every message as it arrives:

- ``/robot/state``: every state sample: ``seq`` (the stream's number), ``ts`` (server sample
  time), ``t_recv`` (when the recorder received it), ``time`` (the backend's clock), ``mode``,
  ``faults``, ``clipped`` and every vector (``q``, ``dq``, ``effort``, ``target``, ``ee``,
  ``ee_vel``, ``base``, ...) as plain lists.
- ``/robot/command``: every command the server *applied* (refused ones never reach the stream),
  whoever sent it: ``op`` (``step``, ``command`` or ``reset``), ``cmd`` (the validated channels) or
  ``seed``/``options``, ``cseq`` (the server's command number), ``t`` (client send time),
  ``client_seq``, ``ta`` (apply time), ``after`` (the ``seq`` of the last state before it) and
  ``t_recv``. The server publishes these under its ``command`` topic only while someone subscribes
  to it, so without a recorder the command path costs one integer test.
- anything logged with `Recorder.log` (the env wrapper writes ``/env/episode``: seed, goal, return).

Each MCAP message also carries the times natively: ``log_time`` = receive time, ``publish_time`` =
server sample/apply time, ``sequence`` = ``seq``/``cseq``. Gaps in ``seq``/``cseq`` (the stream
dropped messages because the recorder fell behind) are counted live, returned by `Recorder.stop`,
and written into the file's ``robot_env.summary`` metadata; the reader recounts them from the
messages, so a recording that was never closed still says what it lacks. The metadata record
``robot_env.recording`` holds the robot: backend, clock, control period, joint names, description.

Why MCAP (not HDF5, not a LeRobot dataset).

- Crash safety. MCAP is an append-only log of self-delimiting records: whatever reached the file
  before a crash is readable, with no index to repair. The recorder closes a chunk and flushes it
  every `flush_interval` (0.2 s), so a SIGKILL or power loss of the recording process loses at most
  that; on a lost server nothing is lost (the recorder closes the file normally). An HDF5 file being
  written keeps its B-tree and free-space metadata in the library's cache: a killed writer often
  leaves a file h5py cannot open at all (SWMR mode mitigates this with stricter rules and is still
  not append-safe for variable records). A LeRobot dataset is parquet files plus episode metadata
  written when an episode ends, so a crash mid-episode loses the episode.
- Streaming. Messages of different kinds (states at the control rate, commands whenever they come,
  episode events) interleave in arrival order with their own timestamps; no fixed-shape arrays to
  pre-size or resize, as HDF5 datasets need.
- Opening it elsewhere. MCAP is ROS 2's default bag format: Foxglove Studio opens the file directly
  (plot ``/robot/state.q[3]`` against ``/robot/state.target[3]``), and so do the `mcap` CLI and the
  `mcap` Python/C++/Go/Rust/TS readers. Messages are JSON with a JSON Schema per topic (Foxglove's
  ``json`` encoding): any language reads them, nothing is pickled.
- Integrity. Each chunk carries a CRC of its content (zstd-compressed chunks), so corruption is
  detected, and reading resynchronizes on the next intact chunk to say exactly which seqs were lost.

`read_recording` reads a file tolerantly (a truncated or corrupted one gives what is intact plus a
list of `problems`) and checks every record against the schemas the recorder writes into the file
(`robot_env.recording.schema`; commands also by the server's own command rules): a record that
fails is skipped and counted by reason, so a hand-edited or hostile file (valid chunks, CRCs and
JSON, wrong fields) gives its valid part, never a crash. `replay` re-sends the recorded commands
with their original timing through the normal client (so the server's safety layer applies), each
wait capped; `robot-env record/replay/plot` wrap them.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import queue
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from ..errors import RobotEnvError, ServerError, ServerTimeout
from .schema import (COMMAND_SCHEMA, EVENT_SCHEMA, INFO_SCHEMA, STATE_SCHEMA, SUMMARY_SCHEMA,  # noqa: F401
                     MAX_SEQ, Invalid, check_metadata, check_record, command_request, shape_of)

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


# -- writing -----------------------------------------------------------------------------------
class _McapSink:
    """The MCAP file: JSON channels with JSON Schemas, zstd chunks closed and flushed on demand."""

    def __init__(self, path, info: dict):
        _need_mcap()
        from mcap.writer import CompressionType, Writer

        self.path = str(path)
        self.fh = open(self.path, "wb")
        self.writer = Writer(self.fh, chunk_size=1 << 20, compression=CompressionType.ZSTD)
        from .. import __version__
        self.writer.start(profile="", library=f"robot-env {__version__}")
        self.writer.add_metadata(META_INFO, info)
        self.fh.flush()
        self.channels: dict[str, int] = {}
        self.dirty = False
        self.channel(TOPIC_STATE, STATE_SCHEMA)
        self.channel(TOPIC_COMMAND, COMMAND_SCHEMA)
        self.channel(TOPIC_RECORDER)
        assert {v: k for k, v in self.channels.items()} == FIXED_CHANNELS
        # A small first chunk with the schemas and channels, on disk before any state arrives.
        t = _now()
        self.write(TOPIC_RECORDER, _dumps({"event": "start", "t": t}), _ns(t), _ns(t))
        self.flush()

    def channel(self, topic: str, schema: dict | None = None) -> int:
        cid = self.channels.get(topic)
        if cid is None:
            schema = schema or EVENT_SCHEMA
            sid = self.writer.register_schema(schema["title"], "jsonschema", json.dumps(schema).encode())
            cid = self.channels[topic] = self.writer.register_channel(topic, "json", sid)
        return cid

    def write(self, topic: str, data: bytes, log_time: int, publish_time: int, sequence: int = 0) -> None:
        self.writer.add_message(self.channel(topic), log_time, data, publish_time, sequence & 0xFFFFFFFF)
        self.dirty = True

    def flush(self) -> None:
        if self.dirty:
            self.writer.flush()  # closes the chunk in progress and flushes the file
            self.dirty = False

    def close(self, summary: dict) -> None:
        t = _now()
        self.write(TOPIC_RECORDER, _dumps({"event": "stop", "t": t, **{k: json.loads(v) for k, v in summary.items()}}),
                   _ns(t), _ns(t))
        self.writer.flush()
        self.writer.add_metadata(META_SUMMARY, summary)
        self.writer.finish()
        self.fh.flush()
        try:
            os.fsync(self.fh.fileno())
        except OSError:
            pass
        self.fh.close()


def _endpoint_of(source) -> tuple[str, object]:
    """(request endpoint, CurveZMQ client keys or None) of a Robot, RobotClient, Session, Gymnasium
    env, or an endpoint string."""
    if isinstance(source, str):
        return source, None
    obj = getattr(source, "unwrapped", source)
    for attr in ("client", "_client"):
        client = getattr(obj, attr, None)
        if client is not None and isinstance(getattr(client, "endpoint", None), str):
            return client.endpoint, getattr(client, "keys", None)
    if isinstance(getattr(obj, "endpoint", None), str):
        return obj.endpoint, getattr(obj, "keys", None)
    raise TypeError(f"cannot record from a {type(source).__name__}: give a Robot, RobotClient, Session, "
                    "robot-env Gymnasium env, or a server's request endpoint")


class Recorder:
    """Record a server's state stream and applied commands to an MCAP file, from a background thread.

    ``source`` is a `Robot` (``robot_env.connect()``), a `RobotClient`, a `Session`, a robot-env
    Gymnasium env, or a server's request endpoint. Use it as a context manager::

        with robot_env.connect() as robot, Recorder(robot, "run.mcap") as rec:
            robot.move_ee(delta=[0.05, 0, 0])
        print(rec.stats)          # counts, gaps

    `start` returns once the subscription is live (the first state has arrived), so nothing the
    caller does afterwards is missed; `stop` first waits for the stream to deliver everything applied
    before it was called, then closes the file and returns `RecordingStats`. The recorder talks to
    the server through its own client (``hello`` and ``state`` requests: it observes, never holds
    control, moves nothing), with the source's CurveZMQ keys when it has some (or `keys`).
    """

    def __init__(self, source, path, *, flush_interval: float = 0.2, timeout: float = 5.0,
                 rcvhwm: int = 100_000, keys=None):
        self.endpoint, source_keys = _endpoint_of(source)
        self.keys = keys if keys is not None else source_keys
        self.path = str(path)
        self.flush_interval = float(flush_interval)
        self.timeout = float(timeout)
        self.rcvhwm = rcvhwm
        self.info: dict | None = None
        self.stats: RecordingStats | None = None
        self.state_seq = SeqCounter()
        self.command_seq = SeqCounter()
        self.events = 0
        self.malformed = 0
        self.tail_lost = 0  # states sampled before stop() that never arrived (see _sync)
        self.last_receive: float | None = None
        self.error: BaseException | None = None
        self._client = None
        self._sub = None
        self._sink: _McapSink | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._live = threading.Event()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._started = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Recorder":
        if self._thread is not None:
            raise RecordingError("this recorder is already running")
        from ..bridge.client import RobotClient

        extra = {"keys": self.keys} if self.keys is not None else {}
        self._client = RobotClient(self.endpoint, timeout=min(self.timeout, 2.0), retries=1, **extra)
        try:
            self.info = self._client.hello()
            stream = self.info.get("stream_endpoint")
            if not stream:
                raise RecordingError(f"the server at {self.endpoint} announces no state stream endpoint")
            self._sink = _McapSink(self.path, self._info_metadata())
            ctx = zmq.Context.instance()
            self._sub = ctx.socket(zmq.SUB)
            self._sub.setsockopt(zmq.LINGER, 0)
            self._sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
            self._sub.setsockopt(zmq.SUBSCRIBE, b"state")
            self._sub.setsockopt(zmq.SUBSCRIBE, b"command")
            if self.keys is not None:
                self.keys.apply(self._sub)
            self._sub.connect(stream)
            self._started = _now()
            self._thread = threading.Thread(target=self._run, name="robot-env-recorder", daemon=True)
            self._thread.start()
            # A subscription takes a moment to reach the server; probe (a `state` request publishes
            # a sample) until one arrives, so the caller's next command is recorded.
            deadline = time.monotonic() + self.timeout
            while not self._live.is_set():
                if time.monotonic() > deadline or not self._thread.is_alive():
                    raise RecordingError(f"no state arrived on {stream} within {self.timeout:g} s"
                                         + (f": {self.error}" if self.error else ""))
                self._client.state()
                self._live.wait(0.02)
        except BaseException:
            self._abort()
            raise
        return self

    def stop(self, reason: str = "stopped", *, sync: bool = True) -> RecordingStats:
        """Catch up with the stream (`sync`: until a state sampled now has arrived; about 1 s when
        the server is gone), close the file (summary, index) and return the stats."""
        if self.stats is not None:
            return self.stats
        if self._thread is None:
            raise RecordingError("this recorder was never started")
        if sync and self._thread.is_alive():
            self._sync()
        self._stop.set()
        self._thread.join()
        self.stats = self._make_stats(reason)
        try:
            if self._sink is not None:
                self._sink.close(self.stats.as_metadata())
        finally:
            self._sink = None
            self._close_sockets()
        if self.error is not None:
            raise RecordingError(f"recording to {self.path} failed: {self.error}") from self.error
        return self.stats

    def __enter__(self) -> "Recorder":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop("stopped" if exc_type is None else f"{exc_type.__name__}: {exc}")

    # -- live view ---------------------------------------------------------------------------
    @property
    def states(self) -> int:
        return self.state_seq.count

    @property
    def commands(self) -> int:
        return self.command_seq.count

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.stats is None

    def ping(self) -> bool:
        """Is the server still answering? (one ``hello``; call it from the thread that started us)"""
        try:
            self._client.hello()
            return True
        except (ServerTimeout, ServerError, zmq.ZMQError):
            return False

    def log(self, topic: str, data: dict, t: float | None = None) -> None:
        """Write one JSON message on `topic` (e.g. ``/env/episode``), timestamped now or at `t`."""
        if not topic.startswith("/") or topic in (TOPIC_STATE, TOPIC_COMMAND):
            raise ValueError(f"log to your own topic starting with '/', not {topic!r}")
        self._queue.put((topic, _plain(data), _now() if t is None else float(t)))

    # -- internals ---------------------------------------------------------------------------
    def _info_metadata(self) -> dict:
        from .. import __version__
        info = self.info or {}
        keys = ("backend", "clock", "control_period", "watchdog_timeout", "joint_names", "channels",
                "description_hash", "description", "state_layout", "max_ee_step", "protocol", "num_robots")
        meta = {k: json.dumps(_plain(info.get(k))) for k in keys}
        meta.update(format=FORMAT, format_version=str(FORMAT_VERSION), robot_env=__version__,
                    endpoint=self.endpoint, stream_endpoint=str(info.get("stream_endpoint")),
                    started=repr(_now()), host=os.uname().nodename, pid=str(os.getpid()))
        return meta

    def _sync(self) -> None:
        """Catch up: probe (a ``state`` request publishes a sample) until a sample taken now arrives.
        PUB/SUB keeps order per connection, so everything published before it is in, and a hole
        the stream dropped at the very end is counted. Gives up after 1 s without progress (a lost
        server, or a backlog that no longer moves); what it never saw is `tail_lost`."""
        target = None
        deadline = time.monotonic() + 30.0
        progress_at, count = time.monotonic(), self.state_seq.count
        while self._thread.is_alive():
            try:
                seq = self._client.state().get("seq")
            except (ServerTimeout, ServerError, zmq.ZMQError):
                break
            target = seq if target is None else target
            probe_at = time.monotonic()
            while time.monotonic() - probe_at < 0.1:
                last = self.state_seq.last
                if last is not None and last >= seq:
                    self.tail_lost = 0
                    return
                if self.state_seq.count != count:
                    progress_at, count = time.monotonic(), self.state_seq.count
                time.sleep(0.002)
            if time.monotonic() - progress_at > 1.0 or time.monotonic() > deadline:
                break
        last = self.state_seq.last
        if target is not None and last is not None and last < target:
            self.tail_lost = target - last

    def _run(self) -> None:
        sub, sink = self._sub, self._sink
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        recv, NOBLOCK = sub.recv_multipart, zmq.NOBLOCK
        last_flush = _now()
        drain_until = None
        try:
            while True:
                stopping = self._stop.is_set()
                if stopping and drain_until is None:
                    drain_until = _now() + 1.0  # what is queued now; not a stream that never ends
                ready = poller.poll(0 if stopping else 50) and not (stopping and _now() > drain_until)
                if ready:
                    for _ in range(4096):
                        try:
                            frames = recv(NOBLOCK)
                        except zmq.Again:
                            break
                        self.last_receive = t_recv = _now()
                        self._write_stream(sink, frames, t_recv)
                while True:  # messages from log(), in this thread so the writer has one user
                    try:
                        topic, data, t = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    sink.write(topic, _dumps(data), _ns(t), _ns(t))
                    self.events += 1
                if stopping and not ready:
                    break
                now = _now()
                if now - last_flush >= self.flush_interval:
                    sink.flush()
                    last_flush = now
        except BaseException as exc:  # a full disk, a bug: keep what is written, report at stop()
            self.error = exc
            log.exception("recorder thread failed")

    def _write_stream(self, sink: _McapSink, frames: list, t_recv: float) -> None:
        from ..bridge.protocol import decode, unpack_state

        if len(frames) != 2:
            self.malformed += 1
            return
        topic, payload = frames
        try:
            msg = decode(payload)
            if not isinstance(msg, dict):
                raise ValueError("not a map")
            if topic == b"state":
                unpack_state(msg)
        except Exception:
            self.malformed += 1
            return
        msg = _plain(msg)
        msg["t_recv"] = t_recv
        if topic == b"state":
            seq = msg.get("seq")
            self.state_seq.see(seq)
            sink.write(TOPIC_STATE, _dumps(msg), _ns(t_recv), _ns(msg.get("ts")), seq if isinstance(seq, int) else 0)
            self._live.set()
        elif topic == b"command":
            seq = msg.get("cseq")
            self.command_seq.see(seq)
            sink.write(TOPIC_COMMAND, _dumps(msg), _ns(t_recv), _ns(msg.get("ta")),
                       seq if isinstance(seq, int) else 0)
        else:
            self.malformed += 1

    def _make_stats(self, reason: str) -> RecordingStats:
        s, c = self.state_seq, self.command_seq
        return RecordingStats(
            path=self.path, states=s.count, commands=c.count, events=self.events, state_gaps=s.gaps,
            states_lost=s.lost, command_gaps=c.gaps, commands_lost=c.lost, restarts=s.restarts + c.restarts,
            malformed=self.malformed, tail_lost=self.tail_lost, first_state=s.first, first_command=c.first, started=self._started, stopped=_now(), reason=reason,
            missing_states=[list(r) for r in s.missing], missing_commands=[list(r) for r in c.missing])

    def _close_sockets(self) -> None:
        if self._sub is not None:
            self._sub.close(0)
            self._sub = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _abort(self) -> None:
        """start() failed: leave no half-made file behind (nothing was recorded yet)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._sink is not None:
            try:
                self._sink.close(self._make_stats("failed to start").as_metadata())
            except Exception:
                pass
            self._sink = None
            if not self.state_seq.count and not self.command_seq.count:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
        self._close_sockets()


# -- reading -----------------------------------------------------------------------------------
@dataclass
class Recording:
    """A recording read back: robot info, messages by topic, and what (if anything) was damaged.

    `problems` is empty for an intact, properly closed file. `closed` is False when the recorder
    never closed it (killed, or the machine lost power): every message up to the cut is still here.
    `damaged` is True when data inside the file (not just its unwritten tail) could not be read.
    Every record here passed its schema (`robot_env.recording.schema`); those that did not are left
    out and counted in `skipped` (reason -> count, a few examples each in `skip_examples`, and a line
    per reason in `problems`); `invalid_cseqs` are the command numbers of skipped commands.
    """
    path: str
    info: dict = field(default_factory=dict)
    summary: dict | None = None
    states: list = field(default_factory=list)
    commands: list = field(default_factory=list)
    events: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    closed: bool = False
    damaged: bool = False
    truncated: bool = False
    bytes_read: int = 0
    size: int = 0
    skipped: dict = field(default_factory=dict)
    skip_examples: dict = field(default_factory=dict)
    invalid_cseqs: list = field(default_factory=list)
    batch: int | None = None  # robots per state of a batched server's recording; None: one robot

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip_summary(self, reasons: int = 2) -> str:
        """One line: how many records were skipped, and the commonest reasons."""
        if not self.skipped:
            return ""
        top = sorted(self.skipped.items(), key=lambda kv: -kv[1])
        text = ", ".join(f"{n} × {key.replace(chr(0), ': ')}" for key, n in top[:reasons])
        return f"{self.n_skipped} invalid records skipped ({text}{', ...' if len(top) > reasons else ''})"

    def array(self, key: str, states=None) -> np.ndarray:
        """A state field over time, e.g. ``array("q")`` -> (N, 11); ``array("ts")`` -> (N,)."""
        states = self.states if states is None else states
        return np.array([s.get(key) for s in states], dtype=float)

    def gaps(self) -> tuple[SeqCounter, SeqCounter]:
        """(states, commands) gaps recounted from the messages in the file: what the stream dropped
        before the recorder saw it, plus whatever a damaged part of the file held."""
        s, c = SeqCounter(), SeqCounter()
        for m in self.states:
            s.see(m.get("seq"))
        for m in self.commands:
            c.see(m.get("cseq"))
        return s, c

    def latencies(self) -> dict:
        """Delays from the recorded stamps, in seconds: ``stream`` (state sampled -> received by the
        recorder), ``apply_to_state`` (command applied -> the next state sampled), ``send_to_apply``
        (client sent -> applied; two processes' clocks, the same clock on one host)."""
        ts = self.array("ts")
        out = {"stream": self.array("t_recv") - ts if self.states else np.zeros(0)}
        seqs = np.array([s.get("seq", -1) for s in self.states], dtype=float)
        order = np.argsort(seqs, kind="stable")
        sorted_seqs = seqs[order]
        apply, send = [], []
        for c in self.commands:
            ta = c.get("ta")
            if ta is None:
                continue
            if c.get("t") is not None:
                send.append(ta - c["t"])
            after = c.get("after")
            if after is not None and len(sorted_seqs):
                i = int(np.searchsorted(sorted_seqs, after, side="right"))
                if i < len(sorted_seqs) and sorted_seqs[i] == after + 1:  # the very next sample
                    apply.append(ts[order[i]] - ta)
        out["apply_to_state"] = np.array(apply)
        out["send_to_apply"] = np.array(send)
        return out

    def report(self) -> str:
        """A few lines: what is in the file, what the stream dropped, what the file lost."""
        s, c = self.gaps()
        span = (self.states[-1]["t_recv"] - self.states[0]["t_recv"]) if len(self.states) > 1 else 0.0
        lines = [f"{self.path}: {len(self.states)} states (seq {s.first}..{s.last}), "
                 f"{len(self.commands)} commands over {span:.2f} s; "
                 f"{self.info.get('backend', '?')} backend, {self.info.get('clock', '?')} clock"]
        if self.summary is not None:
            lines.append(f"recorder: {self.summary.get('state_gaps', 0)} gaps in the stream "
                         f"({self.summary.get('states_lost', 0)} states, {self.summary.get('commands_lost', 0)} "
                         "commands dropped before reaching it)")
        lines.append(f"in the file: {s.gaps} state gaps ({s.lost} missing), {c.gaps} command gaps "
                     f"({c.lost} missing)")
        return "\n".join(lines + self.problems)


def _parse_meta(data: dict) -> dict:
    out = {}
    for k, v in data.items():
        try:
            out[k] = json.loads(v)
        except (ValueError, TypeError):
            out[k] = v
    return out


class _ChunkError(Exception):
    pass


def _opname(op: int) -> str:
    from mcap.opcode import Opcode
    try:
        return Opcode(op).name.lower()
    except ValueError:
        return f"0x{op:02x}"


class _Reader:
    """Walks the MCAP records one by one with the `mcap` library's record parsers, checking each
    record's length against the file and each chunk's CRC; after damage it resynchronizes on the
    next intact chunk, so a hole in the middle costs only what it held."""

    def __init__(self, rec: Recording, data: bytes):
        self.rec, self.data = rec, data
        # channel id -> (topic, message encoding)
        self.channels: dict[int, tuple[str, str]] = {i: (t, "json") for i, t in FIXED_CHANNELS.items()}
        self.unknown: list = []  # messages whose channel record is not (yet) read
        self.raw: list = []  # ((topic, encoding), Message) in file order, checked once everything is read
        self.last_recv: float | None = None  # receive time of the last state or command read

    def run(self) -> None:
        from mcap.data_stream import ReadDataStream
        from mcap.opcode import Opcode
        from mcap.records import Channel, Chunk, Message, Metadata

        data, rec = self.data, self.rec
        n = len(data)
        pos = 8
        while pos < n:
            if n - pos < 9:
                self._cut(pos, "a record header")
                break
            opcode, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
            end = pos + 9 + length
            if end > n or opcode == 0 or opcode > 0x20:
                # A record running past the end: the tail of a killed recording, or a damaged header.
                nxt = self._resync(pos + 1)
                if nxt is None:
                    self._cut(pos, f"a {_opname(opcode)} record of {length} bytes" if end > n else
                              f"an unreadable record (type 0x{opcode:02x})")
                    break
                self._damage(f"bytes {pos}..{nxt} are unreadable (a damaged record header); reading "
                             f"resumed at the next intact chunk")
                pos = nxt
                continue
            stream = ReadDataStream(io.BytesIO(data[pos + 9:end]))
            try:
                if opcode == Opcode.CHUNK:
                    self._chunk(Chunk.read(stream))
                elif opcode == Opcode.CHANNEL:
                    ch = Channel.read(stream)
                    self.channels[ch.id] = (ch.topic, ch.message_encoding)
                elif opcode == Opcode.MESSAGE:
                    self._message(Message.read(stream, length))
                elif opcode == Opcode.METADATA:
                    md = Metadata.read(stream)
                    if md.name == META_INFO:
                        rec.info = _parse_meta(md.metadata)
                    elif md.name == META_SUMMARY:
                        rec.summary = _parse_meta(md.metadata)
                elif opcode == Opcode.FOOTER:
                    rec.closed = data[end:end + 8] == MAGIC
                    if not rec.closed:
                        rec.problems.append(f"the file's closing magic bytes are damaged (byte {end})")
                    pos = n
                    break
            except _ChunkError as exc:  # framing intact: skip just this chunk
                self._damage(f"the chunk at byte {pos} ({9 + length} bytes) {exc}; its messages are lost")
            except Exception as exc:
                nxt = self._resync(pos + 1)
                self._damage(f"the {_opname(opcode)} record at byte {pos} is unreadable ({type(exc).__name__}: "
                             f"{exc}); " + (f"reading resumed at byte {nxt}" if nxt is not None else
                                            f"nothing readable after it ({n - pos} bytes lost)"))
                pos = n if nxt is None else nxt
                continue
            pos = end
        rec.bytes_read = min(pos, n)
        unknown, self.unknown = self.unknown, []
        for m in unknown:  # a closed file repeats its channels in the summary section
            self._message(m)
        if self.unknown:
            self._damage(f"{len(self.unknown)} messages are on channels whose definition was lost")
        if not rec.closed and not rec.truncated:
            rec.truncated = True
            rec.problems.append("the file was not closed (no footer: the recorder was killed or its machine "
                                "stopped before it finished); every message written before that is intact")
        self._check()

    def _damage(self, text: str) -> None:
        self.rec.damaged = True
        self.rec.problems.append(text)

    def _cut(self, pos: int, what: str) -> None:
        when = f", after the message received at {self.last_recv:.3f}" if self.last_recv is not None else ""
        self.rec.truncated = True
        self.rec.problems.append(
            f"the file ends in the middle of {what} at byte {pos}{when} ({len(self.data) - pos} bytes "
            "unreadable): the recorder was killed or the file was cut short; everything before is intact")

    def _resync(self, start: int) -> int | None:
        """The offset of the next intact chunk (CRC checked) or robot-env metadata record, if any."""
        from mcap.data_stream import ReadDataStream
        from mcap.records import Chunk, Metadata
        from mcap.stream_reader import breakup_chunk

        data, n = self.data, len(self.data)
        pos = start
        while True:
            c = data.find(b"\x06", pos)
            m = data.find(b"\x0c", pos)
            cand = min(x for x in (c, m, n) if x >= 0)
            if cand + 9 > n:
                return None
            length = struct.unpack_from("<Q", data, cand + 1)[0]
            if cand + 9 + length <= n:
                body = ReadDataStream(io.BytesIO(data[cand + 9:cand + 9 + length]))
                try:
                    if data[cand] == 0x06:
                        chunk = Chunk.read(body)
                        if chunk.uncompressed_crc:
                            breakup_chunk(chunk, validate_crc=True)
                            return cand
                    elif Metadata.read(body).name in (META_INFO, META_SUMMARY):
                        return cand
                except Exception:
                    pass
            pos = cand + 1

    def _chunk(self, chunk) -> None:
        from mcap.records import Channel, Message
        from mcap.stream_reader import breakup_chunk

        try:
            records = breakup_chunk(chunk, validate_crc=True)
        except Exception as exc:
            span = (f" (messages received {chunk.message_start_time / 1e9:.3f}..{chunk.message_end_time / 1e9:.3f})"
                    if chunk.message_end_time else "")
            raise _ChunkError(f"failed its check: {type(exc).__name__}: {exc}{span}") from None
        for r in records:
            if isinstance(r, Channel):
                self.channels[r.id] = (r.topic, r.message_encoding)
            elif isinstance(r, Message):
                self._message(r)

    def _message(self, m) -> None:
        channel = self.channels.get(m.channel_id)
        if channel is None:
            self.unknown.append(m)
            return
        self.raw.append((channel, m))
        if channel[0] in (TOPIC_STATE, TOPIC_COMMAND):
            self.last_recv = m.log_time / 1e9

    # -- validation: every record against its schema, once the whole file (and its metadata) is read --
    def _check(self) -> None:
        """Decode each message (JSON only: nothing from a file is unpickled or evaluated) and keep
        those that pass their schema; skip and count the rest by reason. The joint vector's shape
        comes from the robot metadata (or, without it, the most common one), so it is known before
        the first state is checked."""
        rec = self.rec
        rec.info, bad = check_metadata(INFO_SCHEMA, rec.info)
        for exc in bad:
            self._skip(f"metadata {META_INFO}", exc, "")
        if rec.summary is not None:
            rec.summary, bad = check_metadata(SUMMARY_SCHEMA, rec.summary)
            for exc in bad:
                self._skip(f"metadata {META_SUMMARY}", exc, "")
        decoded = []
        for (topic, encoding), m in self.raw:
            if encoding != "json":
                self._skip(topic, Invalid(f"message encoding {encoding!r}, not json"), _received(m.log_time))
                continue
            try:
                msg = json.loads(m.data)
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                self._skip(topic, Invalid("not JSON", f"{type(exc).__name__}: {str(exc)[:60]}"), _received(m.log_time))
                continue
            if not isinstance(msg, dict):
                self._skip(topic, Invalid("not a JSON object", f"a JSON {type(msg).__name__}"), _received(m.log_time))
                continue
            decoded.append((topic, msg, m.log_time))
        self.raw = []  # the bytes are decoded: let them go
        dims = _dims(rec.info, [msg for topic, msg, _ in decoded if topic == TOPIC_STATE])
        rec.batch = dims["robots"]
        for topic, msg, log_time in decoded:
            kind = "state" if topic == TOPIC_STATE else "command" if topic == TOPIC_COMMAND else "event"
            try:
                check_record(kind, msg, dims)
            except Invalid as exc:
                name = "seq" if kind == "state" else "cseq"
                number = msg.get(name)
                ok_number = isinstance(number, int) and not isinstance(number, bool) and 0 <= number <= MAX_SEQ
                self._skip(topic, exc, (f"{name} {number} " if ok_number else "") + _received(log_time))
                if kind == "command" and ok_number:
                    rec.invalid_cseqs.append(number)
                continue
            if kind == "state":
                rec.states.append(msg)
            elif kind == "command":
                rec.commands.append(msg)
            else:
                rec.events.setdefault(topic, []).append(msg)
        reasons = sorted(rec.skipped.items(), key=lambda kv: -kv[1])
        for key, count in reasons[:MAX_REASONS]:
            where, why = key.split("\0")
            rec.problems.append(f"skipped {count} invalid {where} record{'s' if count != 1 else ''}: {why} "
                                f"(e.g. {'; '.join(rec.skip_examples[key])})")
        if len(reasons) > MAX_REASONS:
            rest = reasons[MAX_REASONS:]
            rec.problems.append(f"skipped {sum(n for _, n in rest)} more invalid records, for {len(rest)} other "
                                "reasons")

    def _skip(self, where: str, exc: Invalid, example: str) -> None:
        key = f"{where}\0{exc.reason}"
        count = self.rec.skipped.get(key, 0)
        self.rec.skipped[key] = count + 1
        if count < MAX_EXAMPLES:
            text = ": ".join(part for part in (example, exc.detail) if part)
            self.rec.skip_examples.setdefault(key, []).append(text or "no details")


def _received(log_time: int) -> str:
    return f"received {log_time / 1e9:.3f}"


def _dims(info: dict, states: list) -> dict:
    """The joint vectors' expected shape for `validate`: (J,), or (N, J) on a batched server of N robots.

    The robot metadata's joint count and robot count choose among the shapes the states have (a
    batched server of one robot records (1, J)); without metadata, the most common shape wins."""
    shapes = [sh for sh, _ in Counter(shape_of(s["q"]) for s in states if isinstance(s.get("q"), list)).most_common()
              if sh is not None and len(sh) in (1, 2) and min(sh) >= 1]
    joints = len(info["joint_names"]) if info.get("joint_names") else None
    robots = info.get("num_robots") or 1
    if joints is not None:
        fits = [sh for sh in shapes if sh in ((joints,), (robots, joints))]
        shape = fits[0] if fits else ((joints,) if robots == 1 else (robots, joints))
    elif shapes:
        shape = shapes[0]
    else:  # no state to learn from: a batched server's commands still need its size
        return {"joints": None, "robots": robots if robots > 1 else None}
    return {"joints": shape[-1], "robots": shape[0] if len(shape) == 2 else None}


def read_recording(path) -> Recording:
    """Read a recording, keeping whatever is intact; `Recording.problems` says what was not.

    Raises `RecordingError` only when nothing can be read (missing file, not an MCAP file, nothing
    of a robot-env recording in it).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordingError(f"cannot read recording {str(path)!r}: {exc.strerror or exc}") from None
    _need_mcap()
    rec = Recording(path=str(path), size=len(data))
    if data[:8] != MAGIC:
        raise RecordingError(f"{path} is not an MCAP recording (it does not start with the MCAP magic bytes)"
                             if len(data) >= 8 else f"{path} is empty or cut to {len(data)} bytes")
    _Reader(rec, data).run()
    if not rec.info and not rec.states:
        why = rec.skip_summary() or "; ".join(rec.problems[:2]) or "it holds no robot-env metadata and no states"
        raise RecordingError(f"{path}: no robot-env recording could be read: {why}")
    return rec


# -- replay ------------------------------------------------------------------------------------
@dataclass
class ReplayResult:
    sent: int = 0
    total: int = 0  # commands to replay (up to a hole or a recorded e-stop)
    recorded: int = 0  # valid commands in the file
    skipped: int = 0  # invalid records the reader left out (`Recording.skipped` says why)
    duration: float = 0.0
    stopped: str = ""
    problems: list = field(default_factory=list)
    trajectory: list = field(default_factory=list)  # (t since the first command, q) per reply
    final_state: dict | None = None
    recording: RecordingStats | None = None
    max_wait: float = DEFAULT_MAX_WAIT  # s, the longest wait between two commands
    jumps_capped: int = 0  # recorded gaps between commands longer than max_wait, waited max_wait
    longest_jump: float = 0.0  # the longest of them, s (after `speed`)
    jumps_back: int = 0  # commands recorded as applied before the one sent ahead of them: not waited
    longest_wait: float = 0.0  # the longest single wait between two commands, s
    waited: float = 0.0  # all waits together, s

    def __str__(self) -> str:
        s = f"replayed {self.sent} of {self.total} commands in {self.duration:.2f} s"
        if self.recorded != self.total:
            s += f" ({self.recorded} in the recording)"
        if self.skipped:
            s += f"; {self.skipped} invalid records skipped"
        if self.jumps_capped:
            s += (f"; {self.jumps_capped} waits cut to the {self.max_wait:g} s max wait (the longest gap recorded: "
                  f"{self.longest_jump:.1f} s)")
        if self.jumps_back:
            s += f"; {self.jumps_back} backward jumps in time (not waited)"
        return s + (f"; {self.stopped}" if self.stopped else "")


class _Pacer:
    """The waits between replayed commands: the recorded spacing of their apply times `ta`, scaled by
    1/`speed`, each wait at most `max_wait` (a clock step or a long pause in a recording must not
    stall a replay for as long), none for a step back in time. A replay that falls behind catches up
    without waiting, as the original schedule would."""

    def __init__(self, speed: float, max_wait: float, result: ReplayResult):
        self.speed, self.max_wait, self.result = speed, max_wait, result
        self.due: float | None = None
        self.prev: float | None = None

    def wait(self, t: float, count: bool = True) -> None:
        """Wait until the event recorded at `t` is due (`count`: jumps count as the replay's problems)."""
        r = self.result
        now = _now()
        if self.due is None:
            self.due = now
        else:
            gap = (t - self.prev) / self.speed
            if gap < 0:
                if count:
                    r.jumps_back += 1
                gap = 0.0
            elif gap > self.max_wait:
                if count:
                    r.jumps_capped += 1
                    r.longest_jump = max(r.longest_jump, gap)
                gap = self.max_wait
            self.due += gap
        self.prev = t
        delay = self.due - now
        if delay > 0:
            time.sleep(delay)
            r.waited += delay
            r.longest_wait = max(r.longest_wait, delay)


def replay_events(rec: Recording, through_gaps: bool = False) -> tuple[list, list]:
    """The commands to replay, in the order the server applied them, and notes on what is left out.

    A hole in the command numbers (``cseq``) ends the replay before it: commands after a hole would
    run from a pose the robot is not in. (The hole is either a damaged part of the file or commands
    the stream dropped; `through_gaps` replays across it anyway.) A recorded e-stop ends the replay
    with an e-stop: a replay never clears one by itself.
    """
    notes = []
    cmds: list = []
    first = (rec.summary or {}).get("first_command")
    if rec.commands and isinstance(first, int) and rec.commands[0].get("cseq", first) > first:
        notes.append(f"commands {first}..{rec.commands[0]['cseq'] - 1} were lost with a damaged part of the "
                     f"file: the replay starts at command {rec.commands[0]['cseq']}, from the pose recorded "
                     "just before it")
    dropped = {tuple(r) for r in (rec.summary or {}).get("missing_commands", [])}
    for c in rec.commands:
        seq = c.get("cseq")
        last = cmds[-1].get("cseq") if cmds else None
        if (not through_gaps and isinstance(seq, int) and isinstance(last, int) and seq > last + 1):
            invalid = sum(last < n < seq for n in rec.invalid_cseqs)
            why = ("the stream dropped them before the recorder saw them" if (last + 1, seq - 1) in dropped
                   else f"{invalid} of them skipped as invalid records" if invalid
                   else "lost with a damaged part of the file")
            notes.append(f"commands {last + 1}..{seq - 1} are missing ({why}): replaying the {len(cmds)} "
                         f"commands before the hole, not the {len(rec.commands) - len(cmds)} after it")
            break
        cmds.append(c)
    estop_at, prev = None, None
    for s in rec.states:
        if s.get("mode") == "estop" and prev not in (None, "estop"):
            estop_at = s.get("ts")
            break
        prev = s.get("mode")
    if estop_at is not None:
        before = [c for c in cmds if c.get("ta", 0.0) <= estop_at]
        notes.append(f"the recording was e-stopped at ts {estop_at:.3f} after {len(before)} commands: the replay "
                     "stops there with an e-stop (it never clears an e-stop by itself)")
        cmds = before + [{"op": "estop", "ta": estop_at}]
    return cmds, notes


def replay(path, config=None, *, speed: float = 1.0, reset: bool = True, record=None, clock: str | None = None,
           through_gaps: bool = False, max_wait: float = DEFAULT_MAX_WAIT, echo=None) -> ReplayResult:
    """Re-send a recording's commands with their original timing through the normal client.

    Works on any backend the config names (no endpoint: a spawned server on the recording's clock);
    the server validates and clips as it did when recording. With `reset`, the robot first goes to
    the recorded start pose (arm and torso, through `reset`) unless the recording begins with its
    own reset. `speed` scales the waits between commands (a `step` still takes one control period
    on a realtime server); no wait is longer than `max_wait` s (longer recorded gaps are counted in
    `ReplayResult.jumps_capped`, steps back in time in `jumps_back`, and both are `problems`). A
    damaged recording replays its intact part, and invalid records are skipped (the reader checks
    each against its schema, commands by the server's own rules, before anything is sent);
    `ReplayResult.problems` says what was lost. `record` records the replay itself to another file.
    """
    from ..model.description import ARM, TORSO
    from ..bridge.session import Session

    if not (speed > 0 and math.isfinite(speed)):
        raise ValueError(f"speed must be a positive number, got {speed}")
    if not max_wait >= 0:
        raise ValueError(f"max_wait must be a number of seconds >= 0, got {max_wait}")
    echo = echo or (lambda text: None)
    rec = read_recording(path)
    result = ReplayResult(problems=list(rec.problems), skipped=rec.n_skipped, max_wait=max_wait)
    events, notes = replay_events(rec, through_gaps)
    result.problems += notes
    result.total = len([e for e in events if e["op"] != "estop"])
    result.recorded = len(rec.commands)
    if not result.total:  # unusable: one line that says why
        why = [rec.skip_summary()] if rec.skipped else []
        why += [p for p in result.problems if not p.startswith("skipped ")][:2]
        raise RecordingError(f"{path}: no valid command to replay" + (f" ({'; '.join(why)})" if why else ""))
    for p in result.problems:
        echo(f"warning: {p}")
    try:  # what each command re-sends, by the server's own rules: all of it before anything is sent
        requests = [command_request(e, rec.batch) if e["op"] != "estop" else None for e in events]
    except Invalid as exc:  # a Recording built by hand, not read: the reader skips these
        raise RecordingError(f"{path}: a recorded command would be refused: {exc}; nothing was replayed") from None
    used = sorted({ch for e in events if e["op"] in ("step", "command") for ch in e.get("cmd", {})})
    clock = clock or rec.info.get("clock")
    session = Session(config, {"server": {"clock": clock}} if clock in ("lockstep", "realtime") else None)
    recorder = None
    try:
        client, info = session.client, session.info
        missing = [ch for ch in used if ch not in info.get("channels", [])]
        if missing:
            raise RecordingError(f"the {info.get('backend')} backend does not support the recorded "
                                 f"channel(s) {', '.join(missing)}; nothing was replayed")
        n_rec, n_srv = rec.info.get("num_robots") or 1, info.get("num_robots") or 1
        if n_rec != n_srv:
            raise RecordingError(f"the recording drove {n_rec} robot(s) per request, this server hosts {n_srv}: "
                                 "replay onto a server of the same size; nothing was replayed")
        names = rec.info.get("joint_names")
        if names and list(names) != list(info.get("joint_names", [])):
            raise RecordingError("the recording's joints differ from this robot's; nothing was replayed")
        if rec.info.get("description_hash") not in (None, info.get("description_hash")):
            echo("warning: the robot description (limits) differs from the recording's")
        if record is not None:
            recorder = Recorder(client.endpoint, record).start()
        if reset and events[0]["op"] != "reset":
            first_ta = events[0].get("ta", 0.0)
            before = [s for s in rec.states if s.get("ts", 0.0) <= first_ta] or rec.states[:1]
            if before:
                q0 = np.asarray(before[-1]["q"], dtype=float)  # (11,), or (N, 11) from a batched server
                try:
                    client.reset(options={"initial_arm_position": q0[..., ARM], "initial_torso": q0[..., TORSO]})
                except ServerError as exc:
                    raise RecordingError(f"the server refused the recorded start pose: {exc.message} [{exc.code}]; "
                                         "nothing was replayed (--no-reset starts from where the robot is)") from None
        realtime = info.get("clock") == "realtime"
        pacer = _Pacer(speed, max_wait, result)
        t0 = _now()
        for ev, req in zip(events, requests):
            pacer.wait(ev["ta"])
            op = ev["op"]
            try:
                if op == "step":
                    st = client.step(req["cmd"])
                elif op == "command":
                    st = client.command(req["cmd"])
                elif op == "reset":
                    st = client.reset(seed=req["seed"], options=req["options"])
                elif op == "estop":
                    client.estop()
                    result.stopped = "stopped at the recorded e-stop (the e-stop is latched)"
                    break
                else:
                    continue
            except ServerError as exc:
                if exc.code == "estop":
                    result.stopped = (f"the robot was e-stopped during the replay: stopped after {result.sent} "
                                      f"of {result.total} commands")
                    break
                raise RecordingError(f"the server refused recorded command {result.sent + 1} ({op}): "
                                     f"{exc.message} [{exc.code}]; replay stopped") from None
            result.sent += 1
            result.trajectory.append((_now() - t0, np.array(st["q"])))
        if realtime and rec.states and not result.stopped and result.sent:
            # let the robot run out the recording's tail (it settled while the recorder listened)
            pacer.wait(max(s["ts"] for s in rec.states), count=False)
        timing = []
        if result.jumps_capped:
            timing.append(f"{result.jumps_capped} gaps between recorded commands were longer than the {max_wait:g} s "
                          f"max wait and were cut to it (the longest: {result.longest_jump:.1f} s): the replay's "
                          "timing differs there (--max-wait keeps longer pauses)")
        if result.jumps_back:
            timing.append(f"{result.jumps_back} recorded commands were applied before the one ahead of them (the "
                          "recorded time went back): sent without waiting")
        for p in timing:
            echo(f"warning: {p}")
        result.problems += timing
        result.final_state = client.state()
        result.duration = _now() - t0
        if recorder is not None:
            result.recording = recorder.stop()
            recorder = None
    finally:
        if recorder is not None:
            try:
                recorder.stop("replay failed")
            except Exception:
                pass
        session.close()
    return result
