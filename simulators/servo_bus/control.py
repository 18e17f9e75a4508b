"""The emulator from outside: servos from a config, a remote-control endpoint for fault injection, and
`EmulatorProcess` (`robot-env emulate-bus` as a child process)."""
from __future__ import annotations

import logging
import threading

from drivers import control_table as ct
from robot_env.bridge.spawn import ChildProcess

from .emulator import ServoBusEmulator

log = logging.getLogger("simulators.servo_bus")


def servos_from_config(name_or_path: str) -> tuple[dict[int, int], dict[int, int], int]:
    """(servos {id: model number}, initial positions {id: ticks}, baud) from a config.

    Either a robot-env config whose `[server.dynamixel] calibration` is read with the driver's own
    calibration loader (each servo starts at its `zero`: joints at 0, wheels still), or a small
    TOML with a `[servos]` table of `"id" = "MODEL"` (and optionally `[server.dynamixel] baud`).
    """
    from drivers.calibration import MODEL_NUMBERS, load_calibration
    from robot_env import config
    from robot_env.errors import ConfigError
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = config.resolve(name_or_path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if "servos" in raw:
        servos = {}
        for key, model in raw.pop("servos").items():
            if not str(key).isdigit():
                raise ConfigError(f"{path}: [servos] {key!r}: keys are servo ids")
            number = model if isinstance(model, int) and model in ct.MODELS else MODEL_NUMBERS.get(model)
            if number is None:
                raise ConfigError(f"{path}: [servos] {key}: unknown model {model!r}; "
                                  f"known: {sorted(MODEL_NUMBERS)} or their model numbers")
            servos[int(key)] = number
        baud = raw.get("server", {}).get("dynamixel", {}).get("baud", 1_000_000)
        return servos, {}, int(baud)
    cfg = config.load(path)
    dyn = cfg["server.dynamixel"]
    cal = load_calibration(dyn["calibration"])
    servos = {s.id: s.model_number for s in cal.servos}
    initial = {s.id: (s.zero if s.mode != "velocity" else 0) for s in cal.servos}
    return servos, initial, dyn["baud"]


CONTROL_OPS = ("corrupt", "drop", "delay", "silence", "unsilence", "set_hardware_error", "close_port",
               "reopen", "field", "set_field", "status")


def control_reply(emu: ServoBusEmulator, msg: dict) -> dict:
    """Apply one remote-control request {"op": ..., ...} to the emulator; the reply map."""
    try:
        op = msg.get("op") if isinstance(msg, dict) else None
        if op == "corrupt":
            emu.corrupt(msg["rate"])
        elif op == "drop":
            emu.drop(msg["rate"])
        elif op == "delay":
            emu.delay(msg["seconds"])
        elif op == "silence":
            emu.silence(msg["ids"])
        elif op == "unsilence":
            emu.unsilence(msg["ids"])
        elif op == "set_hardware_error":
            emu.set_hardware_error(int(msg["id"]), int(msg["bits"]))
        elif op == "close_port":
            emu.close_port()
        elif op == "reopen":
            return {"ok": True, "path": emu.reopen()}
        elif op == "field":
            with emu._lock:
                return {"ok": True, "value": emu.servo(int(msg["id"])).get(msg["name"])}
        elif op == "set_field":
            with emu._lock:
                emu.servo(int(msg["id"])).set(msg["name"], int(msg["value"]))
        elif op == "status":
            with emu._lock:
                off = {s.id: s.torque_off_writes for s in emu.servos}
            return {"ok": True, "path": emu.path, "ids": [s.id for s in emu.servos], "stats": dict(emu.stats),
                    "torque_off_writes": off}
        else:
            return {"ok": False, "error": f"unknown op {op!r}; known: {', '.join(CONTROL_OPS)}"}
        return {"ok": True}
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def serve_control(emu: ServoBusEmulator, endpoint: str, stop: threading.Event) -> None:
    """Answer control requests on a zmq REP socket until `stop` is set (msgpack maps both ways)."""
    import msgpack
    import zmq
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 16)
    sock.bind(endpoint)
    try:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            raw = sock.recv()
            try:
                msg = msgpack.unpackb(raw, raw=False, max_bin_len=1 << 16, max_str_len=1 << 16)
            except Exception as exc:  # noqa: BLE001  (any undecodable request gets an error reply)
                reply = {"ok": False, "error": f"not a msgpack map: {exc}"}
            else:
                reply = control_reply(emu, msg)
            sock.send(msgpack.packb(reply, use_bin_type=True))
    finally:
        sock.close(0)


class EmulatorControl:
    """Client side of `--control`: `EmulatorControl(endpoint).call("drop", rate=0.5)`."""

    def __init__(self, endpoint: str, timeout: float = 5.0):
        import zmq
        self._zmq = zmq
        self.endpoint = endpoint
        self.timeout = timeout
        self._sock = zmq.Context.instance().socket(zmq.REQ)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)

    def call(self, op: str, **kw) -> dict:
        import msgpack
        self._sock.send(msgpack.packb({"op": op, **kw}, use_bin_type=True))
        if not self._sock.poll(int(self.timeout * 1000)):
            raise TimeoutError(f"emulator control at {self.endpoint} did not answer {op!r}")
        reply = msgpack.unpackb(self._sock.recv(), raw=False)
        if not reply.get("ok"):
            raise RuntimeError(f"emulator control {op!r}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        self._sock.close(0)


class EmulatorProcess(ChildProcess):
    """`robot-env emulate-bus` as a child process that dies with us: `.path`, `.control`, `.close()`.

    For tests and demos that want the bus emulator outside their own process (so it does not
    share their CPU time or GIL), e.g. `EmulatorProcess("fetch_dynamixel", control=True)`.
    """

    def __init__(self, config: str, *, link: str | None = None, timing: bool = False,
                 control: bool | str = False, baud: int | None = None, ready_timeout: float = 20.0):
        from robot_env.bridge.endpoints import private_ipc
        self.control = None
        self.control_endpoint = None
        if control:
            self.control_endpoint = control if isinstance(control, str) else private_ipc()[0]
        args = ["emulate-bus", "--config", str(config)]
        if link:
            args += ["--link", str(link)]
        if timing:
            args.append("--timing")
        if baud:
            args += ["--baud", str(baud)]
        if self.control_endpoint:
            args += ["--control", self.control_endpoint]
        super().__init__(args, "robot-env emulate-bus")
        self.path = self.wait_line(ready_timeout)  # its first line is the device path
        self.control = EmulatorControl(self.control_endpoint) if self.control_endpoint else None

    def close(self, timeout: float = 5.0) -> int | None:
        if self.control is not None:
            self.control.close()
            self.control = None
        return super().close(timeout)

    def __enter__(self) -> "EmulatorProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
