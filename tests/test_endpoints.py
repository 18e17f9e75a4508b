"""Endpoints and configuration: the env over tcp (spawned or external server), the private-by-default
bind rule, and config errors that name the file and the key."""
from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time

import gymnasium
import numpy as np
import pytest

import robot_env  # noqa: F401  (registers the env)
from robot_env import config
from robot_env.client import RobotClient
from robot_env.errors import ConfigError, RobotEnvError
from robot_env.server import build_server
from support import free_port_pair

pytestmark = pytest.mark.timeout(60)

ENV_ID = "robot_env/FetchReach-v0"


def port_free(port: int) -> bool:
    """Nobody listens on the port (TIME_WAIT leftovers of closed connections don't count)."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


def write_toml(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def serve_cmd(*args) -> list[str]:
    exe = shutil.which("robot-env")
    return ([exe] if exe else [sys.executable, "-m", "robot_env.cli"]) + ["serve", *args]


class Serve:
    """`robot-env serve ...` as a subprocess whose stdout lines we can wait for."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(serve_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 20.0) -> list[str]:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if text in line:
                return seen
        raise AssertionError(f"{text!r} not printed by robot-env serve; stdout {seen}, "
                             f"exit {self.proc.poll()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def run_a_few_steps(env):
    obs, info = env.reset(seed=3)
    start = obs["achieved_goal"].copy()
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32))
    assert np.isfinite(obs["observation"]).all()
    assert obs["achieved_goal"][0] > start[0] + 0.05  # it really moved, +x
    return obs


# -- the env over tcp ----------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["dict", "toml"])
def test_env_spawns_its_server_on_tcp(tmp_path, no_leftover_servers, form):
    port = free_port_pair()
    endpoint = f"tcp://127.0.0.1:{port}"
    if form == "dict":
        cfg = {"server": {"endpoint": endpoint}}
    else:
        cfg = str(write_toml(tmp_path, "tcp.toml", f'[server]\nendpoint = "{endpoint}"\n'))
    env = gymnasium.make(ENV_ID, config=cfg)
    try:
        session = env.unwrapped._session
        assert session.server is not None  # spawned by the env, not an external one
        assert session.client.endpoint.startswith("tcp://")
        assert session.client.endpoint == endpoint
        assert session.info["stream_endpoint"] == f"tcp://127.0.0.1:{port + 1}"
        assert not port_free(port)
        run_a_few_steps(env)
    finally:
        env.close()
    assert session.server is None
    deadline = time.monotonic() + 5
    while not port_free(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert port_free(port), "the spawned server still holds its tcp port after close()"


def test_env_connects_to_external_server(tmp_path):
    port = free_port_pair()
    endpoint = f"tcp://127.0.0.1:{port}"
    server_toml = write_toml(tmp_path, "server.toml", f'[server]\nendpoint = "{endpoint}"\n')
    client_toml = write_toml(tmp_path, "client.toml", f'[client]\nendpoint = "{endpoint}"\ntimeout = 5.0\n')
    serve = Serve("--config", str(server_toml))
    try:
        lines = serve.wait_for("requests on")
        assert any(endpoint in line for line in lines), lines
        assert any("kinematic" in line for line in lines), lines
        env = gymnasium.make(ENV_ID, config=str(client_toml))
        try:
            assert env.unwrapped._session.server is None  # nothing spawned
            assert env.unwrapped._session.client.endpoint == endpoint
            assert env.unwrapped.backend_kind == "kinematic"
            run_a_few_steps(env)
            obs, _ = env.reset(seed=4)
            assert np.isfinite(obs["observation"]).all()
        finally:
            env.close()
        time.sleep(0.2)
        assert serve.proc.poll() is None, "closing the env must leave an external server running"
        with RobotClient(endpoint, timeout=3.0) as c:
            assert c.hello()["backend"] == "kinematic"
            assert c.step({"ee_delta": [0.0, 0.0, 0.01]})["mode"] == "ok"
    finally:
        serve.stop()
    assert serve.proc.returncode == 0  # SIGTERM is a clean shutdown


# -- private by default --------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["config", "flag"])
def test_serve_refuses_non_loopback_without_insecure(tmp_path, where):
    port = free_port_pair()
    endpoint = f"tcp://0.0.0.0:{port}"
    if where == "config":
        args = ["--config", str(write_toml(tmp_path, "open.toml", f'[server]\nendpoint = "{endpoint}"\n'))]
    else:
        args = ["--endpoint", endpoint]
    proc = subprocess.run(serve_cmd(*args), capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "insecure" in proc.stderr, proc.stderr
    assert endpoint in proc.stderr
    assert "Traceback" not in proc.stderr
    assert port_free(port)


@pytest.mark.parametrize("server_keys", [
    {"endpoint": "tcp://0.0.0.0:{p}"},
    {"endpoint": "tcp://*:{p}"},
    {"endpoint": "tcp://127.0.0.1:{p}", "stream_endpoint": "tcp://0.0.0.0:{q}"},
], ids=["any", "wildcard", "stream_only"])
def test_build_server_refuses_non_loopback_without_insecure(server_keys):
    port = free_port_pair()
    keys = {k: v.format(p=port, q=port + 1) for k, v in server_keys.items()}
    cfg = config.load({"server": keys})
    assert cfg["server"]["insecure"] is False
    with pytest.raises(ConfigError, match="insecure"):
        build_server(cfg)
    assert port_free(port) and port_free(port + 1)


def test_env_refuses_non_loopback_without_insecure(no_leftover_servers):
    port = free_port_pair()
    with pytest.raises(RobotEnvError, match="insecure"):
        gymnasium.make(ENV_ID, config={"server": {"endpoint": f"tcp://0.0.0.0:{port}"}})
    assert port_free(port)


# -- config errors name the file and the key -----------------------------------------------------
BAD_CONFIGS = [
    ("unknown_key", '[server]\nendpont = "tcp://127.0.0.1:5555"\n', ["[server]", "endpont"]),
    ("unknown_nested_key", "[server.safety]\nwatchdog_timout = 0.5\n", ["[server.safety]", "watchdog_timout"]),
    ("unknown_table", "[serverr]\nclock = 'realtime'\n", ["[serverr]"]),
    ("wrong_type", "[server]\nclock = 1\n", ["[server]", "clock", "str"]),
    ("wrong_type_bool_for_number", "[server]\ncontrol_period = true\n", ["control_period", "number"]),
    ("wrong_type_client", '[client]\ntimeout = "5"\n', ["[client]", "timeout"]),
    ("wrong_type_list", "[server.safety]\nworkspace_min = [0.0, 1.0]\n", ["workspace_min", "3 numbers"]),
    ("bad_value", '[server]\nclock = "sometimes"\n', ["clock", "sometimes", "realtime"]),
    ("bad_value_range", "[server]\ncontrol_period = 5.0\n", ["control_period", "5.0"]),
    ("bad_value_backend", '[server]\nbackend = "teleporter"\n', ["backend", "teleporter"]),
    ("bad_value_nan", "[server.safety]\nwatchdog_timeout = nan\n", ["watchdog_timeout", "finite"]),
    ("not_toml", "[server\nclock = \n", ["toml"]),
]


@pytest.mark.parametrize("text,words", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_config_error_names_file_and_key(tmp_path, text, words):
    path = write_toml(tmp_path, "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"


def test_config_error_in_overrides_and_dicts():
    with pytest.raises(ConfigError, match=r"\[server\] clock"):
        config.load("sim", {"server": {"clock": "whenever"}})
    with pytest.raises(ConfigError, match=r"sim\.toml"):  # overrides are checked against the file they amend
        config.load("sim", {"server": {"clok": "realtime"}})
    with pytest.raises(ConfigError, match=r"<dict>.*\[client\] retries"):
        config.load({"client": {"retries": 1.5}})


def test_unknown_config_name():
    with pytest.raises(ConfigError) as info:
        config.load("no_such_robot")
    assert "no_such_robot" in str(info.value)
    assert "sim" in str(info.value)  # lists what is shipped


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope" / "missing.toml"
    with pytest.raises(ConfigError) as info:
        config.load(str(missing))
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_env_with_bad_config_raises_config_error(tmp_path, no_leftover_servers):
    path = write_toml(tmp_path, "bad.toml", "[client]\nretries = -1\n")
    with pytest.raises(ConfigError) as info:
        gymnasium.make(ENV_ID, config=str(path))
    assert str(path) in str(info.value) and "retries" in str(info.value)


def test_serve_with_bad_config_exits_with_message(tmp_path):
    path = write_toml(tmp_path, "bad.toml", '[server]\nclock = "sometimes"\n')
    proc = subprocess.run(serve_cmd("--config", str(path)), capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert str(path) in proc.stderr and "clock" in proc.stderr
    assert "Traceback" not in proc.stderr
