"""RobotServer: one backend behind a ROUTER (requests) and an XPUB (numbered state stream).

Every request is validated before anything is applied; a bad one gets an error reply naming the
problem and the server keeps serving. The state stream is serialized only while someone subscribes.
Clocks (DESIGN.md): *lockstep* advances the backend by one control period per `step`; *realtime*
advances it on the wall clock, answers `step` one control period after applying the command, and
runs the command watchdog.

Time: every timeout, deadline and advance uses the monotonic clock, so a step of the system clock
never stretches the watchdog or the lease; wall-clock time only stamps messages for latency.

Long backend operations (`backend.Operation`: a move of the real arm to its start or rest pose, a
servo reboot) never block the loop: the server keeps serving state, the stream, the watchdog and
the e-stop, refuses other motion as `busy`, and answers the request that started the operation
when it is over. An e-stop cancels it.

Memory per peer is bounded in bytes: the send queues' high-water marks are sized from the size of
one reply and one state (`PEER_REPLY_BYTES`, `PEER_STREAM_BYTES`); a peer that does not read its
replies loses the ones beyond that (counted in `stats["dropped_replies"]`), and a stalled
subscriber loses states (it sees the gaps in the stream's numbering). A server whose backend renders
counts its largest possible frames in each queued reply (see `frames`), so camera frames keep the
bound too: fewer replies queue per peer.

Camera frames (`frames`): a `step`, `state` or `reset` may ask for frames of cameras the spec
announces; the names are checked before anything moves, the frames rendered after the step and
sent as extra message parts after the msgpack reply, without a copy into msgpack.

On the lockstep clock the loop spins briefly (yielding the CPU each turn, `spin` seconds) for the
next request before sleeping in poll, but only while requests keep arriving within that window:
a client stepping in a tight loop is answered by a running, cache-warm process; one that pauses
(training, a slow policy) costs one spin window, then nothing.
"""
from __future__ import annotations

import hmac
import logging
import os
import sys
import time

import zmq

from ..backends.interface import Backend
from ..control.commands import parse_command, parse_reset_options
from ..errors import RequestError
from . import protocol
from .clock import Clock
from .estop_latch import EstopLatch
from .frames import FRAME_OPS, MAX_FRAME_BYTES, MAX_FRAME_NAMES, frame_bytes, parse_frames, reply_parts
from .lease import Lease, check_token
from .protocol import VERSION, encode, error_reply, pack_state, parse_request

log = logging.getLogger("robot_env.server")
_wall = time.time  # stamps only (latency); never a deadline
_mono = time.monotonic  # every timeout, deadline and advance
_sched_yield = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))

# Bytes a peer may have queued on the server before the server drops for it (see the module docstring).
PEER_REPLY_BYTES = 256 << 10
PEER_STREAM_BYTES = 256 << 10
KERNEL_BUFFER_BYTES = 256 << 10  # SO_SNDBUF per connection: the kernel's share, bounded too
REQUEST_QUEUE = 16  # requests queued per peer while the server is busy (each at most HARD_MAX_MESSAGE)
_LATER = object()  # a handler started a long operation: its reply comes when the operation ends


_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


class RobotServer:
    def __init__(self, backend: Backend, endpoint: str, stream_endpoint: str, *, clock: str = "lockstep",
                 control_period: float = 0.04, watchdog_timeout: float = 0.25,
                 exit_on_close: bool = True, watch_fd: int | None = None, context=None,
                 spin: float = 0.0002, keys=None, lockstep_lease_timeout: float = 300.0,
                 owner: str | None = None, estop_file: str | None = None):
        self.backend = backend
        # What the backend offers (robots, channels, reset options, ...): requests are checked against
        # it, and `hello` announces it. With N robots, commands and reset options carry a robot axis.
        self.spec = backend.spec
        self.num_robots = self.spec.num_robots
        # The cameras requests may ask frames of: the spec's, from a backend that renders (`render` is
        # optional in the interface; one without it announces no cameras).
        renders = getattr(type(backend), "render", None) is not None
        if self.spec.cameras and not renders:
            raise TypeError(f"the {self.spec.kind} backend announces cameras but has no render method")
        self.cameras = dict(self.spec.cameras) if renders else {}
        self._rendered: set = set()  # cameras rendered once already (their renderers exist)
        self._check_frames = getattr(backend, "check_frames", None) if renders else None
        self.spin = spin
        self.clock = "realtime" if self.spec.realtime_only else clock
        self.period = control_period
        self.watchdog_timeout = watchdog_timeout
        self.exit_on_close = exit_on_close
        self.watch_fd = watch_fd
        self.wake_fd: int | None = None  # a pipe the signal handlers write to (`signal.set_wakeup_fd`)
        # The session that spawned this server (a secret it was handed on a pipe): only it may close
        # the server. None for a server started by hand: then the client in control may.
        self.owner = owner
        self.parent = os.getppid()
        # With CurveZMQ keys: a context of our own, whose ZAP endpoint our Guard answers (one per context).
        self._own_ctx = context is None and keys is not None
        self.ctx = context or (zmq.Context() if keys is not None else zmq.Context.instance())
        self.guard = None
        if keys is not None:
            from .security import Guard
            self.guard = Guard(self.ctx, keys)  # bound before any CURVE socket accepts a handshake
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, protocol.HARD_MAX_MESSAGE)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # A full or vanished peer makes send fail (counted) instead of silently dropping.
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.RCVHWM, REQUEST_QUEUE)
        self.router.setsockopt(zmq.SNDBUF, KERNEL_BUFFER_BYTES)
        if endpoint.startswith("tcp://["):  # an IPv6 address (else ZeroMQ would not bind it)
            self.router.setsockopt(zmq.IPV6, 1)
        if keys is not None:
            keys.apply(self.router)
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDBUF, KERNEL_BUFFER_BYTES)
        if stream_endpoint.startswith("tcp://["):
            self.pub.setsockopt(zmq.IPV6, 1)
        if keys is not None:
            keys.apply(self.pub)
        self._hello_body = self._make_hello()
        # High-water marks from the sizes of one reply and one state (set before bind: they apply
        # to the pipes of peers that connect afterwards).
        state_bytes = len(encode(pack_state(dict(backend.state(), mode="watchdog", seq=0, ts=0.0))))
        # A reply may carry frames: the largest a request can ask for counts in every queued reply.
        frames_max = min(MAX_FRAME_BYTES, sum(frame_bytes(c, self.num_robots) for c in self.cameras.values()))
        self.reply_hwm = max(2, PEER_REPLY_BYTES // (state_bytes + 256 + frames_max))
        self.stream_hwm = max(2, PEER_STREAM_BYTES // (state_bytes + 64))
        self.router.setsockopt(zmq.SNDHWM, self.reply_hwm)
        self.pub.setsockopt(zmq.SNDHWM, self.stream_hwm)
        self.router.bind(endpoint)
        self.pub.bind(stream_endpoint)
        if self.guard is not None:
            self.guard.watch(self.router, "requests")
            self.guard.watch(self.pub, "state stream")
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stream_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._hello_body["stream_endpoint"] = self.stream_endpoint
        self._hello_body["peer_queue"] = {"replies": self.reply_hwm, "states": self.stream_hwm,
                                          "reply_bytes": PEER_REPLY_BYTES, "stream_bytes": PEER_STREAM_BYTES}
        self.subscribers = 0
        self.stream_seq = 0
        # Applied commands (and resets) go on the stream under the `command` topic, numbered by
        # `command_seq`, only while someone subscribes to that topic (a recorder): a state-only
        # subscriber, or none, costs the command path one integer test.
        self.command_subscribers = 0
        self.command_seq = 0
        # A latched e-stop outlives the process where it is persisted (hardware): a software runstop
        # that a crash clears is no runstop.
        self.latch = EstopLatch(estop_file)
        self.estopped = self.latch.latched
        if self.estopped:
            log.warning("e-stop latched since a previous run (%s); motion is refused until clear_estop",
                        self.latch.path)
        self.clk = Clock(self.clock, control_period, watchdog_timeout, _mono())
        self.running = False
        self.shutting_down = False
        self._shutdown_requested = None  # why, once asked (signal, parent gone, close)
        # The long operation in progress: [op, head, req, tr, kind, started (mono)], or None.
        self.pending: list | None = None
        self.stats = {"requests": 0, "errors": 0, "overruns": 0, "dropped_replies": 0, "unroutable_replies": 0}
        self._drop_log = 0.0
        # One controller at a time (`lease.Lease`): the lease lapses after the watchdog timeout on the
        # realtime clock, `lockstep_lease_timeout` in lockstep (0: never), never while the e-stop or a
        # fault is latched.
        self.lease = Lease(watchdog_timeout if self.clock == "realtime" else lockstep_lease_timeout,
                           latched=lambda: self.estopped or bool(self.backend.faults))
        self._handlers = {
            "hello": self._hello, "reset": self._reset, "step": self._step, "command": self._command,
            "state": self._state, "estop": self._estop, "clear_estop": self._clear_estop,
            "reset_faults": self._reset_faults, "close": self._close,
            "acquire": self._acquire, "release": self._release,
        }

    # -- main loop ---------------------------------------------------------------------------
    def request_shutdown(self, why: str) -> None:
        """Ask the loop to park the robot and stop (safe from a signal handler: sets a flag)."""
        if self._shutdown_requested is None:
            self._shutdown_requested = why

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        if self.watch_fd is not None:
            poller.register(self.watch_fd, zmq.POLLIN)
        if self.wake_fd is not None:
            poller.register(self.wake_fd, zmq.POLLIN)
        guard = self.guard  # CurveZMQ: ZAP requests and handshake monitors, served from this loop
        if guard is not None:
            for sock in guard.sockets:
                poller.register(sock, zmq.POLLIN)
        router, pub = self.router, self.pub
        realtime = self.clock == "realtime"
        # Lockstep: spin briefly for the next request before sleeping in poll, as the client spins on
        # its reply; a woken process answers markedly slower than a running one. Only while requests
        # keep coming within the spin window, so a client busy elsewhere costs no CPU here.
        spin = 0.0 if realtime else self.spin
        spinning = spin > 0.0
        router_only = {router: zmq.POLLIN}
        # plain ints and the int-valued getsockopt: pyzmq's enum wrapping costs ~1 µs a check
        EVENTS, POLLIN, RCVMORE, NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.RCVMORE), int(zmq.NOBLOCK)
        raw_get = zmq.backend.Socket.get
        recv = router.recv

        def get(option, _raw=raw_get, _sock=router):
            return _raw(_sock, option)
        last_full_poll = 0.0
        self.running = True
        clk = self.clk
        clk.next_tick = _mono() + self.period
        last_parent_check = _mono()
        try:
            while self.running:
                if realtime:
                    timeout = clk.poll_timeout(_mono()) * 1000.0
                else:
                    # an operation in progress is polled at least once per control period
                    timeout = 500.0 if self.pending is None and not self.shutting_down else self.period * 1000.0
                idle = _mono()
                ready = False
                if spinning:
                    until = idle + spin
                    while not (ready := get(EVENTS) & POLLIN) and _mono() < until:
                        _sched_yield()
                if ready and idle - last_full_poll < 0.01:
                    events = router_only  # the stream and the watch pipe are polled every 10 ms
                else:
                    events = dict(poller.poll(0 if ready else timeout))
                    last_full_poll = idle
                if router in events:
                    if spin:
                        spinning = _mono() - idle < spin
                    # Drain what is queued without going back to poll: cheaper under load. Asking
                    # for readiness first spares the failing recv (an exception) after the last one.
                    for _ in range(64):
                        try:
                            frames = [recv(NOBLOCK)]
                            while get(RCVMORE):
                                frames.append(recv(NOBLOCK))
                        except zmq.Again:
                            break
                        self._on_request(frames)
                        if not get(EVENTS) & POLLIN:
                            break
                if pub in events:
                    self._on_subscription()
                if guard is not None and events is not router_only:
                    guard.handle(events)
                if self.watch_fd is not None and self.watch_fd in events:
                    if not os.read(self.watch_fd, 4096):
                        self.request_shutdown("parent gone (pipe closed)")
                if self.wake_fd is not None and self.wake_fd in events:
                    os.read(self.wake_fd, 4096)  # a signal: its handler has run
                now = _mono()
                if realtime:  # steps due first: a late answer restarts the watchdog before it is checked
                    if clk.deferred and clk.deferred[0][0] <= now:
                        self._finish_deferred(now)
                    if clk.tick_due(now):
                        self._tick(now)
                if self.pending is not None:
                    self._poll_pending()
                if now - last_parent_check > 0.5:
                    last_parent_check = now
                    if os.getppid() != self.parent:
                        self.request_shutdown("parent process died")
                if self._shutdown_requested is not None and not self.shutting_down:
                    self._begin_shutdown(self._shutdown_requested)
                if self.shutting_down and self.pending is None:
                    break
        finally:
            self.close()

    def _begin_shutdown(self, why: str) -> None:
        """Park the robot (hardware: the rest pose) while still serving, then leave the loop."""
        log.info("shutting down: %s", why)
        self.shutting_down = True
        self._cancel_pending("the server is shutting down")
        if self.estopped:
            return  # a latched e-stop: do not move; the backend leaves torque on
        try:
            op = self.backend.park()
        except Exception:
            log.exception("park failed")
            return
        if op is not None:
            self.pending = [op, None, {}, _wall(), "park", _mono()]

    def close(self) -> None:
        if self.router.closed:
            return
        try:
            if self.clk.deferred:  # realtime steps still waiting out their period: answered, never dropped
                now = _mono()
                self.clk.flush(now)
                try:
                    self._finish_deferred(now)
                except Exception:
                    log.exception("answering the waiting steps at close failed")
            self._cancel_pending("the server is closing")
            self.backend.close()
        finally:
            if self.guard is not None:
                self.guard.close()
            self.router.close(0)
            self.pub.close(0)
            if self._own_ctx:
                self.ctx.term()

    # -- replies -----------------------------------------------------------------------------
    def _send(self, head: list, payload: bytes, parts=None) -> None:
        """One reply; a peer whose queue is full (it does not read) or that is gone loses it, counted.

        `parts`: camera frames (arrays) sent after the msgpack part, each as its own message part,
        handed to ZeroMQ without a copy (it holds the array until the bytes are out)."""
        router = self.router
        try:
            for frame in head:  # send_multipart, without its per-call overhead
                router.send(frame, _MORE_NOBLOCK)
            if parts is None:
                router.send(payload, _NOBLOCK)
            else:  # once the first part is queued, ZeroMQ takes the rest of the message whole
                router.send(payload, _MORE_NOBLOCK)
                last = len(parts) - 1
                for i, part in enumerate(parts):
                    router.send(part, (zmq.SNDMORE if i < last else 0) | zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._dropped("dropped_replies", "a client does not read its replies")
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._dropped("unroutable_replies", "a client went away before its reply")

    def _dropped(self, key: str, why: str) -> None:
        self.stats[key] += 1
        now = _mono()
        if now - self._drop_log > 10.0:
            self._drop_log = now
            log.warning("dropped a reply: %s (dropped %d, unroutable %d so far)", why,
                        self.stats["dropped_replies"], self.stats["unroutable_replies"])

    # -- request handling --------------------------------------------------------------------
    def _on_request(self, frames: list) -> None:
        tr = _wall()
        self.stats["requests"] += 1
        if len(frames) == 2:
            ident, payload = frames
            head = [ident]
        elif len(frames) == 3 and frames[1] == b"":  # a REQ client: keep its delimiter
            ident, _, payload = frames
            head = [ident, b""]
        else:
            # Keep a REQ client's delimiter, or the REQ socket drops the error reply and waits forever.
            head = [frames[0], b""] if len(frames) > 3 and frames[1] == b"" else [frames[0]]
            self.stats["errors"] += 1
            self._send(head, error_reply(None, "malformed",
                                         f"expected one message frame, got {len(frames) - len(head)}"))
            return
        seq = t = None
        try:
            req = parse_request(payload)
            seq, t = req["seq"], req.get("t")
            if "frames" in req and req["op"] not in FRAME_OPS:
                raise RequestError("bad_frames", f"{req['op']} does not serve frames; ask on "
                                                 f"{', '.join(sorted(FRAME_OPS))}")
            reply = self._handlers[req["op"]](req, tr)
        except RequestError as exc:
            self.stats["errors"] += 1
            if seq is None:
                seq = getattr(exc, "seq", None)
            self._send(head, error_reply(seq, exc.code, exc.message, t))
            return
        except Exception as exc:  # a bug or a backend failure: report it, keep serving
            log.exception("request failed")
            self.stats["errors"] += 1
            self._send(head, error_reply(seq, "internal", f"{type(exc).__name__}: {exc}", t))
            return
        if reply is None:  # deferred: a realtime step
            self.clk.deferred[-1][1][0] = head
            return
        if reply is _LATER:  # a long operation: answered by `_poll_pending`
            self.pending[1] = head
            return
        reply["v"] = VERSION
        reply["seq"] = seq
        reply["ok"] = True
        reply["t"] = t
        reply["tr"] = tr
        parts = reply.pop("_parts", None)
        reply["tx"] = _wall()
        self._send(head, encode(reply), parts)

    # -- camera frames (`frames`) ------------------------------------------------------------
    def _frames_of(self, names) -> tuple | None:
        """A request's `frames` -> the camera names, checked against the spec before anything moves
        (None: no frames). The first request for a camera renders it once here, so a renderer that
        cannot start (no OpenGL context) refuses the request instead of failing after the step."""
        names = parse_frames(names, self.cameras, self.num_robots, self.spec.kind)
        if names is not None and self._check_frames is not None:
            self._check_frames(names)  # a camera with nothing to serve (hardware): refused before anything moves
        if names is not None and not self._rendered.issuperset(names):
            self._render(names)
            self._rendered.update(names)
        return names

    def _render(self, names: tuple) -> tuple[dict, list]:
        """The reply's `frames` map and its extra parts: every robot's frames of these cameras, now."""
        return reply_parts(self.backend.render(list(names)), names, self.cameras, self.num_robots)

    def _add_frames(self, reply: dict, names: tuple) -> dict:
        try:
            reply["frames"], reply["_parts"] = self._render(names)
        except RequestError as exc:  # the request was applied already: say so
            raise RequestError(exc.code, f"{exc.message} (rendering the frames, after the request was "
                                         "applied)") from None
        return reply

    def _sample(self) -> dict:
        """The backend's state with the server's view on top: mode, stream number, sample time.

        Returned in its wire form: the float vectors packed (`protocol.pack_state`).
        """
        st = self.backend.state()
        faults = st["faults"]
        st["mode"] = ("estop" if self.estopped else "fault" if faults else
                      "watchdog" if self.clk.watchdog_tripped else "ok")
        if self.pending is not None:
            st["busy"] = self.pending[0].what
        self.stream_seq += 1
        st["seq"] = self.stream_seq
        st["ts"] = _wall()
        pack_state(st)
        if self.subscribers:
            try:
                self.pub.send_multipart([b"state", encode(st)], zmq.NOBLOCK)
            except zmq.Again:
                pass  # XPUB drops for a full subscriber itself; Again only if the socket is busy
        return st

    def _guard_motion(self, op: str) -> None:
        if self.estopped:
            raise RequestError("estop", f"{op} refused: the e-stop is latched; send clear_estop first")
        if self.shutting_down:
            raise RequestError("shutting_down", f"{op} refused: the server is shutting down")
        if self.pending is not None:
            p = self.pending
            raise RequestError("busy", f"{op} refused: {p[0].what} in progress (for {_mono() - p[5]:.1f} s); "
                                       "wait for its reply, or send estop to cancel it")

    def _hello(self, req, tr):
        body = dict(self._hello_body)
        tok = req.get("token")
        body["lease"] = self.lease.info(tok if tok.__class__ is str else None, _mono())
        body["stats"] = dict(self.stats, overruns=self.stats["overruns"] + self.clk.overruns)
        return body

    def _make_hello(self) -> dict:
        """The backend's spec, and the server's clock; the top-level copies of the spec's fields are
        what clients of protocol 1 read (kept so their code keeps working)."""
        spec = self.spec
        desc = spec.description
        return {
            "protocol": VERSION,
            "spec": spec.to_wire(),
            "backend": spec.kind,
            "clock": self.clock,
            "control_period": self.period,
            "watchdog_timeout": self.watchdog_timeout,
            "description": desc.to_dict(),
            "description_hash": desc.hash(),
            "joint_names": list(desc.names),
            "channels": sorted(spec.channels),
            "num_robots": spec.num_robots,
            "max_ee_step": spec.safety.max_ee_step,
            "state_layout": pack_state(self.backend.state()).get("layout"),
            # camera frames on request (`frames`): which ops serve them, and one reply's limits
            "frames": {"ops": sorted(FRAME_OPS), "max_names": MAX_FRAME_NAMES, "max_bytes": MAX_FRAME_BYTES},
            "pid": os.getpid(),
        }

    def _reset(self, req, tr):
        self._guard_motion("reset")
        seed = req.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise RequestError("bad_request", "reset 'seed' must be a non-negative integer or nil")
        options, robots = parse_reset_options(req.get("options"), self.spec.reset_options, self.num_robots)
        names = req.get("frames")
        if names is not None:
            names = self._frames_of(names)
        lease = self.lease
        snapshot = lease.snapshot()
        if req.get("token") != lease.controller:
            lease.claim(req.get("token"), "reset", _mono())
        lease.seen = _mono()
        if self.clk.deferred:  # answer realtime steps still waiting out their period; never drop a reply
            now = _mono()
            self.clk.flush(now)
            self._finish_deferred(now)
        try:
            op = self.backend.reset(seed, options, robots)
        except RequestError:  # the backend refused (e.g. a start pose beyond the limits): no lease either
            lease.restore(snapshot)
            raise
        self.clk.last_command = None
        self.clk.watchdog_tripped = False
        if self.command_subscribers:
            msg = {"op": "reset", "seed": seed, "options": options}
            if robots is not None:
                msg["robots"] = robots
            self._publish_command(msg, req, _wall())
        if op is not None:
            self.pending = [op, None, req, tr, "reset", _mono()]
            return _LATER
        self.clk.restart(_mono())
        reply = {"ta": _wall(), "state": self._sample()}
        return reply if names is None else self._add_frames(reply, names)

    def _apply(self, req, op):
        self._guard_motion(op)
        cmd, robots = parse_command(req.get("cmd"), self.spec.channels, self.num_robots)
        lease = self.lease
        if req.get("token") != lease.controller:  # the hot path's whole lease check
            lease.claim(req.get("token"), op, _mono())
        now = _mono()
        lease.seen = now
        if self.clock == "realtime":
            self._advance_to(now)
            self.clk.commanded(now)
        self.backend.apply(cmd, robots)
        ta = _wall()
        if self.command_subscribers:
            msg = {"op": op, "cmd": cmd}
            if robots is not None:
                msg["robots"] = robots
            self._publish_command(msg, req, ta)
        return ta

    def _publish_command(self, msg: dict, req: dict, ta: float) -> None:
        """One applied command on the stream: what was applied, the client's stamp and sequence
        number, the apply time `ta`, and `after`, the stream number of the last state before it."""
        self.command_seq += 1
        msg["cseq"] = self.command_seq
        msg["t"] = req.get("t")
        msg["client_seq"] = req.get("seq")
        msg["ta"] = ta
        msg["after"] = self.stream_seq
        try:
            self.pub.send_multipart([b"command", encode(msg)], zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _step(self, req, tr):
        names = req.get("frames")
        if names is not None:  # checked before anything moves
            names = self._frames_of(names)
        ta = self._apply(req, "step")
        if self.clock == "lockstep":
            self.backend.advance(self.period)
            reply = {"ta": ta, "state": self._sample()}
            return reply if names is None else self._add_frames(reply, names)
        self.clk.defer(_mono(), [None, req.get("seq"), req.get("t"), tr, ta, names])
        return None

    def _command(self, req, tr):
        ta = self._apply(req, "command")
        return {"ta": ta, "state": self._sample()}

    def _state(self, req, tr):
        names = req.get("frames")
        if names is not None:
            names = self._frames_of(names)
        if self.clock == "realtime":
            self._advance_to(_mono())
        reply = {"state": self._sample()}
        return reply if names is None else self._add_frames(reply, names)

    def _estop(self, req, tr):
        self.estopped = True
        self.backend.hold()
        self.latch.set(True)
        self._cancel_pending("the e-stop")
        log.warning("e-stop latched")
        return {"state": self._sample()}

    def _clear_estop(self, req, tr):
        self.lease.require(req.get("token"), "clear_estop", _mono())
        self.estopped = False
        self.latch.set(False)
        self.clk.last_command = None
        self.lease.seen = _mono()  # the lease did not lapse while latched; its clock restarts now
        return {"state": self._sample()}

    def _reset_faults(self, req, tr):
        """Only the controller: recovering a servo can mean rebooting it (its torque off meanwhile)."""
        if self.pending is not None:
            self._guard_motion("reset_faults")
        reboot = req.get("reboot", [])
        if reboot is True:
            reboot = ["*"]
        if not isinstance(reboot, list) or not all(isinstance(j, str) and 0 < len(j) <= 64 for j in reboot):
            raise RequestError("bad_request", "reset_faults 'reboot' must be a list of joint names (or true)")
        tok = req.get("token")
        lease = self.lease
        if tok != lease.controller or lease.controller is None:
            if check_token(tok) is None:
                raise RequestError("not_controller", "reset_faults refused: only the client in control may "
                                                     "reset faults; send a session token (RobotClient does)")
            lease.claim(tok, "reset_faults", _mono())
        lease.seen = _mono()
        op = self.backend.reset_faults(reboot=tuple(reboot))
        if op is not None:
            self.pending = [op, None, req, tr, "reset_faults", _mono()]
            return _LATER
        return {"state": self._sample()}

    # -- long operations ---------------------------------------------------------------------
    def _poll_pending(self) -> None:
        op, head, req, tr, kind, started = self.pending
        try:
            if not op.poll():
                return
        except Exception as exc:  # a backend bug: report it on the operation, keep serving
            log.exception("%s failed", op.what)
            self.pending = None
            self._answer_pending(head, req, tr, error=("internal", f"{type(exc).__name__}: {exc}"))
            return
        self.pending = None
        try:
            extra = op.result()
        except RequestError as exc:
            self._answer_pending(head, req, tr, error=(exc.code, exc.message))
            return
        if kind == "reset":
            self.clk.last_command = None
            self.clk.watchdog_tripped = False
        self._answer_pending(head, req, tr, extra=extra)

    def _cancel_pending(self, why: str) -> None:
        if self.pending is None:
            return
        op, head, req, tr, *_ = self.pending
        op.cancel(why)
        self.pending = None
        try:
            op.result()
        except RequestError as exc:
            self._answer_pending(head, req, tr, error=(exc.code, exc.message))
        else:
            self._answer_pending(head, req, tr, error=("cancelled", f"{op.what} cancelled by {why}"))

    def _answer_pending(self, head, req, tr=None, *, error=None, extra=None) -> None:
        if head is None:  # nobody waits (a park during shutdown)
            if error is not None:
                log.error("%s", error[1])
            return
        if error is not None:
            self.stats["errors"] += 1
            self._send(head, error_reply(req.get("seq"), error[0], error[1], req.get("t")))
            return
        reply = dict(extra or {})
        reply.update({"v": VERSION, "seq": req.get("seq"), "ok": True, "t": req.get("t"), "tr": tr,
                      "ta": _wall(), "state": self._sample()})
        parts = None
        if req.get("frames"):  # checked when the request came
            try:
                reply["frames"], parts = self._render(tuple(req["frames"]))
            except Exception as exc:
                self._frames_failed(head, req.get("seq"), req.get("t"), exc)
                return
        reply["tx"] = _wall()
        self._send(head, encode(reply), parts)

    def _frames_failed(self, head, seq, t, exc) -> None:
        """Rendering failed after the request was applied (a checked camera): say so, keep serving."""
        self.stats["errors"] += 1
        if isinstance(exc, RequestError):
            code, msg = exc.code, exc.message
        else:
            log.exception("rendering failed")
            code, msg = "internal", f"{type(exc).__name__}: {exc}"
        self._send(head, error_reply(seq, code, f"{msg} (rendering the frames, after the request was applied)", t))

    # -- control lease (`lease.Lease`) --------------------------------------------------------
    def _acquire(self, req, tr):
        return {"lease": self.lease.acquire(req.get("token"), req.get("force", False), _mono())}

    def _release(self, req, tr):
        released, info = self.lease.release(req.get("token"), _mono())
        return {"released": released, "lease": info}

    def _close(self, req, tr):
        """Close parks the robot and ends the server: only for the session that spawned it (it
        proves that with the secret it handed the server), or, for a server started by hand, the
        client in control."""
        if self.owner is not None:
            given = req.get("owner")
            if given.__class__ is not str or not hmac.compare_digest(given.encode(), self.owner.encode()):
                raise RequestError("not_controller", "close refused: only the session that started this server "
                                                     "may close it")
        else:
            tok = req.get("token")
            if tok is None or tok != self.lease.controller or self.lease.free(_mono()):
                raise RequestError("not_controller", "close refused: only the client in control of this server "
                                                     "may close it (acquire() first)")
        if self.exit_on_close:
            self.request_shutdown("close requested by " + ("its owner" if self.owner is not None else "the controller"))
        return {}

    # -- realtime clock ----------------------------------------------------------------------
    def _advance_to(self, now: float) -> None:
        dt = self.clk.elapsed(now)
        if dt > 0:
            self.backend.advance(dt)

    def _tick(self, now: float) -> None:
        self._advance_to(now)
        if self.clk.watchdog_trips(now, self.estopped):
            self.backend.hold()
            log.warning("command watchdog: no command for %.3f s; holding", now - self.clk.last_command)
        if self.subscribers:
            self._sample()

    def _finish_deferred(self, now: float) -> None:
        self._advance_to(now)
        for overrun, (head, seq, t, tr, ta, names) in self.clk.due_steps(now):
            if overrun > 0.25 * self.period:
                self.stats["overruns"] += 1
            reply = {"v": VERSION, "seq": seq, "ok": True, "t": t, "tr": tr, "ta": ta,
                     "state": self._sample(), "overrun": overrun}
            parts = None
            if names is not None:
                try:
                    reply["frames"], parts = self._render(names)
                except Exception as exc:
                    self._frames_failed(head, seq, t, exc)
                    continue
            reply["tx"] = _wall()
            self._send(head, encode(reply), parts)

    def _on_subscription(self) -> None:
        while True:
            try:
                msg = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.subscribers += 1
                if b"command".startswith(msg[1:]):
                    self.command_subscribers += 1
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)
                if b"command".startswith(msg[1:]):
                    self.command_subscribers = max(0, self.command_subscribers - 1)


def build_server(cfg: dict, *, endpoint: str | None = None, stream_endpoint: str | None = None,
                 allow_client_keys=(), **kwargs) -> RobotServer:
    """Construct the backend a config names and the server around it (binding the sockets)."""
    from ..backends.registry import load_backend
    from ..config import backend_kwargs
    from .endpoints import check_bind, private_ipc, stream_endpoint_for
    from .estop_latch import estop_path
    from .security import server_keys

    srv = cfg["server"]
    ep = endpoint or srv["endpoint"] or private_ipc()[0]
    sep = stream_endpoint or srv["stream_endpoint"] or stream_endpoint_for(ep)
    keys = server_keys(cfg, allow_client_keys)  # None without [server.security] server_secret_key
    for e in (ep, sep):
        warning = check_bind(e, srv["insecure"], secure=keys is not None)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    backend = load_backend(srv["backend"], **backend_kwargs(cfg))
    try:
        return RobotServer(backend, ep, sep, clock=srv["clock"], control_period=srv["control_period"],
                           watchdog_timeout=cfg["server.safety"]["watchdog_timeout"], keys=keys,
                           lockstep_lease_timeout=srv["lockstep_lease_timeout"],
                           estop_file=estop_path(cfg, backend), **kwargs)
    except BaseException:
        backend.close()
        raise
