"""One controller at a time, between real processes: explicit and implicit acquire, refusals that
name the way out, observers that still read state and may e-stop, forced takeover, release, and
the lease lapsing: with the watchdog on the realtime clock, after `lockstep_lease_timeout` in
lockstep (never while the e-stop is latched).
"""
from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from robot_env import config
from robot_env.bridge import protocol
from robot_env.bridge.client import RobotClient
from robot_env.bridge.spawn import ServerProcess
from robot_env.errors import ServerError

pytestmark = pytest.mark.timeout(60)

MOVE = {"ee_delta": [0.01, 0.0, 0.0]}


def spawn(**server):
    return ServerProcess(config.load("sim", {"server": server} if server else None))


@pytest.fixture(scope="module")
def lockstep():
    sp = spawn()
    yield sp
    sp.close()


@pytest.fixture(scope="module")
def realtime():
    sp = spawn(clock="realtime")
    yield sp
    sp.close()


def pair(server, ctx):
    a = RobotClient(server.endpoint, timeout=3.0, context=ctx)
    b = RobotClient(server.endpoint, timeout=3.0, context=ctx)
    return a, b


@pytest.fixture
def ab(lockstep, ctx):
    """Two clients of the lockstep server; nobody holds control at the start, nor after."""
    a, b = pair(lockstep, ctx)
    yield a, b
    for c in (a, b):
        if c.state()["mode"] == "estop":
            c.acquire(force=True)
            c.clear_estop()
        c.release()
        c.close()


def refused(call, *words) -> ServerError:
    with pytest.raises(ServerError) as info:
        call()
    assert info.value.code == "not_controller", info.value
    for word in words:
        assert word in info.value.message, info.value.message
    return info.value


def test_explicit_acquire_refuses_others_who_may_observe(ab, lockstep, ctx):
    a, b = ab
    assert b.hello()["lease"] == {"held": False, "yours": False, "idle": None, "timeout": 300.0}
    lease = a.acquire()
    assert lease["held"] and lease["yours"]
    a.step(MOVE)
    before = b.state()
    for op, call in (("step", lambda: b.step({"ee_delta": [0.05, 0.0, 0.0]})),
                     ("command", lambda: b.command({"gripper": 0.0})),
                     ("reset", lambda: b.reset(seed=3))):
        err = refused(call, f"{op} refused", "another client holds control", "acquire(force=True)", "observe")
        assert "nothing was applied" in err.message
    refused(b.acquire, "acquire refused")
    refused(b.clear_estop, "only the controller")
    after = b.state()  # observing works, and nothing of b's was applied
    np.testing.assert_array_equal(after["q"], before["q"])
    np.testing.assert_array_equal(after["target"], before["target"])
    assert after["time"] == before["time"]
    h = b.hello()["lease"]
    assert h["held"] and not h["yours"] and h["idle"] >= 0
    assert a.hello()["lease"]["yours"]
    assert a.step(MOVE)["mode"] == "ok"  # the controller is not disturbed


def test_the_state_stream_is_open_to_observers(ab):
    a, b = ab
    a.acquire()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"state")
    sub.connect(b.hello()["stream_endpoint"])
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            a.step(MOVE)
            if sub.poll(20):
                topic, body = sub.recv_multipart()
                assert topic == b"state" and protocol.decode(body)["mode"] == "ok"
                break
        else:
            pytest.fail("no state on the stream")
    finally:
        sub.close(0)


def test_implicit_acquire_on_first_motion_request(ab):
    a, b = ab
    assert a.step(MOVE)["mode"] == "ok"  # never called acquire: the lease was free
    assert a.hello()["lease"]["yours"]
    refused(lambda: b.step(MOVE), "another client holds control")
    assert a.reset(seed=1)["mode"] == "ok"
    assert a.release() is True
    assert a.release() is False  # idempotent
    assert b.step(MOVE)["mode"] == "ok"  # free again: b's step acquires it
    refused(lambda: a.step(MOVE), "another client holds control")


def test_forced_takeover(ab):
    a, b = ab
    a.acquire()
    a.step(MOVE)
    lease = b.acquire(force=True)
    assert lease["yours"]
    refused(lambda: a.step(MOVE), "taken over by another client", "acquire")  # told once ...
    refused(lambda: a.step(MOVE), "another client holds control")  # ... then the usual refusal
    assert b.step(MOVE)["mode"] == "ok"
    a.acquire(force=True)  # and back
    refused(lambda: b.command(MOVE), "taken over")
    assert a.step(MOVE)["mode"] == "ok"


def test_release_passes_control_and_close_releases(ab, lockstep, ctx):
    a, b = ab
    a.acquire()
    refused(lambda: b.step(MOVE))
    assert a.release() is True
    assert not b.hello()["lease"]["held"]
    assert b.step(MOVE)["mode"] == "ok"
    b.release()
    c = RobotClient(lockstep.endpoint, timeout=3.0, context=ctx)
    c.step(MOVE)
    refused(lambda: a.step(MOVE))
    c.close()  # a client that moved the robot releases control when it closes
    assert a.step(MOVE)["mode"] == "ok"


def test_tokenless_and_bad_token_requests(ab, lockstep, ctx):
    a, b = ab
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(lockstep.endpoint)

    def send(**fields):
        raw.send(msgpack.packb({"v": protocol.VERSION, "seq": 5, "t": 0.0, **fields}, use_bin_type=True))
        assert raw.poll(3000)
        return protocol.decode(raw.recv())

    try:
        assert send(op="step", cmd=MOVE)["ok"]  # free: a client without a token may move ...
        assert not b.hello()["lease"]["held"]  # ... but holds nothing
        a.acquire()
        reply = send(op="step", cmd=MOVE)
        assert reply["error"]["code"] == "not_controller" and reply["seq"] == 5
        assert send(op="state")["ok"]
        assert send(op="acquire")["error"]["code"] == "bad_request"  # acquire needs a token
        for bad in (42, "short", "x" * 200, ["list-token"]):
            reply = send(op="step", cmd=MOVE, token=bad)
            assert reply["error"]["code"] == "bad_request" and "token" in reply["error"]["message"], bad
            assert send(op="acquire", token=bad)["error"]["code"] == "bad_request"
        assert send(op="acquire", token="t" * 16, force="yes")["error"]["code"] == "bad_request"
        assert a.step(MOVE)["mode"] == "ok"
    finally:
        raw.close(0)


def test_estop_by_an_observer(ab):
    a, b = ab
    a.acquire()
    for _ in range(3):
        a.step({"arm_velocity": [0.5] * 7})
    assert b.estop()["mode"] == "estop"  # anyone may stop the robot
    with pytest.raises(ServerError) as info:
        a.step(MOVE)
    assert info.value.code == "estop"
    refused(b.clear_estop, "clear_estop refused", "only the controller")
    refused(b.reset_faults, "reset_faults refused")
    assert a.clear_estop()["mode"] == "ok"
    assert a.step(MOVE)["mode"] == "ok"


def test_lockstep_lease_survives_a_pause(ab, lockstep):
    """Lockstep: a long gradient update must not cost the trainer its lease (300 s by default)."""
    a, b = ab
    a.step(MOVE)
    time.sleep(0.6)  # longer than the watchdog timeout
    refused(lambda: b.step(MOVE))
    assert a.step(MOVE)["mode"] == "ok"


def test_lockstep_lease_lapses_after_its_timeout(ctx):
    sp = spawn(lockstep_lease_timeout=0.3)
    try:
        a, b = pair(sp, ctx)
        a.step(MOVE)
        refused(lambda: b.step(MOVE))
        time.sleep(0.5)
        assert not b.hello()["lease"]["held"]
        assert b.step(MOVE)["mode"] == "ok"
        refused(lambda: a.step(MOVE), "lapsed")
        a.close()
        b.close()
    finally:
        sp.close()


def test_realtime_lease_lapses_with_the_watchdog(realtime, ctx):
    a, b = pair(realtime, ctx)
    try:
        timeout = a.hello()["watchdog_timeout"]
        assert a.hello()["lease"]["timeout"] == pytest.approx(timeout)
        a.acquire()
        t_end = time.monotonic() + 3 * timeout
        while time.monotonic() < t_end:  # commanding every period keeps the lease
            a.command({"arm_velocity": [0.2] * 7})
            refused(lambda: b.command({"arm_velocity": [0.0] * 7}))
            time.sleep(0.04)
        last = time.monotonic()
        a.command({"arm_velocity": [0.2] * 7})
        while b.hello()["lease"]["held"]:
            time.sleep(0.01)
            assert time.monotonic() - last < timeout + 0.5
        assert time.monotonic() - last >= timeout * 0.9
        st = b.state()
        assert st["mode"] == "watchdog" or time.monotonic() - last < timeout + 0.05
        assert b.command({"arm_velocity": [0.0] * 7})["mode"] == "ok"  # the lease passed to b
        refused(lambda: a.command({"arm_velocity": [0.2] * 7}), "lapsed")
    finally:
        a.close()
        b.close()


def test_realtime_lease_holds_while_the_estop_is_latched(realtime, ctx):
    a, b = pair(realtime, ctx)
    try:
        a.command({"arm_velocity": [0.0] * 7})
        b.estop()
        time.sleep(a.hello()["watchdog_timeout"] + 0.2)  # no commands possible, yet no lapse
        assert b.hello()["lease"]["held"]
        refused(b.clear_estop, "only the controller")
        assert a.clear_estop()["mode"] == "ok"
        assert a.command({"arm_velocity": [0.0] * 7})["mode"] == "ok"
    finally:
        if a.state()["mode"] == "estop":
            a.clear_estop()
        a.close()
        b.close()


def test_a_refused_reset_takes_no_lease(ab):
    """A reset the backend refuses (a start pose beyond the limits) changes nothing, the lease included."""
    a, b = ab
    with pytest.raises(ServerError) as info:
        a.reset(options={"initial_arm_position": [9.0] * 7})
    assert info.value.code == "bad_options"
    assert a.hello()["lease"]["held"] is False
    b.reset()  # b may take control: a never got it
    assert b.hello()["lease"]["yours"] is True
