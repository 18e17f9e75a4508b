"""The robot server against hostile and malformed requests, over real ZeroMQ sockets.

Every bad request must get an error reply that names the problem, apply nothing, and leave the
server serving. Also: REQ clients, the latched e-stop, the hello contents and safety clipping.
"""
from __future__ import annotations

import struct
import time

import msgpack
import numpy as np
import pytest
import zmq

from robot_env import config
from robot_env.bridge import protocol
from robot_env.bridge.client import RobotClient
from robot_env.bridge.spawn import ServerProcess
from robot_env.control.commands import CHANNELS
from robot_env.errors import ServerError
from robot_env.model.description import ARM, FETCH, GRIPPER, HEAD, TORSO

pytestmark = pytest.mark.timeout(60)

RECV_MS = 3000


@pytest.fixture(scope="module")
def server():
    sp = ServerProcess(config.load("sim"))
    yield sp
    sp.close()
    assert not sp.alive()


@pytest.fixture(scope="module")
def client(server, ctx):
    c = RobotClient(server.endpoint, timeout=5.0, context=ctx)
    yield c
    c.close()


@pytest.fixture
def robot(client):
    """A client on a robot in its reset pose, with no e-stop latched."""
    if client.state()["mode"] == "estop":
        client.clear_estop()
    client.reset(seed=0)
    return client


@pytest.fixture
def raw(server, ctx):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    yield sock
    sock.close(0)


def roundtrip(sock, frames) -> dict:
    if isinstance(frames, bytes):
        frames = [frames]
    sock.send_multipart(frames)
    assert sock.poll(RECV_MS), "no reply from the server"
    reply = sock.recv_multipart()
    if sock.type == zmq.DEALER:
        assert len(reply) == 1, f"expected one reply frame, got {len(reply)}"
    return protocol.decode(reply[-1])


def snapshot(client) -> dict:
    st = client.state()
    return {"q": st["q"].copy(), "target": st["target"].copy(), "time": st["time"], "mode": st["mode"]}


def assert_same(before: dict, after: dict) -> None:
    np.testing.assert_array_equal(before["q"], after["q"])
    np.testing.assert_array_equal(before["target"], after["target"])
    assert after["time"] == before["time"]
    assert after["mode"] == before["mode"]


def assert_still_serving(client) -> None:
    t0 = client.state()["time"]
    st = client.step({"ee_delta": [0.005, 0.0, 0.0]})
    assert st["mode"] == "ok"
    assert st["time"] == pytest.approx(t0 + 0.04)
    assert np.isfinite(st["q"]).all()


def req(op="step", seq=7, **fields) -> dict:
    return {"v": protocol.VERSION, "op": op, "seq": seq, "t": 1.0, **fields}


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def array_ext(dcode: int, shape: tuple, payload: bytes, ndim: int | None = None) -> msgpack.ExtType:
    ndim = len(shape) if ndim is None else ndim
    head = struct.pack(f"<BB{len(shape)}I", dcode, ndim, *shape)
    return msgpack.ExtType(protocol.ARRAY_EXT, head + payload)


def nested_lists(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"  # fixarray of 1, `depth` times, around nil


def with_raw_field(msg: dict, key: str, raw_value: bytes) -> bytes:
    """A request map whose `key` holds hand-made msgpack bytes."""
    assert len(msg) < 15
    body = b"".join(pack(k) + pack(v) for k, v in msg.items())
    return bytes([0x80 | (len(msg) + 1)]) + body + pack(key) + raw_value


NAN, INF = float("nan"), float("inf")

# (id, raw frames, expected error code, words the message must contain, seq echoed or None)
# Once the envelope decodes to a map with an integer seq, every error reply echoes that seq.
BAD_REQUESTS = [
    ("garbage", b"\xc1\xc1 definitely not msgpack", "malformed", ["undecodable"], None),
    ("empty_frame", b"", "malformed", ["undecodable"], None),
    ("list_not_map", pack([1, "step", 3]), "malformed", ["map", "list"], None),
    ("string_not_map", pack("hello"), "malformed", ["map", "str"], None),
    ("missing_version", pack({"op": "hello", "seq": 1}), "version", ["version", "none"], 1),
    ("wrong_version", pack({"v": 99, "op": "hello", "seq": 1}), "version", ["version", "99"], 1),
    ("version_as_string", pack({"v": "1", "op": "hello", "seq": 1}), "version", ["version"], 1),
    ("unknown_op", pack(req(op="launch_missiles")), "unknown_op", ["launch_missiles"], 7),
    ("missing_op", pack({"v": protocol.VERSION, "seq": 1}), "unknown_op", ["op"], 1),
    ("missing_seq", pack({"v": protocol.VERSION, "op": "step", "cmd": {}}), "malformed", ["seq"], None),
    ("seq_string", pack(req(seq="12")), "malformed", ["seq"], None),
    ("seq_float", pack(req(seq=1.5)), "malformed", ["seq"], None),
    ("seq_bool", pack(req(seq=True)), "malformed", ["seq"], None),
    ("seq_bool_and_bad_version", pack({"v": protocol.VERSION + 1, "op": "state", "seq": True}), "version", ["version"], None),
    ("t_string", pack(req(t="now", cmd={})), "malformed", ["'t'"], 7),
    ("int_map_key", pack({1: 2, "v": protocol.VERSION, "op": "state", "seq": 1}), "malformed", ["undecodable"], None),
    ("oversized", pack(req(op="state", pad=b"x" * (protocol.SOFT_MAX_MESSAGE + 1000))),
     "too_large", ["exceeds", str(protocol.SOFT_MAX_MESSAGE)], None),
    ("multi_frame", [pack(req(op="state")), b"second frame"], "malformed", ["frame", "2"], None),
    ("deeply_nested", nested_lists(2000), "malformed", ["undecodable"], None),
    ("deeply_nested_in_cmd", with_raw_field(req(), "cmd", nested_lists(2000)), "malformed",
     ["undecodable"], None),
    ("cmd_not_a_map", pack(req(cmd=[0.1, 0.2, 0.3])), "bad_command", ["map"], 7),
    ("unknown_channel", pack(req(cmd={"warp_drive": [1.0]})), "unknown_channel", ["warp_drive"], 7),
    ("ee_delta_shape_4", pack(req(cmd={"ee_delta": [0.01, 0.0, 0.0, 0.0]})), "bad_command",
     ["ee_delta", "shape", "(4,)"], 7),
    ("arm_position_shape_2d", protocol.encode(req(cmd={"arm_position": np.zeros((1, 7))})), "bad_command",
     ["arm_position", "shape"], 7),
    ("ee_delta_string", pack(req(cmd={"ee_delta": "up"})), "bad_command", ["ee_delta", "str"], 7),
    ("gripper_string", pack(req(cmd={"gripper": "0.05"})), "bad_command", ["gripper", "number"], 7),
    ("ee_delta_nested_list", pack(req(cmd={"ee_delta": [[0.0], [0.0], [0.0]]})), "bad_command",
     ["ee_delta", "numbers"], 7),
    ("nan_list", pack(req(cmd={"ee_delta": [0.0, NAN, 0.0]})), "bad_command", ["ee_delta", "non-finite"], 7),
    ("inf_list", pack(req(cmd={"arm_velocity": [0.0] * 6 + [INF]})), "bad_command",
     ["arm_velocity", "non-finite"], 7),
    ("nan_numpy", protocol.encode(req(cmd={"ee_delta": np.array([NAN, 0.0, 0.0])})), "bad_command",
     ["ee_delta", "non-finite"], 7),
    ("inf_numpy", protocol.encode(req(cmd={"arm_position": np.array([0.0] * 6 + [-INF])})), "bad_command",
     ["arm_position", "non-finite"], 7),
    ("inf_numpy_f4", protocol.encode(req(cmd={"head": np.array([INF, 0.0], dtype=np.float32)})),
     "bad_command", ["head", "non-finite"], 7),
    ("nan_scalar", pack(req(cmd={"torso": NAN})), "bad_command", ["torso", "non-finite"], 7),
    ("bool_scalar", pack(req(cmd={"gripper": True})), "bad_command", ["gripper", "bool"], 7),
    ("bool_list", pack(req(cmd={"ee_delta": [True, False, False]})), "bad_command", ["ee_delta"], 7),
    ("bool_numpy", protocol.encode(req(cmd={"ee_delta": np.array([True, False, False])})), "bad_command",
     ["ee_delta", "bool"], 7),
    ("ext_bad_dtype_code", pack(req(cmd={"ee_delta": array_ext(200, (3,), b"\0" * 24)})), "malformed",
     ["header"], None),
    ("ext_truncated_payload", pack(req(cmd={"ee_delta": array_ext(0, (3,), b"\0" * 20)})), "malformed",
     ["payload", "20"], None),
    ("ext_huge_shape", pack(req(cmd={"ee_delta": array_ext(0, (1 << 31,), b"\0" * 8)})), "malformed",
     ["payload"], None),
    ("ext_truncated_header", pack(req(cmd={"ee_delta": array_ext(0, (3,), b"", ndim=3)})), "malformed",
     ["truncated"], None),
    ("ext_too_many_dims", pack(req(cmd={"ee_delta": array_ext(0, (1,) * 9, b"\0" * 8)})), "malformed",
     ["header"], None),
    ("ext_unknown_type", pack(req(cmd={"ee_delta": msgpack.ExtType(42, b"\0" * 8)})), "malformed",
     ["ext"], None),
    ("position_and_velocity", pack(req(cmd={"arm_position": [0.0] * 7, "arm_velocity": [0.0] * 7})),
     "bad_command", ["arm_position", "arm_velocity", "exclusive"], 7),
    ("ee_delta_and_position", pack(req(cmd={"ee_delta": [0.0] * 3, "arm_position": [0.0] * 7})),
     "bad_command", ["ee_delta"], 7),
    # one good channel next to a bad one: nothing at all is applied (the gripper target must not move)
    ("partly_valid", pack(req(cmd={"gripper": 0.01, "head": [0.5, NAN]})), "bad_command", ["head"], 7),
    ("command_op_nan", pack(req(op="command", cmd={"torso": [NAN]})), "bad_command", ["torso"], 7),
    ("reset_negative_seed", pack(req(op="reset", seed=-1)), "bad_request", ["seed", "non-negative"], 7),
    ("reset_float_seed", pack(req(op="reset", seed=1.5)), "bad_request", ["seed"], 7),
    ("reset_options_list", pack(req(op="reset", options=[1, 2])), "bad_options", ["options"], 7),
    ("reset_unknown_option", pack(req(op="reset", options={"teleport": 1.0})), "bad_options",
     ["teleport"], 7),
    ("reset_torso_string", pack(req(op="reset", options={"initial_torso": "0.2"})), "bad_options",
     ["initial_torso"], 7),
    ("reset_torso_list", pack(req(op="reset", options={"initial_torso": [0.2]})), "bad_options",
     ["initial_torso"], 7),
    ("reset_arm_nan", pack(req(op="reset", options={"initial_arm_position": [0.0] * 6 + [NAN]})),
     "bad_options", ["initial_arm_position", "non-finite"], 7),
]


@pytest.mark.parametrize("frames,code,words,seq", [c[1:] for c in BAD_REQUESTS],
                         ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_error_reply_and_changes_nothing(robot, raw, frames, code, words, seq):
    # Move off the reset pose first so "unchanged" is not trivially the reset state.
    robot.step({"ee_delta": [0.01, 0.0, -0.01], "gripper": 0.05})
    before = snapshot(robot)
    reply = roundtrip(raw, frames)
    assert reply["ok"] is False
    assert reply["v"] == protocol.VERSION
    assert reply["error"]["code"] == code, reply["error"]
    message = reply["error"]["message"].lower()
    for word in words:
        assert word.lower() in message, f"{word!r} not in {message!r}"
    assert reply["seq"] == seq
    assert_same(before, snapshot(robot))
    assert_still_serving(robot)
    # the same raw socket is still usable after the error
    ok = roundtrip(raw, pack(req(op="state", seq=99)))
    assert ok["ok"] is True and ok["seq"] == 99


def test_error_reply_through_client_raises_server_error(robot):
    before = snapshot(robot)
    with pytest.raises(ServerError) as info:
        robot.step({"ee_delta": [0.01, 0.0, 0.0, 0.0]})
    assert info.value.code == "bad_command"
    assert "ee_delta" in str(info.value)
    with pytest.raises(ServerError) as info:
        robot.reset(seed=-3)
    assert info.value.code == "bad_request"
    assert_same(before, snapshot(robot))
    assert_still_serving(robot)


def test_unknown_op_through_client_is_an_error_not_a_timeout(robot):
    """The client matches replies by seq, so envelope errors must echo it or they look like a dead server."""
    t0 = time.monotonic()
    with pytest.raises(ServerError) as info:
        robot.request("levitate")
    assert info.value.code == "unknown_op"
    assert "levitate" in str(info.value)
    assert time.monotonic() - t0 < robot.timeout / 2
    assert_still_serving(robot)


def test_beyond_hard_cap_costs_only_the_sender(robot, server, ctx):
    """Past ZMQ_MAXMSGSIZE the sender's connection is dropped; nobody else notices."""
    big = ctx.socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    big.connect(server.endpoint)
    try:
        before = snapshot(robot)
        big.send(pack(req(op="state", pad=b"x" * (protocol.HARD_MAX_MESSAGE + 1024))))
        assert not big.poll(300), "a message over the hard cap must not be answered"
        assert_same(before, snapshot(robot))
        assert_still_serving(robot)
    finally:
        big.close(0)


def test_req_socket(robot, server, ctx):
    robot.release()  # a client without a session token may move the robot only while nobody holds control
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    try:
        reply = roundtrip(sock, pack(req(op="hello", seq=1)))
        assert reply["ok"] is True and reply["seq"] == 1
        assert reply["backend"] == "kinematic"
        reply = roundtrip(sock, protocol.encode(req(op="step", seq=2, cmd={"ee_delta": np.zeros(3)})))
        assert reply["ok"] is True and reply["seq"] == 2
        # on the wire the state's float vectors are packed (protocol.pack_state); unpack_state names them
        assert "q" not in reply["state"] and isinstance(reply["state"]["arrays"], bytes)
        assert protocol.unpack_state(reply["state"])["q"].shape == (len(FETCH.names),)
        # errors reach a REQ client too (with the delimiter it needs), including multi-frame ones
        reply = roundtrip(sock, pack(req(op="step", seq=3, cmd={"ee_delta": [NAN, 0, 0]})))
        assert reply["ok"] is False and reply["error"]["code"] == "bad_command"
        reply = roundtrip(sock, [pack(req(op="state", seq=4)), b"extra"])
        assert reply["ok"] is False and reply["error"]["code"] == "malformed"
        reply = roundtrip(sock, b"\xc1")
        assert reply["ok"] is False and reply["error"]["code"] == "malformed"
        reply = roundtrip(sock, pack(req(op="state", seq=5)))
        assert reply["ok"] is True and reply["seq"] == 5
    finally:
        sock.close(0)


def test_state_wire_layout(raw, robot):
    """The packed state layout: `hello` announces it, every state names it, the client returns named views."""
    nj = len(FETCH.names)
    layout = f"q:{nj} dq:{nj} effort:{nj} target:{nj} ee:7 ee_vel:6 base:5"
    assert robot.hello()["state_layout"] == layout
    st_client = robot.step({"ee_delta": [0.01, 0.0, 0.0]})
    reply = roundtrip(raw, pack({"v": protocol.VERSION, "op": "state", "seq": 5, "t": 1.0}))
    st = reply["state"]
    assert st["layout"] == layout
    values = np.frombuffer(st["arrays"], "<f8")
    assert values.size == 4 * nj + 7 + 6 + 5
    for key in ("q", "dq", "effort", "target", "ee", "ee_vel", "base"):
        assert key not in st
    assert {"time", "mode", "faults", "clipped", "seq", "ts", "objects"} <= set(st)
    np.testing.assert_array_equal(values[:nj], st_client["q"])
    np.testing.assert_array_equal(values[3 * nj:4 * nj], st_client["target"])
    np.testing.assert_array_equal(values[4 * nj:4 * nj + 3], st_client["ee"][:3])
    named = protocol.unpack_state(dict(st))
    for key, size in (("q", nj), ("dq", nj), ("effort", nj), ("target", nj), ("ee", 7), ("ee_vel", 6),
                      ("base", 5)):
        assert named[key].dtype == np.float64 and named[key].shape == (size,)
        np.testing.assert_array_equal(named[key], st_client[key])
    assert set(named) == set(st_client)
    with pytest.raises(ValueError):
        protocol.unpack_state({"layout": layout, "arrays": st["arrays"][:-8]})


def test_dealer_replies_echo_seq_and_stamps(raw, robot):
    reply = roundtrip(raw, pack({"v": protocol.VERSION, "op": "state", "seq": 12345, "t": 42.5}))
    assert reply["ok"] is True
    assert reply["seq"] == 12345
    assert reply["t"] == 42.5
    assert reply["tr"] <= reply["tx"]


# -- e-stop ------------------------------------------------------------------------------------
def test_estop_refuses_motion_until_cleared(robot):
    for _ in range(3):  # get the arm moving
        robot.step({"arm_velocity": [0.5] * 7})
    st = robot.estop()
    try:
        assert st["mode"] == "estop"
        before = snapshot(robot)
        for op, call in (("step", lambda: robot.step({"ee_delta": [0.02, 0.0, 0.0]})),
                         ("command", lambda: robot.command({"arm_velocity": [1.0] * 7})),
                         ("reset", lambda: robot.reset(seed=1))):
            with pytest.raises(ServerError) as info:
                call()
            assert info.value.code == "estop", op
            assert "clear_estop" in info.value.message
        after = snapshot(robot)
        np.testing.assert_array_equal(before["q"], after["q"])
        assert after["mode"] == "estop"
    finally:
        st = robot.clear_estop()
    assert st["mode"] == "ok"
    q0 = st["q"].copy()
    st = robot.step({"arm_velocity": [0.5] * 7})
    assert st["mode"] == "ok"
    assert not np.array_equal(st["q"][ARM], q0[ARM])


def test_estop_latches_across_a_new_connection(robot, server, ctx):
    # Control is free here, so any client may move and clear the e-stop (test_lease.py: when it is held).
    robot.release()
    first = RobotClient(server.endpoint, timeout=5.0, context=ctx)
    assert first.estop()["mode"] == "estop"
    first.close()  # the client that latched it goes away
    second = RobotClient(server.endpoint, timeout=5.0, context=ctx)
    try:
        second.hello()
        st = second.state()
        assert st["mode"] == "estop"
        with pytest.raises(ServerError) as info:
            second.step({"ee_delta": [0.02, 0.0, 0.0]})
        assert info.value.code == "estop"
        np.testing.assert_array_equal(second.state()["q"], st["q"])
        assert robot.state()["mode"] == "estop"  # everyone sees it
        assert second.clear_estop()["mode"] == "ok"
        assert second.step({"ee_delta": [0.01, 0.0, 0.0]})["mode"] == "ok"
        assert second.release()  # its step acquired control implicitly
        assert robot.step({"ee_delta": [0.01, 0.0, 0.0]})["mode"] == "ok"
    finally:
        if second.state()["mode"] == "estop":
            second.clear_estop()
        second.close()


# -- hello ---------------------------------------------------------------------------------------
def test_hello_content(robot):
    h = robot.hello()
    assert h["ok"] is True
    assert h["protocol"] == protocol.VERSION
    assert h["backend"] == "kinematic"
    assert h["clock"] == "lockstep"
    assert h["control_period"] == pytest.approx(0.04)
    assert len(h["joint_names"]) == 11
    assert h["joint_names"] == list(FETCH.names)
    assert h["description_hash"] == FETCH.hash()
    assert isinstance(h["description_hash"], str) and len(h["description_hash"]) >= 8
    assert [j["name"] for j in h["description"]["joints"]] == h["joint_names"]
    assert set(h["channels"]) == set(CHANNELS)
    assert h["stream_endpoint"]


# -- clipping ------------------------------------------------------------------------------------
def test_targets_beyond_limits_are_clipped_and_flagged(robot):
    lower, upper = FETCH.lower, FETCH.upper
    st = robot.step({"ee_delta": [0.001, 0.0, 0.0]})
    assert not any(f.endswith("position_limit") for f in st["clipped"])

    beyond = upper[ARM] + 1.0
    st = robot.step({"arm_position": beyond})
    assert st["mode"] == "ok"
    assert "arm_position.position_limit" in st["clipped"]
    assert (st["target"][ARM] <= upper[ARM]).all()

    st = robot.step({"torso": 5.0, "gripper": -1.0, "head": [10.0, -10.0]})
    assert {"torso.position_limit", "gripper.position_limit", "head.position_limit"} <= set(st["clipped"])
    assert st["target"][TORSO] == pytest.approx(upper[TORSO])
    assert st["target"][GRIPPER] == pytest.approx(lower[GRIPPER])
    np.testing.assert_allclose(st["target"][HEAD], [upper[HEAD][0], lower[HEAD][1]])

    st = robot.step({"arm_velocity": [100.0] * 7})
    assert "arm_velocity.velocity_limit" in st["clipped"]

    seen = set()
    for i in range(60):
        if i < 20:
            cmd = {"arm_velocity": [100.0 if j % 2 else -100.0 for j in range(7)], "torso": 9.0}
        elif i < 40:
            cmd = {"arm_position": lower[ARM] - 2.0, "gripper": 3.0, "head": [-9.0, 9.0]}
        else:
            cmd = {"arm_position": upper[ARM] + 2.0, "torso": -1.0}
        st = robot.step(cmd)
        seen.update(st["clipped"])
        q = st["q"]
        assert np.isfinite(q).all()
        assert (q >= lower - 1e-9).all() and (q <= upper + 1e-9).all(), (i, q)
        assert (np.abs(st["dq"]) <= np.array([j.velocity for j in FETCH.joints]) + 1e-6).all()
    assert "arm_position.position_limit" in seen
    assert "arm_velocity.velocity_limit" in seen
