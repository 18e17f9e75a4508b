"""The client never hangs on a dead server, drops stale replies, and spawned servers never outlive us.

Real processes and real sockets. Elapsed-time bounds here are correctness bounds (the error must
come within the client's timeout), not benchmarks.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import zmq

from robot_env import config
from robot_env.bridge import protocol
from robot_env.bridge.client import RobotClient
from robot_env.bridge.spawn import ServerProcess
from robot_env.errors import ServerTimeout

pytestmark = pytest.mark.timeout(60)

SLACK = 1.0  # allowed beyond the client's timeout


def fresh_ipc(tag: str) -> str:
    return f"ipc://@robot-env-test-{os.getpid()}-{secrets.token_hex(4)}-{tag}"


def pid_gone(pid: int) -> bool:
    """True once `pid` no longer exists or is a zombie nobody has reaped yet (it runs nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pid_gone(pid):
            return True
        time.sleep(0.05)
    return pid_gone(pid)


class FakeServer:
    """A tiny ROUTER "server" on a thread; `handler(fake, ident, msg)` decides what to answer."""

    def __init__(self, handler, endpoint: str | None = None):
        self.handler = handler
        self.endpoint = endpoint or fresh_ipc("fake")
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)
        self.requests: list[tuple[bytes, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            frames = self.sock.recv_multipart()
            msg = protocol.decode(frames[-1])
            self.requests.append((frames[0], msg))
            self.handler(self, frames[0], msg)

    def send(self, ident: bytes, seq, **fields):
        body = {"v": protocol.VERSION, "seq": seq, "ok": True, "t": None, "tr": 0.0, "tx": 0.0, **fields}
        self.sock.send_multipart([ident, protocol.encode(body)])

    def ops(self) -> list[str]:
        return [m["op"] for _, m in self.requests]

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


# -- dead or absent servers ----------------------------------------------------------------------
def test_killed_server_gives_timeout_not_hang(ctx):
    sp = ServerProcess(config.load("sim"))
    try:
        before = RobotClient(sp.endpoint, timeout=1.0, context=ctx)
        assert before.hello()["backend"] == "kinematic"
        before.step({"ee_delta": [0.01, 0.0, 0.0]})
        sp.proc.kill()
        sp.proc.wait(5)
        assert sp.proc.returncode == -signal.SIGKILL

        t0 = time.monotonic()
        with pytest.raises(ServerTimeout) as info:
            before.step({"ee_delta": [0.01, 0.0, 0.0]})
        elapsed = time.monotonic() - t0
        assert elapsed < before.timeout + SLACK, elapsed
        assert sp.endpoint in str(info.value)
        assert "step" in str(info.value)

        # idempotent ops retry, but all retries together stay within the timeout
        t0 = time.monotonic()
        with pytest.raises(ServerTimeout):
            before.state()
        assert time.monotonic() - t0 < before.timeout + SLACK

        after = RobotClient(sp.endpoint, timeout=1.0, context=ctx)
        t0 = time.monotonic()
        with pytest.raises(ServerTimeout):
            after.step({"ee_delta": [0.01, 0.0, 0.0]})
        assert time.monotonic() - t0 < after.timeout + SLACK
        before.close()
        after.close()
    finally:
        sp.close()
    assert not sp.alive()


@pytest.mark.parametrize("endpoint", [fresh_ipc("nobody"), "tcp://127.0.0.1:9"],
                         ids=["ipc", "tcp"])
def test_nobody_listening_hello_times_out_with_retries(ctx, endpoint):
    client = RobotClient(endpoint, timeout=1.0, retries=2, context=ctx)
    try:
        t0 = time.monotonic()
        with pytest.raises(ServerTimeout) as info:
            client.hello()
        elapsed = time.monotonic() - t0
        assert elapsed < client.timeout + SLACK, elapsed
        # the retries share the timeout: it is neither exceeded nor given up on early
        assert elapsed >= 0.8 * client.timeout, elapsed
        assert client.seq == 3  # one attempt plus two retries, each with its own sequence number
        assert "hello" in str(info.value) and endpoint in str(info.value)
    finally:
        client.close()


# -- sequence numbers, stale replies, retries ----------------------------------------------------
def test_stale_reply_is_dropped_and_reply_matched_by_seq(ctx):
    timeout = 0.4
    held: dict = {}

    def handler(fake, ident, msg):
        if msg["op"] == "step":  # hold this one past the client's timeout
            held["ident"], held["seq"] = ident, msg["seq"]
            return
        # the next request: first the late answer to the held step, then garbage, then the real answer
        time.sleep(0.05)
        fake.send(held["ident"], held["seq"], state={"who": "stale-old-socket"})
        fake.send(ident, held["seq"], state={"who": "stale"})
        fake.sock.send_multipart([ident, b"\xc1 not msgpack"])
        fake.send(ident, msg["seq"] + 1000, state={"who": "future"})
        time.sleep(0.05)
        fake.send(ident, msg["seq"], state={"who": "fresh"})

    fake = FakeServer(handler)
    client = RobotClient(fake.endpoint, timeout=timeout, retries=0, context=ctx)
    try:
        t0 = time.monotonic()
        with pytest.raises(ServerTimeout):
            client.step({"ee_delta": [0.0, 0.0, 0.0]})
        assert time.monotonic() - t0 < timeout + SLACK
        st = client.state()
        assert st == {"who": "fresh"}
        assert fake.ops() == ["step", "state"]
        seqs = [m["seq"] for _, m in fake.requests]
        assert seqs[1] > seqs[0]
    finally:
        client.close()
        fake.close()


def test_only_idempotent_ops_are_retried(ctx):
    def handler(fake, ident, msg):
        n_same = sum(1 for _, m in fake.requests if m["op"] == msg["op"])
        if msg["op"] == "hello" and n_same >= 2:  # drop the first hello, answer the retry
            fake.send(ident, msg["seq"], backend="fake")

    fake = FakeServer(handler)
    client = RobotClient(fake.endpoint, timeout=1.5, retries=2, context=ctx)
    try:
        assert client.hello()["backend"] == "fake"
        hellos = [m for _, m in fake.requests if m["op"] == "hello"]
        assert len(hellos) == 2
        assert hellos[1]["seq"] > hellos[0]["seq"]

        t0 = time.monotonic()
        with pytest.raises(ServerTimeout):
            client.step({"ee_delta": [0.0, 0.0, 0.0]})
        assert time.monotonic() - t0 < client.timeout + SLACK
        time.sleep(0.2)
        assert fake.ops().count("step") == 1  # a step is never sent twice
    finally:
        client.close()
        fake.close()


def test_timed_out_request_is_not_delivered_to_a_late_server(ctx):
    endpoint = fresh_ipc("late")
    client = RobotClient(endpoint, timeout=0.3, retries=0, context=ctx)
    fake = None
    try:
        with pytest.raises(ServerTimeout):
            client.step({"ee_delta": [0.05, 0.0, 0.0]})

        fake = FakeServer(lambda f, ident, msg: f.send(ident, msg["seq"], state={"op": msg["op"]}), endpoint)
        assert client.state() == {"op": "state"}
        time.sleep(0.3)  # give a queued step every chance to show up
        assert fake.ops() == ["state"]
    finally:
        client.close()
        if fake is not None:
            fake.close()


# -- server process lifetime ---------------------------------------------------------------------
def test_server_gone_after_close(ctx):
    sp = ServerProcess(config.load("sim"))
    pid = sp.proc.pid
    client = RobotClient(sp.endpoint, timeout=2.0, context=ctx)
    assert client.hello()["pid"] == pid
    client.close()
    t0 = time.monotonic()
    sp.close()
    assert time.monotonic() - t0 < 3.0  # the server left on its own; no escalation needed
    assert sp.proc.returncode == 0
    assert pid_gone(pid)
    probe = RobotClient(sp.endpoint, timeout=0.5, retries=0, context=ctx)
    try:
        with pytest.raises(ServerTimeout):
            probe.hello()
    finally:
        probe.close()


PARENT = textwrap.dedent("""
    import os, signal, sys, time
    from robot_env import config
    from robot_env.bridge.spawn import ServerProcess
    sp = ServerProcess(config.load("sim"))
    print(sp.proc.pid, flush=True)
    sys.stdin.readline()  # wait until the test has read the pid
    if sys.argv[1] == "exit":
        os._exit(0)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)
""")


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_server_dies_with_its_parent(how):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, how], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    server_pid = None
    try:
        line = parent.stdout.readline()
        server_pid = int(line)
        assert not pid_gone(server_pid)
        parent.stdin.write("go\n")
        parent.stdin.flush()
        parent.wait(10)
        assert parent.returncode == (0 if how == "exit" else -signal.SIGKILL)
        assert wait_gone(server_pid, 5.0), f"server {server_pid} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if server_pid is not None and not pid_gone(server_pid):
            os.kill(server_pid, signal.SIGKILL)
