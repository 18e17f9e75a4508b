"""Endpoints and configuration: the env over tcp (spawned or external server), the private-by-default
bind rule, and config errors that name the file and the key."""
from __future__ import annotations

import ipaddress
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
import zmq
from support import free_port_pair

import robot_env  # noqa: F401  (registers the env)
from robot_env import config
from robot_env.bridge.client import RobotClient
from robot_env.bridge.endpoints import check_bind, is_private, parse, stream_endpoint_for
from robot_env.bridge.server import build_server
from robot_env.errors import ConfigError, RobotEnvError

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
    return ([exe] if exe else [sys.executable, "-m", "robot_env"]) + ["serve", *args]


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


# A NaN or inf bound compares false with everything, so a box edge made of one clips nothing; an
# inverted box or a floor at its top leaves no target that is inside.
BAD_SAFETY = [
    ("nan_min", "workspace_min = [0.0, nan, 0.05]", ["workspace_min", "finite"]),
    ("inf_max", "workspace_max = [inf, 0.9, 1.7]", ["workspace_max", "finite"]),
    ("minus_inf_min", "workspace_min = [-inf, -0.9, 0.05]", ["workspace_min", "finite"]),
    ("signed_nan_max", "workspace_max = [1.3, 0.9, +nan]", ["workspace_max", "finite"]),
    ("inverted_x", "workspace_min = [1.3, -0.9, 0.05]\nworkspace_max = [0.0, 0.9, 1.7]",
     ["workspace_min", "below workspace_max", "x: 1.3 >= 0.0"]),
    ("flat_z", "workspace_min = [0.0, -0.9, 0.5]\nworkspace_max = [1.3, 0.9, 0.5]", ["workspace_min", "z: 0.5 >= 0.5"]),
    ("floor_at_top", "floor_height = 1.7", ["floor_height", "1.7", "workspace_max"]),
    ("floor_above_top", "workspace_max = [1.3, 0.9, 0.9]\nfloor_height = 1.0", ["floor_height", "1.0", "0.9"]),
]


@pytest.mark.parametrize("text,words", [c[1:] for c in BAD_SAFETY], ids=[c[0] for c in BAD_SAFETY])
def test_safety_box_must_be_finite_ordered_and_above_the_floor(tmp_path, text, words):
    path = write_toml(tmp_path, "safety.toml", f"[server.safety]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: [server.safety] {words[0]}: "), message
    for word in words[1:]:
        assert word in message, f"{word!r} not in {message!r}"


def test_safety_checks_cover_overrides_and_configs_changed_after_load():
    nan = float("nan")
    with pytest.raises(ConfigError, match=r"sim\.toml: \[server\.safety\] workspace_max: must be finite"):
        config.load("sim", {"server.safety": {"workspace_max": [1.3, nan, 1.7]}})
    with pytest.raises(ConfigError, match=r"<dict>: \[server\.safety\] floor_height"):
        config.load({"server.safety": {"workspace_min": [0.0, -0.9, 0.0],
                                       "workspace_max": [1.3, 0.9, 0.04]}})  # a top below the default floor
    cfg = config.load("sim")
    cfg["server.safety"]["workspace_min"] = [0.0, -0.9, float("-inf")]  # edited in place, as the CLI does
    with pytest.raises(ConfigError, match=r"sim\.toml: \[server\.safety\] workspace_min: must be finite"):
        config.safety_config(cfg)
    cfg = config.load("sim")
    cfg["server.safety"]["workspace_max"] = [0.0, 0.9, 1.7]
    with pytest.raises(ConfigError, match=r"workspace_min: must be below workspace_max on every axis; x: 0.0 >= 0.0"):
        build_server(cfg)
    # a floor below the box (the box's bottom binds) and one inside it are fine
    for floor in (-0.5, 0.05, 1.69):
        s = config.safety_config(config.load({"server.safety": {"floor_height": floor}}))
        assert s.floor_height == floor and s.workspace_max == (1.3, 0.9, 1.7)


def test_serve_refuses_a_nan_workspace(tmp_path):
    path = write_toml(tmp_path, "nan.toml", "[server.safety]\nworkspace_max = [1.3, 0.9, nan]\n")
    proc = subprocess.run(serve_cmd("--config", str(path)), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: [server.safety] workspace_max: must be finite" in proc.stderr
    assert "Traceback" not in proc.stderr


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


# -- only plain endpoint forms -------------------------------------------------------------------
def non_loopback_address() -> str | None:
    """This machine's IPv4 address on its default route, if it has one (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr == "0.0.0.0" or ipaddress.ip_address(addr).is_loopback else addr


# What ZeroMQ does with strings the old check took for loopback: it reads the port's digits and
# ignores the rest (and wraps the port to 16 bits), so the host before the port is what it binds.
BYPASSES = [("tcp://0.0.0.0:{p}@127.0.0.1", "tcp://0.0.0.0:{p}"),
            ("tcp://*:{p}@localhost", "tcp://0.0.0.0:{p}"),
            ("tcp://127.0.0.1:{wrapped}", "tcp://127.0.0.1:{p}")]


@pytest.mark.parametrize("written,bound", BYPASSES, ids=["any@loopback", "wildcard@localhost", "port>65535"])
def test_zeromq_binds_what_precedes_the_port_and_the_check_refuses_it(written, bound):
    port = free_port_pair()
    endpoint, expect = (x.format(p=port, wrapped=port + 65536) for x in (written, bound))
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    try:
        router.bind(endpoint)  # ZeroMQ accepts the string...
        assert router.getsockopt_string(zmq.LAST_ENDPOINT) == expect  # ...and listens on what precedes ':'
        addr = non_loopback_address()
        if addr is not None and "0.0.0.0" in expect:  # reachable from this machine's other address
            dealer = ctx.socket(zmq.DEALER)
            dealer.linger = 0
            dealer.connect(f"tcp://{addr}:{port}")
            dealer.send(b"hello from " + addr.encode())
            assert router.poll(5000), f"{endpoint} did not take a connection to {addr}"
            assert router.recv_multipart()[1] == b"hello from " + addr.encode()
            dealer.close()
    finally:
        router.close()
        ctx.term()
    for insecure, secure in ((False, False), (True, False), (False, True)):  # malformed whatever the keys
        with pytest.raises(ConfigError) as info:
            check_bind(endpoint, insecure=insecure, secure=secure)
        assert repr(endpoint) in str(info.value) and "tcp://HOST:PORT" in str(info.value)


@pytest.mark.parametrize("where", ["flag", "flag_with_stream", "stream_flag", "config", "config_insecure"])
@pytest.mark.parametrize("written", [b[0] for b in BYPASSES[:2]], ids=["any@loopback", "wildcard@localhost"])
def test_serve_refuses_malformed_endpoints(tmp_path, written, where):
    port = free_port_pair()
    endpoint = written.format(p=port)
    if where == "flag":
        args = ["--endpoint", endpoint]
    elif where == "flag_with_stream":  # no port + 1 to derive: the bind check itself must refuse it
        args = ["--endpoint", endpoint, "--stream-endpoint", f"tcp://127.0.0.1:{port + 1}"]
    elif where == "stream_flag":  # the state stream goes through the same check
        args = ["--endpoint", f"tcp://127.0.0.1:{port + 1}", "--stream-endpoint", endpoint]
    else:
        extra = "insecure = true\n" if where == "config_insecure" else ""
        args = ["--config", str(write_toml(tmp_path, "s.toml", f'[server]\nendpoint = "{endpoint}"\n{extra}'))]
    proc = subprocess.run(serve_cmd(*args), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "robot-env: error: " in proc.stderr and repr(endpoint) in proc.stderr, proc.stderr
    assert "'@'" in proc.stderr and "tcp://HOST:PORT" in proc.stderr, proc.stderr
    if where.startswith("config"):
        assert "s.toml: [server] endpoint" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert port_free(port) and port_free(port + 1)


PLAIN = [  # endpoint, private (loopback or ipc/inproc)
    ("tcp://127.0.0.1:5555", True), ("tcp://127.0.0.2:5555", True), ("tcp://127.255.255.254:1", True),
    ("tcp://localhost:65535", True), ("tcp://[::1]:5555", True), ("tcp://127.0.0.1:*", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://[::]:5555", False),
    ("tcp://192.0.2.7:5555", False), ("tcp://robot.local:5555", False), ("tcp://eth0:5555", False),
    ("tcp://lo:5555", False), ("tcp://br-1a2b.100:5555", False), ("tcp://[2001:db8::1]:5555", False),
    ("tcp://[::ffff:127.0.0.1]:5555", False),
    # the old prefix test took these for loopback: names, resolved by whoever answers for them
    ("tcp://localhost.example.com:5555", False), ("tcp://127.example.com:5555", False),
    ("ipc://@robot-env-1-abcd", True), ("ipc:///tmp/robot.sock", True), ("ipc://run/robot.sock", True),
    ("inproc://zeromq.zap.01", True),
]


@pytest.mark.parametrize("endpoint,private", PLAIN, ids=[p[0] for p in PLAIN])
def test_plain_endpoints_are_accepted_and_only_loopback_is_private(endpoint, private):
    assert is_private(endpoint) is private
    assert parse(endpoint).text == endpoint
    if private:
        assert check_bind(endpoint, insecure=False) is None
    else:
        with pytest.raises(ConfigError, match="insecure"):
            check_bind(endpoint, insecure=False)
        assert check_bind(endpoint, insecure=False, secure=True) is None


MALFORMED = [  # endpoint, a word of the reason
    ("tcp://0.0.0.0:5555@127.0.0.1", "'@'"), ("tcp://*:5555@localhost", "'@'"),
    ("tcp://user@127.0.0.1:5555", "'@'"), ("tcp://127.0.0.1:5555;0.0.0.0", "';'"),
    ("tcp://0.0.0.0;127.0.0.1:5555", "';'"), ("tcp://127.0.0.1:5555/x", "path"), ("tcp://127.0.0.1:5555?a=1", "path"),
    ("tcp://127.0.0.1:5555#f", "path"), ("tcp://127.0.0.1:5555 ", "whitespace"),
    ("tcp:// 127.0.0.1:5555", "whitespace"),
    ("tcp://127.0.0.1:5555\n", "whitespace"), ("tcp://[::1%lo]:5555", "'%'"), ("tcp://[fe80::1%eth0]:5555", "'%'"),
    ("tcp://:5555", "no host"), ("tcp://127.0.0.1:", "no port"), ("tcp://127.0.0.1", "no port"), ("tcp://", "no host"),
    ("tcp://127.0.0.1:65536", "port"), ("tcp://127.0.0.1:70000", "port"), ("tcp://127.0.0.1:0", "port"),
    ("tcp://127.0.0.1:+5555", "port"), ("tcp://127.0.0.1:05555", "port"), ("tcp://127.0.0.1:55x", "port"),
    ("tcp://::1:5555", "bracket"), ("tcp://[::1]5555", "bracket"), ("tcp://[127.0.0.1]:5555", "IPv6"),
    ("tcp://[zz::1]:5555", "IPv6"), ("tcp://127.1:5555", "IPv4"), ("tcp://2130706433:5555", "IPv4"),
    ("tcp://0x7f000001:5555", "IPv4"), ("tcp://127.000.000.001:5555", "IPv4"), ("tcp://0127.0.0.1:5555", "IPv4"),
    ("tcp://256.0.0.1:5555", "IPv4"), ("tcp://robot_.-x:5555", "host"), ("tcp://rob%ot:5555", "'%'"),
    ("udp://127.0.0.1:5555", "use tcp://"), ("TCP://127.0.0.1:5555", "use tcp://"), ("127.0.0.1:5555", "use tcp://"),
    ("pgm://eth0;239.192.1.1:5555", "use tcp://"), ("", "use tcp://"), ("ipc://", "no path"), ("ipc://@", "no path"),
    ("inproc://", "no name"), ("ipc://a b", "whitespace"),
]


@pytest.mark.parametrize("endpoint,word", MALFORMED, ids=[repr(m[0]) for m in MALFORMED])
def test_malformed_endpoints_are_refused_with_the_accepted_form(endpoint, word):
    for call in (lambda: parse(endpoint), lambda: is_private(endpoint),
                 lambda: check_bind(endpoint, insecure=True, secure=True)):
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert repr(endpoint) in message and word in message, message
        assert "tcp://HOST:PORT" in message and "ipc://PATH" in message and "inproc://NAME" in message


def test_connect_endpoints_need_a_host_and_a_port():
    """A client connects to one address: the bind-only wildcards are refused there."""
    for endpoint in ("tcp://*:5555", "tcp://127.0.0.1:*"):
        assert parse(endpoint).transport == "tcp"
        with pytest.raises(ConfigError, match="connect"):
            parse(endpoint, bind=False)
    assert parse("tcp://robot.local:5555", bind=False).host == "robot.local"
    assert parse("tcp://[::1]:5555", bind=False).host == "::1"


def test_stream_endpoint_is_the_next_port():
    assert stream_endpoint_for("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5556"
    assert stream_endpoint_for("tcp://[::1]:5555") == "tcp://[::1]:5556"
    assert stream_endpoint_for("ipc://@robot") == "ipc://@robot-state"
    for endpoint, word in (("tcp://127.0.0.1:65535", "65535"), ("tcp://127.0.0.1:*", "explicit port"),
                           ("tcp://0.0.0.0:5555@127.0.0.1", "'@'")):
        with pytest.raises(ConfigError, match=word):
            stream_endpoint_for(endpoint)


@pytest.mark.parametrize("table,endpoint,word", [
    ("client", "tcp://127.0.0.1:5555@10.0.0.1", "'@'"), ("client", "tcp://10.0.0.1;127.0.0.1:5555", "';'"),
    ("client", "tcp://*:5555", "connect"), ("client", "tcp://127.0.0.1:*", "connect"),
    ("client", "tcp://robot:99999", "port"), ("server", "tcp://0.0.0.0:5555@127.0.0.1", "'@'"),
    ("server", "tcp://127.0.0.1:5555 ", "whitespace"),
], ids=lambda v: v if v in ("client", "server") else None)
def test_config_endpoints_go_through_the_parser(tmp_path, table, endpoint, word):
    key = "endpoint" if table == "client" else "stream_endpoint"
    path = write_toml(tmp_path, "ep.toml", f'[{table}]\n{key} = "{endpoint}"\n')
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    message = str(info.value)
    assert f"{path}: [{table}] {key}: " in message and repr(endpoint) in message and word in message, message
    with pytest.raises(ConfigError, match=f"\\[{table}\\] {key}"):
        config.load({table: {key: endpoint}})
    assert config.load({table: {key: ""}})[table][key] == ""  # empty: the default (private ipc / spawn)
