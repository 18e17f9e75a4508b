"""Who may reach and close a server (issue 11).

`close` parks the robot and ends the server (on hardware: rest pose, torque off), so only the
session that spawned the server may send it, or, for a server started by hand, the client in
control. The default ipc endpoint lives in a directory only its user may enter: the abstract
namespace it used before is open to every process on the machine.
"""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time

import gymnasium as gym
import pytest
import zmq
from support import wait_for

from robot_env.bridge import protocol
from robot_env.bridge.client import RobotClient
from robot_env.errors import ServerError

pytestmark = pytest.mark.timeout(60)


def _raw_close(endpoint: str, ctx, **fields) -> dict:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(protocol.encode({"v": protocol.VERSION, "op": "close", "seq": 1, **fields}))
        assert sock.poll(5000), "no reply to close"
        return protocol.decode(sock.recv())
    finally:
        sock.close(0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_only_the_spawning_session_may_close_its_server(ctx, no_leftover_servers):
    """The issue: a token-less client's close stopped the server of another client's gym.make."""
    env = gym.make("robot_env/FetchReach-v0")
    try:
        u = env.unwrapped
        env.reset(seed=0)
        endpoint, pid = u._client.endpoint, u._session.info["pid"]
        for fields in ({}, {"token": "x" * 16}, {"token": u._client.token}, {"owner": "0" * 32}):
            reply = _raw_close(endpoint, ctx, **fields)
            assert reply["ok"] is False and reply["error"]["code"] == "not_controller", (fields, reply)
        time.sleep(0.2)
        assert _alive(pid)
        env.step(env.action_space.sample())  # still serving its env
    finally:
        env.close()
    assert wait_for(lambda: not _alive(pid), timeout=5.0)  # the owner's close ends it


def test_a_server_started_by_hand_is_closed_only_by_its_controller(tmp_path, ctx):
    endpoint = f"ipc://{tmp_path}/srv"
    proc = subprocess.Popen([sys.executable, "-m", "robot_env", "serve", "--config", "sim", "--endpoint", endpoint],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "requests on" in proc.stdout.readline() + proc.stdout.readline()
        a = RobotClient(endpoint, timeout=5.0)
        b = RobotClient(endpoint, timeout=5.0)
        a.reset(seed=0)  # a takes control
        assert _raw_close(endpoint, ctx)["error"]["code"] == "not_controller"
        with pytest.raises(ServerError) as info:
            b.request("close")
        assert info.value.code == "not_controller"
        assert proc.poll() is None
        a.request("close")
        assert proc.wait(10) == 0
        a.close()
        b.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_default_endpoint_is_private_to_its_user(no_leftover_servers):
    """A spawned server listens in a 0700 directory: not in the abstract namespace (listed in
    /proc/net/unix, reachable by every user), and not reachable by another user."""
    env = gym.make("robot_env/FetchReach-v0")
    try:
        endpoint = env.unwrapped._client.endpoint
        assert endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@")
        path = endpoint[len("ipc://"):]
        d = os.path.dirname(path)
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        with open("/proc/net/unix") as fh:
            listed = fh.read()
        assert path in listed and "@robot-env" not in listed.split(path)[0].splitlines()[-1]
        other_python = "/usr/bin/python3"  # one that user can run (this venv may sit in root's home)
        if os.geteuid() == 0 and os.access(other_python, os.X_OK):  # as another user (nobody): unreachable
            probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
                     "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(7)\nsys.exit(0)")
            rc = subprocess.run([other_python, "-c", probe, path], user=65534, group=65534, cwd="/",
                                capture_output=True).returncode
            assert rc == 7
        with socket.socket(socket.AF_UNIX) as s:  # while its own user can
            s.connect(path)
    finally:
        env.close()
    assert not os.path.exists(path)
