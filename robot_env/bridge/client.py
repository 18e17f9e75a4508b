"""RobotClient: a DEALER that talks to a RobotServer with timeouts, never hanging on a dead server.

Replies are matched by sequence number and stale ones dropped. Only idempotent requests (`hello`,
`state`) are retried; after any timeout the socket is rebuilt so a queued request can never be
delivered late to a server that comes back (the "lazy pirate" pattern). The client briefly spins
on the reply before sleeping in poll: on loopback that halves the round trip. Each spin turn
yields the CPU (`sched_yield`), so ZeroMQ's I/O threads, which carry the reply, are never kept
waiting behind the spinning thread on a machine with few cores.

Control (DESIGN.md, one controller at a time): every request carries this client's session token
(`token`, random unless given). The server lets only the controller's motion requests (step,
command, reset) through; the first one acquires a free lease implicitly, so nothing has to call
`acquire` first. `acquire(force=True)` takes control over from another client, `release()` gives it
back, and `close()` releases it. A refused motion request raises `ServerError` with code
``not_controller``.

CurveZMQ: pass `keys` (a `security.ClientKeys`) to talk to a server that requires them.

Replies' states arrive packed (`protocol.pack_state`); `request` returns them with named
float64 views (`st["q"]`, `st["ee"]`, ...), see `protocol.unpack_state`.

Camera frames: `step(cmd, frames=["head"])` (and `reset`, `state`) asks for them; the returned state
then holds ``st["frames"] = {name: (n, h, w, c) ndarray}``, read-only views of the reply's extra
message parts (received without a copy), checked against the cameras the server's `hello`
announced (`frames.decode_frames`): a reply whose frames do not add up raises ServerError
``malformed``.
"""
from __future__ import annotations

import os
import secrets
import time

import zmq

from ..errors import RequestError, ServerError, ServerTimeout
from .frames import decode_frames
from .latency import LatencyStats
from .protocol import IDEMPOTENT_OPS, VERSION, decode, encode, unpack_state

_wall = time.time  # the request's stamp (latency); never a deadline
_mono = time.monotonic  # timeouts: a step of the system clock must not stretch or cut them
_raw_get = zmq.backend.Socket.get  # the int-valued getsockopt, without pyzmq's enum wrapping
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
# Spinning on a reply gives the CPU away on every turn: ZeroMQ's I/O threads (ours and the
# server's) must run for the reply to arrive at all, and on a machine with few cores a plain
# busy loop makes them wait for the scheduler to preempt it (measured: p99 round trip ~0.7 ms
# instead of ~0.2 ms on 2 cores).
_yield = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


class RobotClient:
    def __init__(self, endpoint: str, *, timeout: float = 5.0, retries: int = 2, spin: float = 0.0005,
                 context=None, token: str | None = None, keys=None, owner: str | None = None):
        self.endpoint = endpoint
        self.token = token or secrets.token_hex(16)  # this session's identity for the control lease
        self.owner = owner  # the secret of a server we spawned: `close(shutdown=True)` proves it
        self.keys = keys  # security.ClientKeys, or None: no CurveZMQ
        self._may_hold = False  # sent a motion request or acquire: release control on close
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.spin = spin
        self.ctx = context or zmq.Context.instance()
        self.seq = 0
        self.latency = LatencyStats()
        self.info: dict | None = None
        self._cameras = None  # the hello's spec cameras and robots: what frames are checked against
        self._robots = None
        self._parts = None  # the extra message parts (camera frames) of the last reply
        self.sock = None
        self._connect()

    def _connect(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if self.endpoint.startswith("tcp://["):  # an IPv6 server address
            self.sock.setsockopt(zmq.IPV6, 1)
        if self.keys is not None:
            self.keys.apply(self.sock)
        self.sock.connect(self.endpoint)

    # -- generic request ---------------------------------------------------------------------
    def request(self, op: str, **fields) -> dict:
        asked = fields.get("frames")
        if asked is not None and self.info is not None and "frames" not in self.info:
            raise ServerError("unsupported", f"the server at {self.endpoint} predates camera frames (its hello "
                                             "announces no 'frames'); nothing was sent", op)
        attempts = self.retries + 1 if op in IDEMPOTENT_OPS else 1
        wait = self.timeout / attempts
        for _ in range(attempts):
            self.seq += 1
            seq = self.seq
            fields["v"] = VERSION
            fields["op"] = op
            fields["seq"] = seq
            fields["token"] = self.token
            t_send = fields["t"] = _wall()
            deadline = _mono() + wait
            try:
                self.sock.send(encode(fields), zmq.NOBLOCK)
            except zmq.Again:
                self._connect()
                continue
            reply = self._wait(seq, deadline)
            if reply is not None:
                t_recv = _wall()
                if not reply.get("ok"):
                    err = reply.get("error") or {}
                    raise ServerError(err.get("code", "unknown"), err.get("message", "error"), op)
                self.latency.record(op, t_send, t_recv, reply)
                if self._parts is not None or asked is not None:
                    self._frames(reply, asked, op)
                st = reply.get("state")
                if st is not None:
                    try:
                        unpack_state(st)  # named float64 views into the packed arrays
                    except Exception as exc:
                        raise ServerError("malformed", f"undecodable state in the reply: {exc}", op) from None
                return reply
            self._connect()
        hint = ("; is it running? CurveZMQ is on: a wrong server public key, or a client key the server "
                "does not allow, also looks like this (the server logs each refused connection)"
                if self.keys is not None else "; is it running?")
        raise ServerTimeout(f"no reply from the robot server at {self.endpoint} to {op!r} within "
                            f"{self.timeout:g} s{hint}")

    def _frames(self, reply: dict, asked, op: str) -> None:
        """The reply's camera frames -> reply["frames"] = {name: ndarray}, views of the parts."""
        parts, self._parts = self._parts or [], None
        meta = reply.get("frames")
        if meta is None and not parts and not asked:
            return
        if meta is None:
            meta = {}
        try:
            reply["frames"] = decode_frames(meta, parts, self._cameras, self._robots, asked or ())
        except ValueError as exc:
            raise ServerError("malformed", f"bad camera frames in the reply: {exc}", op) from None

    def _wait(self, seq: int, deadline: float):
        sock = self.sock
        get = sock.get
        spin_until = _mono() + self.spin
        while True:
            # While spinning, ask for readiness (a plain int) instead of a failing recv: each zmq.Again
            # costs ~4 µs of the CPU the server needs on a 2-core machine.
            if _raw_get(sock, _EVENTS) & _POLLIN == 0 and _mono() < spin_until:
                _yield()
                continue
            try:
                data = sock.recv(zmq.NOBLOCK)
                parts = None
                if get(zmq.RCVMORE):  # camera frames: the parts as ZeroMQ holds them, no copy
                    parts = []
                    while True:
                        parts.append(sock.recv(zmq.NOBLOCK, copy=False))
                        if not get(zmq.RCVMORE):
                            break
            except zmq.Again:
                now = _mono()
                if now < spin_until:
                    _yield()
                    continue
                if now >= deadline or not sock.poll(max(1, int((deadline - now) * 1000))):
                    if _mono() >= deadline:
                        return None
                continue
            try:
                reply = decode(data)
            except RequestError as exc:
                if exc.code == "too_large":  # not garbage: a reply we refuse to unpack, say so
                    raise ServerError("too_large", f"a reply of {len(data)} bytes exceeds the protocol's "
                                                   "message limit", "reply") from None
                continue  # garbage on our own socket: ignore, keep waiting
            if isinstance(reply, dict) and reply.get("seq") == seq:
                self._parts = parts
                return reply
            # a stale reply to an earlier, timed-out request: drop it

    # -- operations --------------------------------------------------------------------------
    def hello(self) -> dict:
        self.info = self.request("hello")
        spec = self.info.get("spec") or {}
        self._cameras = spec.get("cameras") or {}
        self._robots = self.info.get("num_robots")
        return self.info

    @staticmethod
    def _with_frames(reply: dict) -> dict:
        st = reply["state"]
        st["frames"] = reply.get("frames", {})
        return st

    def reset(self, seed=None, options=None, frames=None) -> dict:
        """`frames`: camera names whose frames the returned state carries in ``st["frames"]``."""
        self._may_hold = True
        if frames:
            return self._with_frames(self.request("reset", seed=seed, options=options or {}, frames=list(frames)))
        return self.request("reset", seed=seed, options=options or {})["state"]

    def step(self, cmd: dict, frames=None) -> dict:
        """`frames`: camera names whose frames the returned state carries in ``st["frames"]``."""
        self._may_hold = True
        if frames:
            return self._with_frames(self.request("step", cmd=cmd, frames=list(frames)))
        return self.request("step", cmd=cmd)["state"]

    def command(self, cmd: dict) -> dict:
        self._may_hold = True
        return self.request("command", cmd=cmd)["state"]

    def acquire(self, force: bool = False) -> dict:
        """Take control of the robot (`force`: even from another client that holds it); returns the
        lease ({held, yours, idle, timeout}). Refused with ServerError code ``not_controller``."""
        self._may_hold = True
        return self.request("acquire", force=bool(force))["lease"]

    def release(self) -> bool:
        """Give control back; True when this client held it."""
        reply = self.request("release")
        self._may_hold = False
        return reply["released"]

    def state(self, frames=None) -> dict:
        if frames:
            return self._with_frames(self.request("state", frames=list(frames)))
        return self.request("state")["state"]

    def estop(self) -> dict:
        return self.request("estop")["state"]

    def clear_estop(self) -> dict:
        return self.request("clear_estop")["state"]

    def reset_faults(self) -> dict:
        return self.request("reset_faults")["state"]

    def close(self, shutdown: bool = False) -> None:
        """Close the socket; with `shutdown`, first ask a server we spawned to exit."""
        if self.sock is None:
            return
        if self._may_hold and not shutdown:  # let the next client in without waiting for a lapse
            try:
                old, self.timeout = self.timeout, min(self.timeout, 0.5)
                self.release()
            except Exception:
                pass
            finally:
                self.timeout = old
        if shutdown:
            try:
                old, self.timeout = self.timeout, min(self.timeout, 1.0)
                self.request("close", owner=self.owner)
                self.timeout = old
            except Exception:
                pass
        self.sock.close(0)
        self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
