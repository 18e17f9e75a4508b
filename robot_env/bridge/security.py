"""CurveZMQ for the robot server and its clients: key files, the server's ZAP handler, refusal logs.

Key files are pyzmq's certificate format (what `zmq.auth.create_certificates` writes and
`zmq.auth.load_certificate` reads): ``NAME.key`` holds the public key, ``NAME.key_secret`` the
public and the secret key. Keys are Z85 text. `robot-env keys` makes a pair. Every key file is
created new with its mode set explicitly (secret 0600, public 0644: never the umask's choice) and
never through a symlink; a directory made for keys is 0700 (`write_key_file`).

Server side (`ServerKeys`, `Guard`): with ``[server.security] server_secret_key`` set, both the
request ROUTER and the state-stream XPUB are CURVE servers. The server answers ZeroMQ's ZAP
requests itself, in its own loop (no thread): a client whose public key is not among
``allowed_clients`` is refused during the handshake. Socket monitors catch the refusals that never
reach ZAP (a client without keys: mechanism mismatch; a client with the wrong server public key:
the handshake cannot be decrypted). Every refusal is logged as a WARNING line starting
``refused``; within 10 s one line is logged up to 3 times and at most 100 lines in all, then a
count of the ones not logged follows (a client retrying a wrong key cannot flood the log).

Client side (`ClientKeys`): ``[client] server_public_key`` and ``client_secret_key``;
`ClientKeys.apply(sock)` configures any socket (the request DEALER, a SUB on the state stream).
A refused client sees no reply: `RobotClient` raises `ServerTimeout` within its timeout.
"""
from __future__ import annotations

import datetime
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from ..errors import ConfigError

log = logging.getLogger("robot_env.server")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"robot-env"
_LOG_REPEATS, _LOG_LINES, _LOG_WINDOW = 3, 100, 10.0  # per window: repeats of one line, lines in all

_SECRET_BANNER = ("#   ****  Generated on {0} by robot-env keys (pyzmq certificate format)  ****\n"
                  "#   ZeroMQ CURVE **Secret** Certificate\n"
                  "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n")
_PUBLIC_BANNER = ("#   ****  Generated on {0} by robot-env keys (pyzmq certificate format)  ****\n"
                  "#   ZeroMQ CURVE Public Certificate\n"
                  "#   Give this file to the robot server's operator (clients) or to clients (server).\n\n")


# -- key files -----------------------------------------------------------------------------------
_KEY_MODE = {True: 0o600, False: 0o644}  # secret?
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def create_keypair(out_dir, name: str = "robot-env", *, force: bool = False) -> tuple[Path, Path]:
    """Write NAME.key (public, 0644) and NAME.key_secret (public + secret, 0600) into `out_dir`.

    Both paths are checked before either is written, so a refusal leaves nothing half made.
    """
    if not name or os.sep in name or name.startswith("."):
        raise ConfigError(f"key name {name!r}: use a plain file name without '/' or a leading '.'")
    out = Path(out_dir).expanduser()
    public_path, secret_path = out / f"{name}.key", out / f"{name}.key_secret"
    public, secret = zmq.curve_keypair()
    now = datetime.datetime.now().isoformat(timespec="seconds")
    body = f"metadata\ncurve\n    public-key = \"{public.decode()}\"\n"
    dfd = _key_dir(out)
    try:
        present = [_existing(dfd, path, force) for path in (public_path, secret_path)]
        for path, there in zip((public_path, secret_path), present):
            if there:  # --force: a new file, so nothing sharing the old one's inode is written to
                os.unlink(path.name, dir_fd=dfd)
        _write_new(dfd, secret_path, _SECRET_BANNER.format(now) + body + f"    secret-key = \"{secret.decode()}\"\n",
                   _KEY_MODE[True])
        _write_new(dfd, public_path, _PUBLIC_BANNER.format(now) + body, _KEY_MODE[False])
    finally:
        os.close(dfd)
    return public_path, secret_path


def write_key_file(path, text: str, *, secret: bool, force: bool = False) -> Path:
    """Create one key file (mode 0600 if `secret`, else 0644, whatever the umask), never through a
    symlink; an existing file is refused, or with `force` unlinked first. Missing directories are 0700."""
    path = Path(path).expanduser()
    dfd = _key_dir(path.parent)
    try:
        if _existing(dfd, path, force):
            os.unlink(path.name, dir_fd=dfd)
        _write_new(dfd, path, text, _KEY_MODE[secret])
    finally:
        os.close(dfd)
    return path


def _key_dir(out: Path) -> int:
    """A descriptor of directory `out`, whose missing parts are made 0700 whatever the umask; a
    symlink there is refused (the keys would land wherever it points)."""
    missing = []
    d = out
    while not os.path.lexists(d):
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: checked below like any existing directory
        fd = os.open(d, _DIR)
        try:
            os.fchmod(fd, 0o700)  # mkdir's mode went through the umask
        finally:
            os.close(fd)
    if out.is_symlink():
        raise ConfigError(f"{out} is a symbolic link (to {os.readlink(out)!r}); refusing to write keys through "
                          "it: give the directory itself")
    try:
        return os.open(out, _DIR)
    except OSError as exc:
        raise ConfigError(f"cannot use {out} as the key directory: {exc.strerror}") from None


def _existing(dfd: int, path: Path, force: bool) -> bool:
    """Whether a regular file is at `path` (then `force` is needed); a symlink or anything else is refused."""
    try:
        st = os.stat(path.name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{path} is a symbolic link (to {os.readlink(path.name, dir_fd=dfd)!r}); refusing to "
                          "write a key through it, even with --force: remove the link")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} exists and is not a regular file; remove it or choose another --out")
    if not force:
        raise ConfigError(f"{path} exists; pass --force to replace it")
    return True


def _write_new(dfd: int, path: Path, text: str, mode: int) -> None:
    """Create `path` (it must not exist, not even as a link) with exactly `mode` from the start."""
    try:
        fd = os.open(path.name, _NEW_FILE, mode, dir_fd=dfd)
    except FileExistsError:
        raise ConfigError(f"{path} appeared while the keys were being written; nothing was written to it") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), mode)  # the umask may have taken bits from the open's mode
        fh.write(text)


def _check_key(key, path, what: str) -> bytes:
    if key is None or len(key) != 40:
        raise ConfigError(f"{path}: no valid {what} key (expected 40 Z85 characters)")
    try:
        if len(z85.decode(key)) != 32:
            raise ValueError
    except Exception:
        raise ConfigError(f"{path}: the {what} key is not valid Z85 text") from None
    return bytes(key)


def read_public_key(path) -> bytes:
    """The Z85 public key in a .key (or .key_secret) file."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read a public key from {path}: {exc}") from None
    return _check_key(public, path, "public")


def read_secret_key(path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a .key_secret file; warns when others may read it."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read a key pair from {path}: {exc}") from None
    if secret is None:
        raise ConfigError(f"{path} holds no secret key (give the .key_secret file, not the .key one)")
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secret key file %s is accessible by other users (mode %o); chmod 600 it",
                    path, stat.S_IMODE(mode))
    return _check_key(public, path, "public"), _check_key(secret, path, "secret")


def load_allowed(entries, where: str = "") -> dict[bytes, str]:
    """Allowed client public keys from files (.key) and directories (every *.key in them): {key: file}."""
    allowed: dict[bytes, str] = {}
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files = sorted(path.glob("*.key"))
            if not files:
                log.warning("%s[server.security] allowed_clients: no *.key files in %s", where, path)
        elif path.is_file():
            files = [path]
        else:
            raise ConfigError(f"{where}[server.security] allowed_clients: {path} is neither a key file "
                              "nor a directory of .key files")
        for f in files:
            allowed[read_public_key(f)] = f.stem
    return allowed


@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair and the server's public key (all Z85)."""
    public: bytes
    secret: bytes = field(repr=False)
    server_public: bytes

    @classmethod
    def ephemeral(cls, server_public: bytes) -> "ClientKeys":
        public, secret = zmq.curve_keypair()
        return cls(public, secret, server_public)

    def apply(self, sock) -> None:
        """Make `sock` (before connect) a CURVE client of the server."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


@dataclass
class ServerKeys:
    public: bytes
    secret: bytes = field(repr=False)
    allowed: dict = field(default_factory=dict)  # Z85 public key -> a name for the logs

    def apply(self, sock) -> None:
        """Make `sock` (before bind) a CURVE server that asks our ZAP handler about every client."""
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.zap_domain = ZAP_DOMAIN


def server_keys(cfg: dict, extra_allowed=()) -> ServerKeys | None:
    """The server's keys from ``[server.security]``, or None when CURVE is not configured."""
    sec = cfg.get("server.security") or {}
    where = f"{cfg.get('source', '<dict>')}: "
    path = sec.get("server_secret_key", "")
    if not path:
        if sec.get("allowed_clients"):
            raise ConfigError(f"{where}[server.security] allowed_clients is set but server_secret_key is "
                              "not; `robot-env keys --out DIR --name server` makes a server key pair")
        return None
    public, secret = read_secret_key(path)
    allowed = load_allowed(sec.get("allowed_clients", []), where)
    for key in extra_allowed:
        allowed[_check_key(key.encode() if isinstance(key, str) else key, "--allow-client-key", "public")] = \
            "spawning session"
    if not allowed:
        raise ConfigError(f"{where}[server.security] allowed_clients: no client public keys; list the "
                          ".key files (or directories of them) of the clients allowed to connect")
    return ServerKeys(public, secret, allowed)


def client_keys(cfg: dict, *, spawning: bool = False) -> ClientKeys | None:
    """The client's CURVE keys from ``[client]``; None when it connects without CURVE.

    For a server this config spawns (`spawning`), the server's public key defaults to the one in
    its ``server_secret_key`` file, and a client without its own key pair gets a fresh one that
    the spawned server is told to allow (`ServerProcess(allow_client_keys=...)`).
    """
    cc = cfg["client"]
    where = f"{cfg.get('source', '<dict>')}: "
    server_secret = (cfg.get("server.security") or {}).get("server_secret_key", "")
    server_public = read_public_key(cc["server_public_key"]) if cc["server_public_key"] else None
    if spawning:
        if not server_secret:
            if server_public is not None or cc["client_secret_key"]:
                raise ConfigError(f"{where}[client] has CurveZMQ keys but the server this config starts "
                                  "has none: set [server.security] server_secret_key and allowed_clients, "
                                  "or a [client] endpoint to connect to a running server")
            return None
        if server_public is None:
            server_public = read_public_key(server_secret)
    elif server_public is None:
        if cc["client_secret_key"]:
            raise ConfigError(f"{where}[client] client_secret_key is set but server_public_key is not; "
                              "give the server's .key file")
        return None
    if not cc["client_secret_key"]:
        if spawning:
            return ClientKeys.ephemeral(server_public)
        raise ConfigError(f"{where}[client] server_public_key is set but client_secret_key is not; "
                          "`robot-env keys --out DIR --name NAME` makes a client key pair")
    public, secret = read_secret_key(cc["client_secret_key"])
    return ClientKeys(public, secret, server_public)


# -- the server's gatekeeper: ZAP handler and handshake monitors ---------------------------------
_PROTOCOL_REASONS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        "the client does not use CurveZMQ (no client keys configured?)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        "CurveZMQ handshake failed to decrypt (the client has a wrong server public key?)",
    zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE: "CurveZMQ key exchange failed",
}
_MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                   | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class Guard:
    """Answers ZAP requests from our sockets' handshakes and logs every refused connection.

    Polled by the server's own loop: `sockets` go into its poller, `handle(events)` serves them.
    Bind the ZAP endpoint (the constructor does) before any CURVE socket binds. One per context.
    """

    def __init__(self, ctx, keys: ServerKeys):
        self.keys = keys
        self.zap = ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        self.monitors: list = []  # (watched socket, monitor PAIR, what)
        self.sockets = [self.zap]
        self.accepted = self.refused = 0
        self._window, self._lines, self._suppressed = 0.0, {}, 0

    def watch(self, sock, what: str) -> None:
        """Log the handshake failures of `sock` (call after bind)."""
        mon = sock.get_monitor_socket(_MONITOR_EVENTS)
        self.monitors.append((sock, mon, what))
        self.sockets.append(mon)

    def handle(self, events) -> None:
        if self.zap in events:
            self._on_zap()
        for _, mon, what in self.monitors:
            if mon in events:
                self._on_monitor(mon, what)

    def _on_zap(self) -> None:
        while True:
            try:
                frames = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 6:  # not from libzmq; REP still owes a reply
                self.zap.send_multipart([b"1.0", frames[1] if len(frames) > 1 else b"", b"500",
                                         b"malformed ZAP request", b"", b""])
                continue
            request_id, address, mechanism, creds = frames[1], frames[3], frames[5], frames[6:]
            key = z85.encode(creds[0]) if mechanism == b"CURVE" and len(creds) == 1 \
                and len(creds[0]) == 32 else None
            name = self.keys.allowed.get(key) if key is not None else None
            peer = address.decode(errors="replace") or "a local (ipc) peer"
            if name is not None:
                self.accepted += 1
                log.info("accepted CurveZMQ client %r (key %s) from %s", name, key.decode(), peer)
                self.zap.send_multipart([b"1.0", request_id, b"200", b"OK", name.encode(), b""])
            else:
                what = f"CurveZMQ key {key.decode()}" if key else f"mechanism {mechanism.decode(errors='replace')}"
                self._refuse(f"refused a client with {what} from {peer}: not in [server.security] "
                             "allowed_clients")
                self.zap.send_multipart([b"1.0", request_id, b"400", b"client key not allowed", b"", b""])

    def _on_monitor(self, mon, what: str) -> None:
        while True:
            try:
                ev = parse_monitor_message(mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            except Exception:  # a malformed event: nothing to log about a client
                continue
            event, value = int(ev["event"]), int(ev["value"])
            endpoint = ev["endpoint"].decode(errors="replace") if isinstance(ev["endpoint"], bytes) \
                else str(ev["endpoint"])
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                continue  # the ZAP handler has logged it, with the key and the address
            if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                reason = _PROTOCOL_REASONS.get(value, f"ZeroMQ protocol error 0x{value:x}")
            else:  # no detail: seen for clients without keys too (the connection dropped mid-greeting)
                reason = "the CurveZMQ handshake did not complete (a client without keys, or one that hung up)"
            self._refuse(f"refused a connection to the {what} on {endpoint}: {reason}")

    def _refuse(self, text: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._window > _LOG_WINDOW:
            if self._suppressed:
                log.warning("refused %d more connection(s) in the last %g s (repeats, not logged each)",
                            self._suppressed, _LOG_WINDOW)
            self._window, self._lines, self._suppressed = now, {}, 0
        seen = self._lines.get(text, 0)
        if seen < _LOG_REPEATS and (seen or len(self._lines) < _LOG_LINES):
            self._lines[text] = seen + 1
            log.warning("%s", text)
        else:
            self._suppressed += 1

    def close(self) -> None:
        for sock, mon, _ in self.monitors:
            try:
                if not sock.closed:
                    sock.disable_monitor()
            except zmq.ZMQError:
                pass
            mon.close(0)
        self.monitors = []
        self.zap.close(0)
