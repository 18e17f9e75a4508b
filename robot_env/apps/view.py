"""`robot-env view`: a running server's state live in Rerun; `teleop --view` logs what it drives.

The view is an observer: like `robot-env record` it subscribes to the server's state and command
streams (the XPUB `hello` announces) and sends only `hello` and `state` requests (the latter with
``frames`` for the cameras the backend announces, `camera_rate` times a second), so it never takes
the control lease and never moves anything; whoever drives the robot goes on undisturbed. States
are logged through `recording.rerun_log.RerunLog`, at most `rate` a second (a lockstep trainer's
thousands of states a second are thinned to the latest one per interval; the rest are counted).

Where the data goes: a native viewer spawned where there is a display (the default), Rerun's web
viewer (`--web`: a gRPC server on `bind`:`grpc_port` that the page served on `web_port` connects
to), and/or an .rrd file (`--save`, headless).
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import quote

import zmq

from ..errors import ConfigError, RobotEnvError, ServerError, ServerTimeout
from ..recording.rerun_log import RerunLog, need_rerun, new_stream


class ViewError(RobotEnvError):
    """The view cannot start or go on (no display, a camera the server lacks, a lost server)."""


def resolve_endpoint(config, endpoint):
    """(request endpoint, CurveZMQ client keys or None) from --endpoint or a config's [client]."""
    if endpoint:
        return endpoint, None
    from .. import config as configs
    cfg = configs.load(config)
    ep = cfg["client"]["endpoint"]
    if not ep:
        raise ConfigError(f"config {cfg['source']} names no [client] endpoint, and the view watches a server that "
                          "is already running. Start one, e.g. `robot-env serve --config mujoco --clock realtime "
                          "--endpoint tcp://127.0.0.1:5555`, then `robot-env view --endpoint tcp://127.0.0.1:5555`; "
                          "to watch what you drive yourself: `robot-env teleop --view`")
    try:
        from ..bridge.security import client_keys
        keys = client_keys(cfg)
    except ImportError:
        keys = None
    return ep, keys


@dataclass
class Sinks:
    """Where the log goes; `describe` says it in words (and the URL to open)."""
    save: str | None = None
    web: bool = False
    spawn: bool = False
    bind: str = "127.0.0.1"
    grpc_port: int = 9876
    web_port: int = 9090
    lines: list = field(default_factory=list)

    @property
    def flush_every(self) -> float:
        """How often buffered scalars go out (s): each send is a chunk of ~1.2 KB overhead, so a viewer
        that draws live gets them twice a second (plots lag by at most that), a file every 2 s."""
        return 0.5 if (self.web or self.spawn) else 2.0

    def check(self) -> None:
        """Before anything connects: a spawned viewer needs a display, and one way to show the data."""
        if self.web and self.spawn:
            raise ViewError("--web and --spawn both serve a viewer on the gRPC port: choose one")
        if self.spawn and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise ViewError("no display for a native Rerun viewer (DISPLAY and WAYLAND_DISPLAY are unset): use "
                            "--web for the browser viewer, or --save FILE.rrd to write a file to open later")
        if self.web:
            _port_free(self.bind, self.grpc_port, "--grpc-port")
            _port_free("0.0.0.0", self.web_port, "--web-port")
        if self.save:
            if os.path.isdir(self.save):
                raise ViewError(f"--save {self.save} is a directory; give an .rrd file name")
            parent = os.path.dirname(os.path.abspath(self.save))
            if not (os.path.isdir(parent) and os.access(parent, os.W_OK)):
                raise ViewError(f"--save {self.save}: {parent} is not a writable directory")

    def open(self, stream, blueprint) -> None:
        try:
            self._open(stream, blueprint)
        except RuntimeError as exc:  # Rerun's own: a port taken meanwhile, a viewer that cannot start
            raise ViewError(f"the Rerun viewer could not start: {exc}") from None

    def _open(self, stream, blueprint) -> None:
        rr = need_rerun()
        sinks = []
        if self.save:
            sinks.append(rr.FileSink(self.save))
            self.lines.append(f"saving to {self.save}")
        if self.web:
            server = rr.GrpcServerSink(bind_ip=self.bind, port=self.grpc_port)
            sinks.append(server)
            rr.serve_web_viewer(web_port=self.web_port, open_browser=False, connect_to=server.uri)
            self.lines.append(f"web viewer http://127.0.0.1:{self.web_port}/?url={quote(server.uri, safe='')} "
                              f"(data on {server.uri})")
        if self.spawn:
            exe = shutil.which("rerun") or os.path.join(os.path.dirname(sys.executable), "rerun")
            rr.spawn(port=self.grpc_port, connect=False, executable_path=exe if os.path.exists(exe) else None,
                     recording=stream)  # (without a recording it asks the global one, which we never start)
            sinks.append(rr.GrpcSink(f"rerun+http://127.0.0.1:{self.grpc_port}/proxy"))
            self.lines.append(f"native viewer on port {self.grpc_port}")
        stream.set_sinks(*sinks, default_blueprint=blueprint)


def _port_free(host: str, port: int, flag: str) -> None:
    """Refuse a port another program listens on, in words (Rerun would fail later, in a thread)."""
    if not 0 < port < 65536:
        raise ViewError(f"{flag} {port}: not a port number")
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ViewError(f"{flag} {port}: {host}:{port} is taken ({exc.strerror}); choose another port") from None


class Observer:
    """A server's state and command streams, and camera frames on request: hello/state only, no lease."""

    def __init__(self, endpoint: str, *, keys=None, timeout: float = 2.0, robot: int = 0):
        self.endpoint, self.keys, self.timeout, self.robot = endpoint, keys, float(timeout), int(robot)
        self.client = self.sub = None
        self.info: dict = {}
        self.cameras: dict = {}
        self.malformed = 0  # stream messages that did not decode: counted, said at the end

    def open(self) -> "Observer":
        from ..bridge.client import RobotClient
        extra = {"keys": self.keys} if self.keys is not None else {}
        self.client = RobotClient(self.endpoint, timeout=self.timeout, retries=1, **extra)
        try:
            self.info = self.client.hello()
            spec = self.info.get("spec") or {}
            self.cameras = dict(spec.get("cameras") or {}) if "frames" in self.info else {}
            robots = int(self.info.get("num_robots") or 1)
            if not 0 <= self.robot < robots:
                raise ViewError(f"--robot {self.robot}: the server at {self.endpoint} hosts robot(s) 0..{robots - 1}")
            stream = self.info.get("stream_endpoint")
            if not stream:
                raise ViewError(f"the server at {self.endpoint} announces no state stream endpoint")
            self.sub = zmq.Context.instance().socket(zmq.SUB)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.RCVHWM, 10_000)
            for topic in (b"state", b"command"):
                self.sub.setsockopt(zmq.SUBSCRIBE, topic)
            if self.keys is not None:
                self.keys.apply(self.sub)
            self.sub.connect(stream)
        except BaseException:
            self.close()
            raise
        return self

    def pick_cameras(self, names) -> list[str]:
        """The cameras to show: `names`, each checked against the spec (None: every one announced)."""
        if names is None:
            return list(self.cameras)
        unknown = [n for n in names if n not in self.cameras]
        if unknown:
            kind = self.info.get("backend", "?")
            raise ViewError(f"camera(s) {', '.join(unknown)} not announced by the {kind} backend at {self.endpoint} "
                            f"(it has {', '.join(self.cameras) or 'no cameras'})")
        return list(names)

    def receive(self, wait: float) -> list:
        """Messages that arrived within `wait` s: [(b"state" | b"command", decoded map, receive time)]."""
        from ..bridge.protocol import decode, unpack_state
        out = []
        if not self.sub.poll(max(0, int(wait * 1000))):
            return out
        for _ in range(10_000):
            try:
                parts = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            t = time.time()
            if len(parts) != 2:
                self.malformed += 1
                continue
            try:
                msg = decode(parts[1])
                if not isinstance(msg, dict):
                    raise ValueError("not a map")
                if parts[0] == b"state":
                    unpack_state(msg)
            except Exception:  # not a state we can show: the stream is the server's, never trusted blindly
                self.malformed += 1
                continue
            out.append((parts[0], msg, t))
        return out

    def grab(self, cameras: list[str]):
        """(state, frames, round trip s) of one `state` request for these cameras' frames."""
        t0 = time.monotonic()
        st = self.client.state(frames=cameras)
        return st, st.pop("frames", {}), time.monotonic() - t0

    def alive(self) -> bool:
        try:
            self.client.hello()
            return True
        except (ServerTimeout, ServerError, zmq.ZMQError):
            return False

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close(0)
            self.sub = None
        if self.client is not None:
            self.client.close()
            self.client = None


@dataclass
class ViewStats:
    received: int = 0
    logged: int = 0
    commands: int = 0
    frame_sets: int = 0
    frame_errors: int = 0
    malformed: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.logged} states logged of {self.received} received, {self.commands} commands, "
                f"{self.frame_sets} camera frame sets over {self.seconds:.1f} s"
                + (f"; {self.frame_errors} frame requests failed" if self.frame_errors else "")
                + (f"; {self.malformed} undecodable stream messages skipped" if self.malformed else ""))


def run_view(*, config="sim", endpoint=None, sinks: Sinks, duration=None, rate: float = 50.0,
             cameras=None, camera_rate: float = 10.0, robot: int = 0, server_timeout: float = 2.0,
             stop: threading.Event | None = None, echo=print) -> int:
    """The `robot-env view` loop; returns its exit status (0, or 3 when the server was lost)."""
    need_rerun()
    if not rate > 0 or camera_rate < 0:
        raise ViewError("--rate must be > 0 and --camera-rate >= 0")
    sinks.check()
    ep, keys = resolve_endpoint(config, endpoint)
    obs = Observer(ep, keys=keys, robot=robot).open()
    stop = stop or threading.Event()
    stats = ViewStats()
    stream = new_stream()
    code = 0
    try:
        cams = obs.pick_cameras(cameras) if camera_rate > 0 else []
        log = RerunLog(stream, obs.info, robot=robot)
        sinks.open(stream, log.blueprint(cams))
        log.setup()
        echo(f"VIEWING {ep} ({obs.info.get('backend')} backend, {obs.info.get('clock')} clock, cameras "
             f"{', '.join(cams) or 'none'}): {'; '.join(sinks.lines)}; Ctrl-C stops")
        start = last_msg = time.monotonic()
        period, frame_period = 1.0 / rate, (1.0 / camera_rate if cams else None)
        next_state = next_frames = next_flush = start
        pending = None
        last_probe = start
        while not stop.is_set():
            now = time.monotonic()
            if duration is not None and now - start >= duration:
                break
            due = [next_frames] if frame_period else []
            if pending is not None:
                due.append(next_state)
            wait = min([now + 0.05, *due]) - now
            for topic, msg, t in obs.receive(max(0.0, wait)):
                last_msg = time.monotonic()
                if topic == b"state":
                    stats.received += 1
                    pending = (msg, t)
                elif log.command(msg):
                    stats.commands += 1
            now = time.monotonic()
            if pending is not None and now >= next_state:
                log.state(*pending)
                stats.logged += 1
                pending, next_state = None, max(next_state + period, now)
            if frame_period and now >= next_frames:
                next_frames = max(next_frames + frame_period, now)
                st = None
                try:
                    st, frames, rtt = obs.grab(cams)
                except ServerError as exc:  # a renderer that fails: said, and the view goes on without frames
                    stats.frame_errors += 1
                    echo(f"robot-env view: frames of {', '.join(cams)} refused: {exc}", file=sys.stderr)
                    if exc.code in ("unknown_camera", "no_renderer", "bad_frames", "unsupported"):
                        frame_period = None
                except ServerTimeout:
                    pass  # a server that is gone is found out below
                if st is not None:
                    last_msg = time.monotonic()
                    stats.frame_sets += log.frames(frames, st.get("ts"), st.get("seq"), st.get("time")) > 0
                    log.latency("frames_rtt", rtt, st.get("ts"))
            if now >= next_flush:  # the buffered scalars
                log.flush()
                next_flush = now + sinks.flush_every
            # A lockstep server is quiet while nobody steps it: after a quiet spell, ask whether it is there.
            if now - last_msg > server_timeout and now - last_probe > server_timeout:
                last_probe = now
                if not obs.alive():
                    echo(f"robot-env view: error: the server at {ep} stopped answering; what was received is "
                         "kept" + (f" in {sinks.save}" if sinks.save else ""), file=sys.stderr)
                    code = 3
                    break
                last_msg = now
        if pending is not None:
            log.state(*pending)
            stats.logged += 1
        log.flush()
        stats.seconds = time.monotonic() - start
        stats.malformed = obs.malformed
    finally:
        try:
            stream.flush(timeout_sec=10.0)  # a viewer that stopped reading must not hold the exit
        except RuntimeError as exc:  # a sink that died (its port taken): the view's data is lost, say so
            echo(f"robot-env view: error: Rerun could not deliver the view: {exc}", file=sys.stderr)
            code = code or 3
        finally:
            stream.disconnect()
            obs.close()
    echo(f"viewed {stats}")
    return code


class ViewThread:
    """`teleop --view`: logs the states a driving loop already has, from a thread of its own.

    `offer(state)` never blocks the caller: it replaces the state waiting to be logged (the latest
    wins) and wakes the thread. The thread also asks for camera frames (its own client: `state`
    requests only, so it never holds the lease the driver holds).
    """

    def __init__(self, endpoint: str, info: dict, sinks: Sinks, *, keys=None, camera_rate: float = 10.0,
                 robot: int = 0):
        self.endpoint, self.info, self.sinks, self.keys = endpoint, info, sinks, keys
        self.robot = robot
        spec = info.get("spec") or {}
        self.cameras = list(spec.get("cameras") or {}) if "frames" in info and camera_rate > 0 else []
        self.frame_period = 1.0 / camera_rate if self.cameras else None
        self.stats = ViewStats()
        self.error: BaseException | None = None
        self._slot = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stream = None

    def start(self) -> "ViewThread":
        self.sinks.check()
        self.stream = new_stream()
        self.log = RerunLog(self.stream, self.info, robot=self.robot)
        self.sinks.open(self.stream, self.log.blueprint(self.cameras))
        self.log.setup()
        self._thread = threading.Thread(target=self._run, name="robot-env-view", daemon=True)
        self._thread.start()
        return self

    def offer(self, st: dict) -> None:
        with self._lock:
            self._slot = (st, time.time())
        self.stats.received += 1
        self._wake.set()

    def _run(self) -> None:
        client = None
        try:
            if self.cameras:
                from ..bridge.client import RobotClient
                extra = {"keys": self.keys} if self.keys is not None else {}
                client = RobotClient(self.endpoint, timeout=1.0, retries=0, **extra)
                client.hello()
            next_frames = next_flush = time.monotonic()
            while not self._stop.is_set():
                wait = max(0.0, next_frames - time.monotonic()) if self.frame_period else 0.1
                self._wake.wait(wait)
                self._wake.clear()
                with self._lock:
                    item, self._slot = self._slot, None
                if item is not None:
                    self.log.state(*item)
                    self.stats.logged += 1
                if time.monotonic() >= next_flush:
                    self.log.flush()
                    next_flush = time.monotonic() + self.sinks.flush_every
                if self.frame_period and time.monotonic() >= next_frames:
                    next_frames = max(next_frames + self.frame_period, time.monotonic())
                    try:
                        st = client.state(frames=self.cameras)
                    except (ServerError, ServerTimeout):
                        self.stats.frame_errors += 1
                        continue
                    self.stats.frame_sets += self.log.frames(st.pop("frames", {}), st.get("ts"), st.get("seq"),
                                                             st.get("time")) > 0
        except BaseException as exc:  # the view must never take teleop down: kept, said at close
            self.error = exc
        finally:
            if client is not None:
                client.close()

    def close(self) -> ViewStats:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self.error is None and not (self._thread and self._thread.is_alive()):  # the log has one user at a time
            with self._lock:
                item, self._slot = self._slot, None
            if item is not None:
                self.log.state(*item)
                self.stats.logged += 1
            self.log.flush()
        if self.stream is not None:
            try:
                self.stream.flush(timeout_sec=10.0)
            except RuntimeError:
                pass  # the viewer went away: what it had is what it shows
            finally:
                self.stream.disconnect()
        return self.stats


def sinks_from_view_arg(value: str) -> Sinks:
    """`teleop --view [native | web | FILE.rrd]` -> the sinks."""
    if value == "native":
        return Sinks(spawn=True)
    if value == "web":
        return Sinks(web=True)
    if value.endswith(".rrd"):
        return Sinks(save=value)
    raise ViewError(f"--view {value!r}: give native, web or a FILE.rrd to save to")
