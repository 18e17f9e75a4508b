"""CurveZMQ between real processes: `robot-env keys`, a server that allows only listed client keys on
both its request and state-stream sockets, refusals that time out on the client and are logged by
the server, the bind rule with keys, and the env / `connect()` / spawned servers with key configs.

Only loopback traffic: 0.0.0.0 appears in a refusal check that never binds.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time

import gymnasium
import numpy as np
import pytest
import zmq
import zmq.auth
from support import free_port_pair

import robot_env
from robot_env import config
from robot_env.bridge import protocol
from robot_env.bridge.client import RobotClient
from robot_env.bridge.endpoints import check_bind
from robot_env.bridge.security import (
    ClientKeys,
    client_keys,
    create_keypair,
    read_public_key,
    server_keys,
    write_key_file,
)
from robot_env.bridge.server import build_server
from robot_env.bridge.spawn import ServerProcess
from robot_env.errors import ConfigError, ServerTimeout

pytestmark = pytest.mark.timeout(60)

ENV_ID = "robot_env/FetchReach-v0"


def keys_cmd(*args) -> list[str]:
    exe = shutil.which("robot-env")
    return ([exe] if exe else [sys.executable, "-m", "robot_env"]) + ["keys", *args]


def wait_for_log(server: ServerProcess, text: str, timeout: float = 3.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = server.stderr_text()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    """Key pairs made by the CLI: the server's, an allowed client's, one more in an allowed directory,
    and an intruder's that no server lists."""
    root = tmp_path_factory.mktemp("keys")
    for out, name in (("server", "server"), ("clients", "laptop"), ("team", "alice"), ("elsewhere", "intruder")):
        proc = subprocess.run(keys_cmd("--out", str(root / out), "--name", name), capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, proc.stderr
    return root


def client_keys_from(keydir, name: str, folder: str) -> ClientKeys:
    public, secret = zmq.auth.load_certificate(keydir / folder / f"{name}.key_secret")
    return ClientKeys(public, secret, read_public_key(keydir / "server" / "server.key"))


@pytest.fixture(scope="module")
def secure_server(keydir):
    """A CURVE server on loopback tcp, configured by a TOML with paths relative to the file."""
    port = free_port_pair()
    toml = keydir / "server.toml"
    toml.write_text(f'[server]\nendpoint = "tcp://127.0.0.1:{port}"\n'
                    '[server.security]\nserver_secret_key = "server/server.key_secret"\n'
                    'allowed_clients = ["clients/laptop.key", "team"]\n')
    sp = ServerProcess(config.load(str(toml)), endpoint=f"tcp://127.0.0.1:{port}")
    yield sp
    sp.close()
    assert not sp.alive()


# -- keys ----------------------------------------------------------------------------------------
def test_keys_command_writes_a_pyzmq_certificate_pair(keydir, tmp_path):
    public_file, secret_file = keydir / "clients" / "laptop.key", keydir / "clients" / "laptop.key_secret"
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    assert not stat.S_IMODE(os.stat(public_file).st_mode) & 0o022
    public, none = zmq.auth.load_certificate(public_file)
    public2, secret = zmq.auth.load_certificate(secret_file)
    assert none is None and public == public2 and len(public) == 40 and len(secret) == 40
    assert zmq.curve_public(secret) == public  # a real pair
    assert public in zmq.auth.load_certificates(keydir / "clients")  # pyzmq's directory loader reads them
    assert "secret" not in public_file.read_text().replace("Secret", "")
    # no silent overwrite; --force replaces
    proc = subprocess.run(keys_cmd("--out", str(keydir / "clients"), "--name", "laptop"), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode != 0 and "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert zmq.auth.load_certificate(secret_file)[1] == secret
    a = create_keypair(tmp_path, "x")
    b = create_keypair(tmp_path, "x", force=True)
    assert a == b and stat.S_IMODE(os.stat(b[1]).st_mode) == 0o600


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o777], ids=["umask000", "umask777"])
def test_keys_command_sets_the_modes_whatever_the_umask(tmp_path, umask):
    """Modes are set, not left to the umask: 0o000 made the public file 0666 (anyone could swap the
    key a server trusts) and the directories 0777; 0o777 would have made them unusable."""
    out = tmp_path / "made" / "keys"
    run = lambda *extra: subprocess.run(keys_cmd("--out", str(out), "--name", "k", *extra), capture_output=True,
                                        text=True, timeout=30, preexec_fn=lambda: os.umask(umask))
    proc = run()
    assert proc.returncode == 0, proc.stderr
    public, secret = out / "k.key", out / "k.key_secret"
    assert (mode_of(public), mode_of(secret)) == (0o644, 0o600)
    assert mode_of(out) == 0o700 and mode_of(out.parent) == 0o700  # the directories it created
    first = zmq.auth.load_certificate(secret)
    proc = run("--force")  # replaced: a new pair, the same modes
    assert proc.returncode == 0, proc.stderr
    assert (mode_of(public), mode_of(secret)) == (0o644, 0o600)
    assert zmq.auth.load_certificate(secret) != first
    assert zmq.auth.load_certificate(public)[0] == zmq.auth.load_certificate(secret)[0]


@pytest.mark.parametrize("linked", ["k.key", "k.key_secret", "dangling", "out_dir"])
@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
def test_keys_command_never_writes_through_a_symlink(tmp_path, linked, force):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o640)
    out = tmp_path / "keys"
    out.mkdir()
    if linked == "out_dir":
        real = tmp_path / "elsewhere"
        real.mkdir()
        out.rmdir()
        out.symlink_to(real)
        link, watched = out, real
    elif linked == "dangling":  # a link to a file that does not exist yet: it must not be created
        link, watched = out / "k.key", tmp_path / "created_by_the_link"
        link.symlink_to(watched)
    else:
        link, watched = out / linked, victim
        link.symlink_to(victim)
    args = ["--out", str(out), "--name", "k"] + (["--force"] if force else [])
    proc = subprocess.run(keys_cmd(*args), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "symbolic link" in proc.stderr and str(link) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert victim.read_text() == "precious\n" and mode_of(victim) == 0o640
    if linked == "out_dir":
        assert list(watched.iterdir()) == []
    elif linked == "dangling":
        assert not os.path.lexists(watched)
    assert link.is_symlink()  # left as it was
    if linked != "out_dir":  # and nothing half-written next to it
        assert [p.name for p in out.iterdir()] == [link.name]


def test_force_replaces_a_key_file_without_writing_into_it(tmp_path):
    """--force unlinks the old file: another name for the same file (a hard link) keeps its content."""
    public, secret = create_keypair(tmp_path, "k")
    other_name = tmp_path / "copy_of_public"
    os.link(public, other_name)
    before = other_name.read_text()
    public2, secret2 = create_keypair(tmp_path, "k", force=True)
    assert other_name.read_text() == before and public2.read_text() != before
    assert os.stat(public2).st_ino != os.stat(other_name).st_ino
    (tmp_path / "dir.key").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        create_keypair(tmp_path, "dir", force=True)


def test_write_key_file_modes_and_links(tmp_path):
    """The one writer of key files (`robot-env keys` and the Ray actors' temporary key files)."""
    old = os.umask(0)
    try:
        secret = write_key_file(tmp_path / "new" / "s.key_secret", "secret text", secret=True)
        public = write_key_file(tmp_path / "new" / "p.key", "public text", secret=False)
    finally:
        os.umask(old)
    assert (mode_of(secret), mode_of(public), mode_of(tmp_path / "new")) == (0o600, 0o644, 0o700)
    assert secret.read_text() == "secret text"
    with pytest.raises(ConfigError, match="exists"):
        write_key_file(public, "again", secret=False)
    assert write_key_file(public, "again", secret=False, force=True).read_text() == "again"
    (tmp_path / "new" / "l.key").symlink_to(tmp_path / "victim")
    with pytest.raises(ConfigError, match="symbolic link"):
        write_key_file(tmp_path / "new" / "l.key", "x", secret=False, force=True)
    assert not os.path.lexists(tmp_path / "victim")


# -- the handshake -------------------------------------------------------------------------------
def test_allowed_client_keys_are_accepted(secure_server, keydir, ctx):
    for name, folder in (("laptop", "clients"), ("alice", "team")):  # a listed file, a listed directory
        with RobotClient(secure_server.endpoint, timeout=5.0, context=ctx,
                         keys=client_keys_from(keydir, name, folder)) as c:
            assert c.hello()["backend"] == "kinematic"
            st = c.step({"ee_delta": [0.01, 0.0, 0.0]})
            assert st["mode"] == "ok" and np.isfinite(st["q"]).all()
    log = wait_for_log(secure_server, "'alice'")
    assert "accepted CurveZMQ client 'laptop'" in log and "accepted CurveZMQ client 'alice'" in log


@pytest.mark.parametrize("who", ["wrong_key", "no_key", "wrong_server_key"])
def test_refused_clients_time_out_and_the_server_logs_it(secure_server, keydir, ctx, who):
    if who == "wrong_key":
        keys = client_keys_from(keydir, "intruder", "elsewhere")
        expect = f"refused a client with CurveZMQ key {keys.public.decode()} from 127.0.0.1"
    elif who == "no_key":
        keys = None
        expect = "refused a connection to the requests on tcp://127.0.0.1"
    else:  # an allowed client key, but it trusts another server's public key
        good = client_keys_from(keydir, "laptop", "clients")
        keys = ClientKeys(good.public, good.secret, zmq.curve_keypair()[0])
        expect = "wrong server public key"
    client = RobotClient(secure_server.endpoint, timeout=1.0, retries=0, context=ctx, keys=keys)
    t0 = time.monotonic()
    try:
        with pytest.raises(ServerTimeout) as info:
            client.hello()
        elapsed = time.monotonic() - t0
        with pytest.raises(ServerTimeout):
            client.step({"ee_delta": [0.05, 0.0, 0.0]})
    finally:
        client.close()
    assert elapsed < 1.5
    if keys is not None:
        assert "CurveZMQ" in str(info.value)
    log = wait_for_log(secure_server, expect)
    assert expect in log, log
    refusal = next(line for line in log.splitlines() if expect in line)
    assert "WARNING" in refusal
    if who == "no_key":  # libzmq reports a mechanism mismatch, or (racing the hang-up) no detail
        assert "does not use CurveZMQ" in refusal or "did not complete" in refusal, refusal
    # the server still serves its allowed clients
    with RobotClient(secure_server.endpoint, timeout=5.0, context=ctx,
                     keys=client_keys_from(keydir, "laptop", "clients")) as c:
        assert c.state()["mode"] == "ok"


def test_state_stream_is_curve_too(secure_server, keydir, ctx):
    good = client_keys_from(keydir, "laptop", "clients")
    stream = RobotClient(secure_server.endpoint, timeout=5.0, context=ctx, keys=good).hello()["stream_endpoint"]
    subs = {}
    intruder = client_keys_from(keydir, "intruder", "elsewhere")
    for who, keys in (("allowed", good), ("no_key", None), ("intruder", intruder)):
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.apply(sub)
        sub.setsockopt(zmq.SUBSCRIBE, b"state")
        sub.connect(stream)
        subs[who] = sub
    got = {who: 0 for who in subs}
    try:
        with RobotClient(secure_server.endpoint, timeout=5.0, context=ctx, keys=good) as c:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and got["allowed"] < 5:
                c.state()  # lockstep: each sample goes on the stream while someone subscribes
                for who, sub in subs.items():
                    while sub.poll(20):
                        topic, body = sub.recv_multipart()
                        st = protocol.unpack_state(protocol.decode(body))
                        assert topic == b"state" and st["q"].shape == (11,)
                        got[who] += 1
    finally:
        for sub in subs.values():
            sub.close(0)
    assert got["allowed"] >= 5
    assert got["no_key"] == 0 and got["intruder"] == 0
    log = wait_for_log(secure_server, "refused a connection to the state stream")
    assert "refused a connection to the state stream on tcp://127.0.0.1" in log


# -- binding -------------------------------------------------------------------------------------
def test_non_local_bind_needs_keys_or_insecure(keydir):
    # 127.x is loopback, hence local: a keyed non-local bind is checked here without listening on one.
    assert check_bind("tcp://127.0.0.2:5555", insecure=False) is None
    with pytest.raises(ConfigError, match="insecure"):
        check_bind("tcp://0.0.0.0:5555", insecure=False)
    with pytest.raises(ConfigError, match="server_secret_key"):
        check_bind("tcp://0.0.0.0:5555", insecure=False)
    assert check_bind("tcp://0.0.0.0:5555", insecure=False, secure=True) is None  # keys: no flag, no warning
    assert "WITHOUT authentication" in check_bind("tcp://0.0.0.0:5555", insecure=True)
    # build_server: no keys and no flag -> refused before anything binds
    port = free_port_pair()
    with pytest.raises(ConfigError, match="insecure"):
        build_server(config.load({"server": {"endpoint": f"tcp://0.0.0.0:{port}"}}))


def test_spawned_server_without_client_keys_in_config(keydir, no_leftover_servers):
    """The env spawns a keyed server (private ipc): its client trusts the server key from the server's
    secret key file and uses a fresh key pair the spawned server is told to allow."""
    cfg = {"server": {}, "server.security": {"server_secret_key": str(keydir / "server" / "server.key_secret"),
                                             "allowed_clients": [str(keydir / "clients")]}}
    env = gymnasium.make(ENV_ID, config=cfg)
    try:
        session = env.unwrapped._session
        assert session.server is not None and session.keys is not None
        assert session.keys.server_public == read_public_key(keydir / "server" / "server.key")
        obs, _ = env.reset(seed=1)
        obs2, *_ = env.step(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32))
        assert obs2["achieved_goal"][0] > obs["achieved_goal"][0]
        # the spawned server is keyed: a client without keys gets nothing
        with RobotClient(session.client.endpoint, timeout=0.5, retries=0) as bare:
            with pytest.raises(ServerTimeout):
                bare.state()
        log = wait_for_log(session.server, "refused a connection to the requests on ipc://")
        assert "accepted CurveZMQ client 'spawning session'" in log
        assert "refused a connection to the requests on ipc://" in log
    finally:
        env.close()


def test_spawned_server_allows_a_client_key_that_begins_with_a_dash(keydir, no_leftover_servers):
    """Z85 keys may begin with '-' (1 pair in 85): the spawned server must not read one as an option
    (seen in CI: 'argument --allow-client-key: expected one argument')."""
    while True:
        public, secret = zmq.curve_keypair()
        if public.startswith(b"-"):
            break
    cfg = config.load({"server": {}, "server.security": {
        "server_secret_key": str(keydir / "server" / "server.key_secret")}})
    sp = ServerProcess(cfg, allow_client_keys=[public.decode()])
    try:
        server_public = read_public_key(keydir / "server" / "server.key")
        keys = ClientKeys(public, secret, server_public)
        with RobotClient(sp.endpoint, timeout=5.0, retries=0, keys=keys) as client:
            assert client.state()["q"].shape == (11,)
    finally:
        sp.close()


def test_connect_to_external_keyed_server(secure_server, keydir):
    toml = keydir / "laptop_client.toml"
    toml.write_text(f'[client]\nendpoint = "{secure_server.endpoint}"\ntimeout = 5.0\n'
                    'server_public_key = "server/server.key"\nclient_secret_key = "clients/laptop.key_secret"\n')
    with robot_env.connect(str(toml), clock=None) as robot:
        assert robot.backend == "kinematic"
        st = robot.send(ee_delta=[0.0, 0.01, 0.0])
        assert st["mode"] == "ok"
    bare = keydir / "bare_client.toml"
    bare.write_text(f'[client]\nendpoint = "{secure_server.endpoint}"\ntimeout = 0.5\nretries = 0\n')
    t0 = time.monotonic()
    with pytest.raises(ServerTimeout):
        robot_env.connect(str(bare), clock=None)
    assert time.monotonic() - t0 < 1.5


# -- config --------------------------------------------------------------------------------------
def test_key_paths_resolve_relative_to_the_config_file(keydir):
    cfg = config.load(str(keydir / "server.toml"))
    assert cfg["server.security"]["server_secret_key"] == str(keydir / "server" / "server.key_secret")
    assert cfg["server.security"]["allowed_clients"] == [str(keydir / "clients" / "laptop.key"), str(keydir / "team")]
    keys = server_keys(cfg)
    assert set(keys.allowed.values()) == {"laptop", "alice"}
    assert config.load("sim")["server.security"] == {"server_secret_key": "", "allowed_clients": []}
    assert server_keys(config.load("sim")) is None and client_keys(config.load("sim")) is None


@pytest.mark.parametrize("text,words", [
    ('[server.security]\nallowed_clients = ["clients/laptop.key"]\n', ["allowed_clients", "server_secret_key"]),
    ('[server.security]\nserver_secret_key = "server/server.key"\nallowed_clients = ["clients"]\n',
     ["server.key", "no secret key"]),
    ('[server.security]\nserver_secret_key = "server/missing.key_secret"\nallowed_clients = ["clients"]\n',
     ["missing.key_secret"]),
    ('[server.security]\nserver_secret_key = "server/server.key_secret"\n', ["allowed_clients", "no client"]),
    ('[server.security]\nserver_secret_key = "server/server.key_secret"\nallowed_clients = ["nowhere"]\n',
     ["nowhere", "allowed_clients"]),
    ('[server.security]\nallowed_clients = "clients"\n', ["allowed_clients", "list"]),
], ids=["clients_without_server_key", "public_file_as_secret", "missing_file", "no_clients", "missing_dir",
        "not_a_list"])
def test_server_key_config_errors(keydir, text, words):
    toml = keydir / "bad_server.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError) as info:
        server_keys(config.load(str(toml)))
    for word in words:
        assert word in str(info.value), str(info.value)


def test_client_key_config_errors(keydir):
    toml = keydir / "bad_client.toml"
    toml.write_text('[client]\nendpoint = "tcp://127.0.0.1:1"\nserver_public_key = "server/server.key"\n')
    with pytest.raises(ConfigError, match="client_secret_key"):
        client_keys(config.load(str(toml)))
    toml.write_text('[client]\nendpoint = "tcp://127.0.0.1:1"\nclient_secret_key = "clients/laptop.key_secret"\n')
    with pytest.raises(ConfigError, match="server_public_key"):
        client_keys(config.load(str(toml)))
    # client keys for a server this config would spawn without keys: a mistake, said up front
    toml.write_text('[client]\nserver_public_key = "server/server.key"\n'
                    'client_secret_key = "clients/laptop.key_secret"\n')
    with pytest.raises(ConfigError, match="server_secret_key"):
        client_keys(config.load(str(toml)), spawning=True)
