"""`Recorder`: subscribes to a server's state and command streams from a background thread and writes
every message to an MCAP file, flushing a chunk every `flush_interval` (what a crash can lose)."""
from __future__ import annotations

import json
import os
import queue
import threading
import time

import zmq

from ..errors import ServerError, ServerTimeout
from .format import (
    FIXED_CHANNELS,
    FORMAT,
    FORMAT_VERSION,
    META_INFO,
    META_SUMMARY,
    TOPIC_COMMAND,
    TOPIC_RECORDER,
    TOPIC_STATE,
    RecordingError,
    RecordingStats,
    SeqCounter,
    _dumps,
    _need_mcap,
    _now,
    _ns,
    _plain,
    log,
)
from .schema import COMMAND_SCHEMA, EVENT_SCHEMA, STATE_SCHEMA


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

    `cameras`: also record these cameras' frames (a server renders them only on request): a thread
    of its own asks for them with a ``state`` request `camera_rate` times a second (default: the
    server's control rate) and logs each on ``/camera/<name>`` stamped with that state's sample
    time, so a reader places it on the backend's clock exactly. `camera_polls`, `camera_late`
    (polls that came later than their period) and `camera_errors` count how that went. On a lockstep
    server, which moves only when stepped, frames polled at a wall-clock rate land wherever the
    stepping client happens to be: record the env's own frames there (`RecordEpisodes` with an env
    made with `cameras=`), or run the server on the realtime clock.
    """

    def __init__(self, source, path, *, flush_interval: float = 0.2, timeout: float = 5.0,
                 rcvhwm: int = 100_000, keys=None, cameras=(), camera_rate: float | None = None):
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
        self._schemas: dict = {}  # topic -> its schema, for topics logged with one (camera frames)
        self._started = 0.0
        self.cameras = tuple(cameras or ())
        self.camera_rate = camera_rate
        self.camera_polls = self.camera_late = self.camera_errors = 0
        self._camera_thread: threading.Thread | None = None
        self._camera_stop = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Recorder":
        if self._thread is not None:
            raise RecordingError("this recorder is already running")
        from ..bridge.client import RobotClient

        extra = {"keys": self.keys} if self.keys is not None else {}
        self._client = RobotClient(self.endpoint, timeout=min(self.timeout, 2.0), retries=1, **extra)
        try:
            self.info = self._client.hello()
            if self.cameras:
                self._check_cameras()  # before the file exists: a refused camera leaves nothing
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
            if self.cameras:
                self._start_cameras()
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
        self._stop_cameras()
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

    def log_frame(self, camera: str, frame, t: float | None = None) -> None:
        """Write one camera frame ((h, w, c): RGB uint8 or depth float32) on ``/camera/<camera>`` as a
        ``foxglove.RawImage`` (Foxglove shows it as an image)."""
        from .images import CAMERA_TOPIC, RAW_IMAGE_SCHEMA, encode_frame
        t = _now() if t is None else float(t)
        topic = CAMERA_TOPIC + camera
        self._schemas.setdefault(topic, RAW_IMAGE_SCHEMA)
        self._queue.put((topic, encode_frame(frame, t, camera), t))

    # -- camera frames (`cameras`) -------------------------------------------------------------
    def _check_cameras(self) -> None:
        offered = (self.info.get("spec") or {}).get("cameras") or {}
        lack = [c for c in self.cameras if c not in offered]
        if lack:
            raise RecordingError(f"camera(s) {', '.join(lack)} asked for, which the server at {self.endpoint} does "
                                 f"not offer (it has {', '.join(offered) or 'no cameras'})")
        if "frames" not in self.info:
            raise RecordingError(f"the server at {self.endpoint} predates camera frames (its hello announces no "
                                 "'frames')")
        if self.camera_rate is None:
            period = self.info.get("control_period") or 0.04
            self.camera_rate = 1.0 / period
        if not self.camera_rate > 0:
            raise RecordingError(f"camera_rate must be > 0 frames/s, got {self.camera_rate}")

    def _start_cameras(self) -> None:
        self._camera_thread = threading.Thread(target=self._poll_cameras, name="robot-env-recorder-cameras",
                                               daemon=True)
        self._camera_thread.start()
        # the first frames (a renderer's first frame takes a while): before start() returns, so the
        # caller's first episode has images from its start
        deadline = time.monotonic() + max(self.timeout, 10.0)
        while self.camera_polls == 0 and self._camera_thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if self.camera_polls == 0:
            raise RecordingError(f"no frames of camera(s) {', '.join(self.cameras)} arrived from {self.endpoint}")

    def _stop_cameras(self) -> None:
        self._camera_stop.set()
        if self._camera_thread is not None:
            self._camera_thread.join()
            self._camera_thread = None

    def _poll_cameras(self) -> None:
        """Ask for the cameras' frames every 1/camera_rate s (its own client: a client is one thread's)."""
        from ..bridge.client import RobotClient

        extra = {"keys": self.keys} if self.keys is not None else {}
        period = 1.0 / self.camera_rate
        client = RobotClient(self.endpoint, timeout=min(self.timeout, 2.0), retries=1, **extra)
        try:
            client.hello()
            due = time.monotonic()
            while not self._camera_stop.is_set():
                try:
                    st = client.state(frames=self.cameras)
                except (ServerTimeout, ServerError, zmq.ZMQError):
                    self.camera_errors += 1
                    self._camera_stop.wait(period)
                    due = time.monotonic()
                    continue
                for name, frames in (st.get("frames") or {}).items():
                    # one robot's server: (1, h, w, c); a batched server's: robot 0's
                    self.log_frame(name, frames[0], t=float(st["ts"]))
                self.camera_polls += 1
                due += period
                wait = due - time.monotonic()
                if wait < 0:
                    self.camera_late += 1
                    due = time.monotonic()
                else:
                    self._camera_stop.wait(wait)
        except BaseException as exc:  # keep the recording going; say it at stop()
            self.camera_errors += 1
            log.exception("recorder camera thread failed: %s", exc)
        finally:
            client.close()

    # -- internals ---------------------------------------------------------------------------
    def _info_metadata(self) -> dict:
        from .. import __version__
        info = self.info or {}
        keys = ("backend", "clock", "control_period", "watchdog_timeout", "joint_names", "channels",
                "description_hash", "description", "state_layout", "max_ee_step", "protocol", "num_robots")
        meta = {k: json.dumps(_plain(info.get(k))) for k in keys}
        meta["reset_options"] = json.dumps(_plain((info.get("spec") or {}).get("reset_options")))
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
                    if topic in self._schemas:
                        sink.channel(topic, self._schemas[topic])
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
        self._stop_cameras()
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
