"""Fuzzing a live robot server: random bytes (pipelined) and structured messages (hypothesis).

One server process (kinematic sim, lockstep, loopback tcp, started without exit-on-close so a
fuzzed `close` is harmless). A separate client holds the control lease for the whole module, so
a fuzzed motion request that happens to be well formed is still refused (`not_controller`, see
test_lease.py). The checks: the server never crashes and never reports an internal error; every
message that is due a reply gets exactly one; no motion request is accepted; the robot's state
is exactly what it was before the fuzzing; a normal client still works afterwards.

Default run: 100,000 random messages and 3,000 structured examples. Under ``-m slow``: 1,000,000
random messages and 50,000 structured examples. FUZZ_SEED sets the random fuzzer's seed.
"""
from __future__ import annotations

import collections
import os
import random
import socket
import struct
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from support import free_port_pair

from robot_env import config
from robot_env.bridge import protocol
from robot_env.bridge.client import RobotClient
from robot_env.bridge.spawn import ServerProcess
from robot_env.control.commands import CHANNELS

pytestmark = pytest.mark.timeout(300)

SEED = int(os.environ.get("FUZZ_SEED", "20240607"))
MOTION_OPS = {"step", "command", "reset"}
# Ops a client may be answered `ok` for without holding control. `estop` is left out of the
# structured fuzzer: anyone may e-stop (by design), and it would latch.
OPEN_OPS = {"hello", "state", "release", "close"}
KNOWN_ERRORS = {"malformed", "too_large", "version", "unknown_op", "bad_command", "unknown_channel",
                "bad_request", "bad_options", "not_controller", "estop"}
FIGURES: dict = {}


@pytest.fixture(scope="module")
def server():
    port = free_port_pair()
    cfg = config.load("sim", {"server": {"lockstep_lease_timeout": 0}})  # the lease never lapses
    sp = ServerProcess(cfg, endpoint=f"tcp://127.0.0.1:{port}", exit_on_close=False)
    yield sp
    sp.close()


@pytest.fixture(scope="module")
def controller(server, ctx):
    """Holds control through the fuzzing; its robot is off the reset pose, and the pose is recorded."""
    c = RobotClient(server.endpoint, timeout=5.0, context=ctx)
    c.acquire()
    c.reset(seed=0)
    for _ in range(3):
        c.step({"ee_delta": [0.01, 0.0, -0.01], "gripper": 0.05})
    c.before = snapshot(c)
    yield c
    c.close()


@pytest.fixture(scope="module")
def sock(server, ctx):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(server.endpoint)
    yield s
    s.close(0)


def snapshot(client) -> dict:
    st_ = client.state()
    return {"q": st_["q"].copy(), "target": st_["target"].copy(), "time": st_["time"], "mode": st_["mode"],
            "base": st_["base"].copy()}


def assert_unchanged(controller) -> None:
    after = snapshot(controller)
    before = controller.before
    np.testing.assert_array_equal(after["q"], before["q"])
    np.testing.assert_array_equal(after["target"], before["target"])
    np.testing.assert_array_equal(after["base"], before["base"])
    assert after["time"] == before["time"]
    assert after["mode"] == "ok"


def assert_server_healthy(server) -> None:
    assert server.alive(), f"the server died:\n{server.stderr_text()}"
    log = server.stderr_text()
    assert "Traceback" not in log and "request failed" not in log, log


def check_reply(data: bytes, counts: collections.Counter) -> dict:
    reply = protocol.decode(data)
    assert isinstance(reply, dict) and reply.get("v") == protocol.VERSION, reply
    if reply.get("ok") is True:
        counts["ok"] += 1
    else:
        assert reply.get("ok") is False, reply
        code = reply["error"]["code"]
        assert code in KNOWN_ERRORS, reply["error"]  # never "internal": a bug or a crash in a handler
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
        counts[code] += 1
    return reply


# -- the random-bytes fuzzer -----------------------------------------------------------------------
def _base_requests() -> list[bytes]:
    """Well-formed requests to truncate and corrupt (none of them holds the lease)."""
    reqs = [
        {"op": "step", "cmd": {"ee_delta": [0.01, 0.0, 0.0], "gripper": 0.05}},
        {"op": "step", "cmd": {"ee_delta": np.array([0.0, 0.02, 0.0])}},
        {"op": "command", "cmd": {"arm_position": np.zeros(7), "head": [0.1, -0.1]}},
        {"op": "command", "cmd": {"arm_velocity": [0.3] * 7, "base_twist": [0.2, 0.1], "torso": 0.2}},
        {"op": "reset", "seed": 3, "options": {"initial_torso": 0.2}},
        {"op": "step", "cmd": {"ee_delta": [0.05, 0.0, 0.0]}, "token": "f" * 32},
        {"op": "state"},
        {"op": "hello"},
        {"op": "release", "token": "0123456789abcdef"},
    ]
    return [protocol.encode({"v": protocol.VERSION, "seq": 1000 + i, "t": 1.5, **r}) for i, r in enumerate(reqs)]


def _random_object(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12 if depth < 4 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 7, 2 ** 31, -(2 ** 63), 2 ** 64 - 1, rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1e308, float("nan"), float("inf"), -float("inf"), rng.uniform(-10, 10)])
    if kind == 4:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_ \x00é☃") for _ in range(rng.randrange(12)))
    if kind == 5:
        return rng.randbytes(rng.randrange(40))
    if kind == 6:
        return msgpack.ExtType(rng.choice([1, 1, 1, 2, 127]), _random_array_payload(rng))
    if kind == 7:
        return rng.choice(["step", "command", "reset", "state", "hello", "arm_position", "ee_delta", "cmd"])
    if kind in (8, 9):
        return [_random_object(rng, depth + 1) for _ in range(rng.randrange(9))]
    keys = ["v", "op", "seq", "t", "cmd", "seed", "options", "token", "force", *CHANNELS]
    out = {}
    for _ in range(rng.randrange(7)):
        k = rng.choice(keys) if rng.random() < 0.8 else _random_object(rng, 4)
        if isinstance(k, (list, dict)):
            continue
        out[k] = _random_object(rng, depth + 1)
    return out


def _random_array_payload(rng: random.Random) -> bytes:
    ndim = rng.randrange(6)
    shape = [rng.choice([0, 1, 3, 7, rng.randrange(2 ** 32)]) for _ in range(ndim)]
    head = struct.pack(f"<BB{ndim}I", rng.randrange(14), rng.choice([ndim, ndim, rng.randrange(256)]), *shape)
    return head + rng.randbytes(rng.choice([0, 8, 24, 56, rng.randrange(100)]))


def random_messages(rng: random.Random, n: int, oversized_every: int = 10_000):
    """n messages: (frames, kind). Every one is due exactly one reply."""
    bases = _base_requests()
    for i in range(n):
        if oversized_every and i % oversized_every == oversized_every - 1:
            yield [rng.randbytes(protocol.SOFT_MAX_MESSAGE + rng.randrange(1, 100_000))], "oversized"
            continue
        r = rng.random()
        if r < 0.25:
            size = rng.choice([0, 1, 2, 5, 16, 64, 300, rng.randrange(4096)])
            yield [rng.randbytes(size)], "random"
        elif r < 0.45:
            base = rng.choice(bases)
            yield [base[:rng.randrange(len(base))]], "truncated"
        elif r < 0.70:
            buf = bytearray(rng.choice(bases))
            for _ in range(rng.randrange(1, 5)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            yield [bytes(buf)], "corrupted"
        elif r < 0.95:
            obj = _random_object(rng)
            if isinstance(obj, dict) and rng.random() < 0.7:  # mostly a plausible envelope around it
                obj.setdefault("v", 1 if rng.random() < 0.8 else _random_object(rng, 3))
                obj.setdefault("seq", i)
                obj.setdefault("op", rng.choice(["step", "command", "reset", "state", "hello", "nop"]))
            try:
                yield [msgpack.packb(obj, use_bin_type=True)], "type_confused"
            except (TypeError, ValueError, OverflowError):
                yield [rng.randbytes(8)], "random"
        else:
            yield [rng.randbytes(rng.randrange(64)) for _ in range(rng.randrange(2, 4))], "multi_frame"


def run_random_fuzz(server, controller, sock, n: int, window: int = 256) -> dict:
    rng = random.Random(SEED)
    kinds = collections.Counter()
    counts = collections.Counter()
    gen = random_messages(rng, n)
    sent = received = 0
    t0 = time.perf_counter()
    while received < n:
        while sent < n and sent - received < window:
            frames, kind = next(gen)
            sock.send_multipart(frames)
            kinds[kind] += 1
            sent += 1
        if not sock.poll(10_000):
            pytest.fail(f"the server stopped answering after {received} of {n} fuzzed messages "
                        f"(alive: {server.alive()}):\n{server.stderr_text()}")
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            received += 1
            # A message whose first frame is empty looks like a REQ client's: the reply keeps the delimiter.
            assert len(frames) == 1 or (len(frames) == 2 and frames[0] == b""), frames
            check_reply(frames[-1], counts)
    elapsed = time.perf_counter() - t0
    assert not sock.poll(200), "more replies than messages"
    # Well-formed motion requests among the fuzz can only have been refused: the lease is held.
    assert_server_healthy(server)
    assert_unchanged(controller)
    return {"messages": n, "seconds": round(elapsed, 2), "per_s": round(n / elapsed), "kinds": dict(kinds),
            "replies": dict(counts)}


def test_random_bytes_fuzz(server, controller, sock):
    figures = run_random_fuzz(server, controller, sock, 100_000)
    FIGURES["random"] = figures
    print(f"\nrandom fuzz: {figures}")
    assert figures["replies"].get("ok", 0) < figures["messages"]  # sanity: it did exercise the errors
    assert figures["replies"]["malformed"] > 10_000


@pytest.mark.slow
def test_random_bytes_fuzz_long(server, controller, sock):
    figures = run_random_fuzz(server, controller, sock, 1_000_000)
    print(f"\nrandom fuzz (slow): {figures}")


def test_raw_tcp_garbage_before_the_handshake(server, controller):
    """Bytes that are not ZMTP at all, or a ZMTP greeting cut short or corrupted, on both ports."""
    rng = random.Random(SEED + 1)
    host, port = server.endpoint[len("tcp://"):].rsplit(":", 1)
    signature = b"\xff" + b"\x00" * 8 + b"\x7f"
    for i in range(300):
        payload = rng.choice([rng.randbytes(rng.randrange(1, 512)),
                              signature + rng.randbytes(rng.randrange(0, 128)),
                              signature + b"\x03\x00NULL" + b"\x00" * 16 + rng.randbytes(rng.randrange(0, 64)),
                              signature[:rng.randrange(1, 10)]])
        with socket.create_connection((host, int(port) + (i % 2)), timeout=2.0) as s:
            try:
                s.sendall(payload)
            except OSError:
                pass  # the server may hang up first
    assert_server_healthy(server)
    assert_unchanged(controller)


# -- the structured fuzzer (hypothesis) ------------------------------------------------------------
def weighted(*pairs):
    """One of the strategies, drawn with these weights (`st.one_of` treats repeated branches as one)."""
    total = sum(w for w, _ in pairs)
    table = [s_ for w, s_ in pairs for _ in range(w)]
    return st.integers(0, total - 1).flatmap(lambda i: table[i])


def _array_ext(dcode, ndim, shape, payload):
    return msgpack.ExtType(protocol.ARRAY_EXT, struct.pack(f"<BB{len(shape)}I", dcode, ndim, *shape) + payload)


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 63), 2 ** 64 - 1), finite_or_not,
                    st.text(max_size=16), st.binary(max_size=48))
raw_arrays = st.builds(_array_ext, st.integers(0, 255), st.integers(0, 255),
                       st.lists(st.one_of(st.integers(0, 9), st.integers(0, 2 ** 32 - 1)), max_size=6),
                       st.binary(max_size=96))
exts = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=48))
np_arrays = hnp.arrays(st.sampled_from(["<f8", "<f4", "<i4", "|b1", "|u1", "<i8"]),
                       hnp.array_shapes(min_dims=0, max_dims=2, max_side=8))
# Type confusion that still decodes (`junk`), and values that make the whole message undecodable
# (`hostile`: bad ext types and array headers, non-string map keys), kept rare so that most
# messages get past the decoder to the deeper checks.
junk = st.recursive(st.one_of(scalars, np_arrays),
                    lambda kids: st.one_of(st.lists(kids, max_size=6),
                                           st.dictionaries(st.text(max_size=10), kids, max_size=5)),
                    max_leaves=6)
hostile = st.one_of(raw_arrays, exts, st.dictionaries(st.integers(), scalars, min_size=1, max_size=2))
junk = weighted((12, junk), (1, hostile))
vectors = st.lists(finite_or_not, max_size=9)
# Right-sized vectors of plausible values: well-formed commands, refused by the lease.
plausible = st.one_of(st.floats(-3, 3), *(st.lists(st.floats(-3, 3), min_size=n, max_size=n) for n in (2, 3, 7)))
channel_values = weighted((4, plausible), (1, finite_or_not), (1, vectors), (1, np_arrays), (1, junk))
cmds = st.one_of(st.dictionaries(st.one_of(st.sampled_from(sorted(CHANNELS)), st.text(max_size=12)),
                                 channel_values, max_size=5), junk)
options = st.one_of(st.dictionaries(st.sampled_from(["initial_torso", "initial_arm_position", "goal", "x"]),
                                    st.one_of(finite_or_not, vectors, junk), max_size=3), junk)
_op_names = st.sampled_from(["hello", "state", "step", "command", "reset", "acquire", "release", "clear_estop",
                             "reset_faults", "close"])
ops = weighted((6, _op_names), (1, st.text(max_size=12)), (1, junk))
envelopes = st.fixed_dictionaries(
    {"v": weighted((6, st.just(protocol.VERSION)), (1, junk)), "op": ops,
     "seq": weighted((6, st.integers(0, 2 ** 63 - 1)), (1, junk))},
    optional={"t": st.one_of(finite_or_not, junk), "cmd": cmds, "seed": st.one_of(st.integers(-5, 2 ** 64 - 1), junk),
              "options": options, "token": st.one_of(st.text(max_size=140), junk),
              "force": junk.filter(lambda x: x is not True)})  # a forced acquire would take the lease
messages = weighted((8, envelopes), (1, junk))


def roundtrip(sock, msg) -> dict | None:
    try:
        data = protocol.encode(msg)
    except (TypeError, ValueError, OverflowError):
        return None  # not encodable (e.g. an ndarray dtype the wire refuses): nothing to send
    sock.send(data)
    assert sock.poll(5_000), "no reply from the server"
    return protocol.decode(sock.recv())


def check_structured(server, sock, msg, counts) -> None:
    assume(not (isinstance(msg, dict) and msg.get("op").__class__ is str and msg["op"] == "estop"))
    reply = roundtrip(sock, msg)
    if reply is None:
        return
    check_reply(protocol.encode(reply), counts)
    seq = msg.get("seq") if isinstance(msg, dict) else None
    if reply["seq"] is not None:
        assert reply["seq"] == seq, (reply, msg)
    if reply["ok"]:
        assert msg["op"] in OPEN_OPS, f"a fuzzed {msg['op']!r} was accepted: {msg!r}"
        assert reply["seq"] == seq


_structured_counts: collections.Counter = collections.Counter()


@settings(max_examples=3_000, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(msg=messages)
def test_structured_fuzz(server, controller, sock, msg):
    check_structured(server, sock, msg, _structured_counts)


@pytest.mark.slow
@settings(max_examples=50_000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(msg=messages)
def test_structured_fuzz_long(server, controller, sock, msg):
    check_structured(server, sock, msg, _structured_counts)


def test_after_fuzzing_nothing_moved_and_a_normal_client_works(server, controller, ctx):
    assert_server_healthy(server)
    assert_unchanged(controller)
    if _structured_counts:
        print(f"\nstructured fuzz replies: {dict(_structured_counts)}")
    st_ = controller.step({"ee_delta": [0.02, 0.0, 0.0]})
    assert st_["mode"] == "ok" and st_["time"] == pytest.approx(controller.before["time"] + 0.04)
    assert not np.array_equal(st_["target"], controller.before["target"])
    controller.release()
    with RobotClient(server.endpoint, timeout=5.0, context=ctx) as fresh:
        assert fresh.hello()["backend"] == "kinematic"
        assert fresh.step({"ee_delta": [0.0, 0.01, 0.0]})["mode"] == "ok"
