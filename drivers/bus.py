"""A Dynamixel Protocol 2.0 bus over pyserial: transactions with computed timeouts, bounded retries
and errors that say what to check.

USB serial adapters and reply latency (worth a README paragraph):

- FTDI-based adapters (the U2D2, USB2Dynamixel, most USB-RS485 dongles) hold received bytes for up
  to their *latency timer* before handing them to the host: 16 ms by default, which caps a
  request/reply bus at about 60 transactions per second whatever the baud rate. Set it to 1 ms:
  `echo 1 | sudo tee /sys/bus/usb-serial/devices/ttyUSB0/latency_timer` (a udev rule makes it
  permanent: `ACTION=="add", SUBSYSTEM=="usb-serial", DRIVER=="ftdi_sio",
  ATTR{latency_timer}="1"`). `DynamixelBus.open()` also asks the kernel for low-latency mode,
  which the ftdi_sio driver honours, and warns (and adds the timer to its reply timeouts) when
  the timer still reads more than 1 ms.
- Every servo waits its *Return Delay Time* (address 9, ×2 µs) before replying: the factory
  default 250 means 500 µs per servo per read, which for 12 servos costs more than the whole
  sync read on the wire at 1 Mbps. Set it to 0 (EEPROM: with torque off) on every servo.
- Wire time, for planning: 10 bits per byte. At 1 Mbps a sync write of 12 goal positions plus a
  sync read of position and velocity from 12 servos is ~330 bytes, about 3.3 ms: ~300 cycles/s
  with zero return delay, ~110 with the default one; ~1,200 cycles/s at 4 Mbps.

Transactions: the reply timeout of each request is computed from the baud rate and the bytes that
go out and are expected back, plus each answering servo's return delay (as last written or read
through this bus; the factory default is assumed until then), the adapter's latency timer, and
`timeout_slack` for a loaded machine. Reads (and WRITE, which is idempotent) are retried on a
timeout or a corrupt reply, at most `retries` times; sync writes, bulk writes, REBOOT and the
like have no retry (most have no reply to judge by). A `PacketReader` resynchronises after
garbage; replies from unexpected ids or of the wrong size are ignored.

Errors: `PortError` (missing, busy or forbidden port; the adapter unplugged mid-operation),
`BusTimeout` (`.ids`: the servos that did not answer), `ServoError` (`.servo_id`, `.code`: the
status packet's error name, `.alert`: the hardware alert bit). A reply with only the alert bit
set is data, not an error: the ids are recorded in `last_alerts` so the caller reads Hardware
Error Status (address 70).
"""
from __future__ import annotations

import errno
import logging
import os
import select
import termios
import threading
import time

import serial

from robot_env.errors import RobotEnvError

from . import control_table as ct
from . import protocol2 as p2

log = logging.getLogger("drivers.bus")

DEFAULT_RETURN_DELAY = 250 * 2e-6  # s, the factory default (assumed until known)
STATUS_OVERHEAD = 11  # header 4, id, length 2, instruction, error, CRC 2
F = ct.FIELDS


class BusError(RobotEnvError):
    """Something went wrong on the servo bus."""


class PortError(BusError):
    """The serial port cannot be opened, or went away."""

    def __init__(self, message: str, port: str = ""):
        super().__init__(message)
        self.port = port


class BusTimeout(BusError):
    """No (valid) reply within the computed timeout. `.ids`: the servos that did not answer;
    `.partial`: {id: data} from the ones that did (sync and bulk reads)."""

    def __init__(self, message: str, ids, partial: dict | None = None):
        super().__init__(message)
        self.ids = set(ids)
        self.partial = partial or {}


class ServoError(BusError):
    """A servo answered with an error. `.code`: protocol2 error name; `.alert`: hardware alert bit."""

    def __init__(self, message: str, servo_id: int, code: str | None, alert: bool = False):
        super().__init__(message)
        self.servo_id = servo_id
        self.code = code
        self.alert = alert


class DynamixelBus:
    """One Protocol 2.0 bus on one serial port (POSIX: pyserial's descriptor is polled directly).
    Thread-safe: one transaction at a time."""

    def __init__(self, port: str, baud: int = 1_000_000, *, timeout_slack: float = 0.02, retries: int = 2,
                 return_delay: float = DEFAULT_RETURN_DELAY):
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.port = str(port)
        self.baud = int(baud)
        self.timeout_slack = float(timeout_slack)
        self.retries = int(retries)
        self.default_return_delay = float(return_delay)
        self.byte_time = 10.0 / self.baud  # 8N1: a start bit, 8 data bits, a stop bit
        self.latency = 0.0  # s, the USB adapter's latency timer when we can read it
        self.last_alerts: set[int] = set()
        self._delays: dict[int, float] = {}  # id -> return delay (s), as last written/read
        self._srl: dict[int, int] = {}  # id -> status return level, as last written/read
        self._ser: serial.Serial | None = None
        self._fd = -1
        self._poll = None
        self._reader = p2.PacketReader()
        self._raw_reader = p2.PacketReader(unstuff_params=False)  # FAST_SYNC_READ replies
        self._dirty = False
        self._lock = threading.RLock()
        self._counts = {"transactions": 0, "timeouts": 0, "retries": 0, "alerts": 0, "servo_errors": 0}
        # Pauses (s), for the servos' bus watchdogs: the longest silence between two instructions
        # sent and the longest time a poll for a reply overran its timeout (the kernel held it),
        # since `take_pauses()` and, in `stats`, since creation or `reset_stats()`.
        self.last_tx = 0.0  # monotonic time of the last instruction sent (0: none yet)
        self._pause = [0.0, 0.0]
        self._pause_max = [0.0, 0.0]

    # -- port ---------------------------------------------------------------------------------
    def open(self) -> "DynamixelBus":
        with self._lock:
            if self._ser is not None:
                return self
            ser = serial.Serial(baudrate=self.baud, timeout=0, write_timeout=1.0, exclusive=True)
            ser.port = self.port
            try:
                ser.open()
            except serial.SerialException as exc:
                raise self._open_error(exc) from None
            except (ValueError, OSError) as exc:
                raise PortError(f"cannot open serial port {self.port} at {self.baud} baud: {exc}",
                                self.port) from None
            try:
                ser.set_low_latency_mode(True)  # FTDI: the kernel sets the latency timer to 1 ms
            except (AttributeError, ValueError, OSError, NotImplementedError):
                pass
            self.latency = _latency_timer(self.port)
            if self.latency > 0.001:
                log.warning("%s: USB latency timer is %.0f ms; every reply waits for it. Set it to 1: "
                            "echo 1 | sudo tee %s", self.port, self.latency * 1e3, _latency_path(self.port))
            try:
                ser.reset_input_buffer()
            except (serial.SerialException, OSError, termios.error) as exc:
                ser.close()
                raise PortError(f"serial port {self.port}: {exc}", self.port) from None
            self._ser = ser
            self._fd = ser.fileno()
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN | select.POLLPRI)
            self._reader.clear()
            self._raw_reader.clear()
            self._dirty = False
            return self

    def _open_error(self, exc: serial.SerialException) -> PortError:
        port = self.port
        code = exc.errno
        text = str(exc)
        if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or (code is None and "No such file" in text):
            return PortError(f"no serial port at {port}: is the adapter plugged in?", port)
        if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY) or "exclusively lock" in text:
            return PortError(f"serial port {port} is busy: another program (a robot-env server, the "
                             "Dynamixel Wizard, a terminal) has it open", port)
        if code in (errno.EACCES, errno.EPERM) or (code is None and "Permission denied" in text):
            return PortError(f"permission denied opening {port}: add yourself to the dialout group "
                             "(sudo usermod -aG dialout $USER, then log out and in)", port)
        return PortError(f"cannot open serial port {port}: {exc}", port)

    def close(self) -> None:
        with self._lock:
            ser, self._ser = self._ser, None
            self._fd = -1
            self._poll = None
            if ser is not None:
                try:
                    ser.close()
                except (serial.SerialException, OSError):
                    pass

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def __enter__(self) -> "DynamixelBus":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DynamixelBus({self.port!r}, {self.baud}, {'open' if self.is_open else 'closed'})"

    @property
    def stats(self) -> dict:
        """Counters (since creation or `reset_stats()`): transactions, timeouts (attempts that
        ended without every reply), retries, crc_errors, garbage_bytes, alerts, servo_errors; and
        max_silence_ms (the longest gap between two instructions sent), max_poll_overrun_ms."""
        out = dict(self._counts)
        out["crc_errors"] = self._reader.crc_errors + self._raw_reader.crc_errors
        out["garbage_bytes"] = self._reader.garbage_bytes + self._raw_reader.garbage_bytes
        out["max_silence_ms"] = 1e3 * self._pause_max[0]
        out["max_poll_overrun_ms"] = 1e3 * self._pause_max[1]
        return out

    def reset_stats(self) -> None:
        for k in self._counts:
            self._counts[k] = 0
        self._pause_max = [0.0, 0.0]
        for r in (self._reader, self._raw_reader):
            r.crc_errors = r.garbage_bytes = 0

    def take_pauses(self) -> tuple[float, float]:
        """(longest silence between two instructions sent, the one still open included; longest
        time a poll for a reply overran its timeout), in seconds since the previous call."""
        with self._lock:
            silence, overrun = self._pause
            if self.last_tx:
                silence = max(silence, time.monotonic() - self.last_tx)
            self._pause = [0.0, 0.0]
            return silence, overrun

    def return_delay(self, servo_id: int) -> float:
        return self._delays.get(servo_id, self.default_return_delay)

    def set_return_delay(self, servo_id: int, seconds: float) -> None:
        """Tell the bus a servo's Return Delay Time without a read (shortens its timeouts)."""
        self._delays[servo_id] = seconds

    # -- low level ------------------------------------------------------------------------------
    def _lost(self, exc) -> PortError:
        """The port went away (adapter unplugged): close it and say so."""
        self.close()
        why = f" ({exc})" if exc else ""
        return PortError(f"serial port {self.port} went away{why}: adapter unplugged? "
                         "open() the bus again when it is back", self.port)

    def _port(self) -> int:
        if self._ser is None:
            raise PortError(f"serial port {self.port} is not open", self.port)
        return self._fd

    def _begin(self) -> int:
        """Start a transaction: drop stale bytes left by a failed one."""
        fd = self._port()
        if self._dirty:
            try:
                self._ser.reset_input_buffer()
            except Exception as exc:  # noqa: BLE001  (termios.error, OSError, SerialException)
                raise self._lost(exc) from None
            self._dirty = False
        self._reader.clear()
        self._raw_reader.clear()
        self.last_alerts = set()
        self._counts["transactions"] += 1
        return fd

    def _send(self, fd: int, pkt: bytes) -> None:
        now = time.monotonic()
        if self.last_tx:
            self._note_pause(0, now - self.last_tx)
        self.last_tx = now
        try:
            n = os.write(fd, pkt)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            raise self._lost(exc) from None
        if n < len(pkt):
            self._send_rest(fd, memoryview(pkt)[n:])

    def _send_rest(self, fd: int, rest) -> None:
        deadline = time.monotonic() + 0.5 + len(rest) * self.byte_time
        while rest:
            if time.monotonic() > deadline:
                raise self._lost("write timed out")
            try:
                select.select([], [fd], [], 0.05)
                n = os.write(fd, rest)
            except BlockingIOError:
                continue
            except (OSError, ValueError) as exc:
                raise self._lost(exc) from None
            rest = rest[n:]

    def _collect(self, fd: int, pending: dict, timeout: float, reader: p2.PacketReader) -> dict:
        """Status packets for the ids in `pending` ({id: expected data length or None}) until all
        have answered or the timeout passes. Returns {id: Packet}."""
        got: dict = {}
        poll = self._poll.poll
        deadline = time.perf_counter() + timeout
        while pending:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            t = time.perf_counter()
            try:
                events = poll(remaining * 1000.0)
            except (OSError, ValueError) as exc:
                raise self._lost(exc) from None
            # A tty's poll first waits for the kernel's worker to hand over received bytes: on a
            # loaded machine that can hold it far past its timeout (and the bus silent meanwhile).
            self._note_pause(1, time.perf_counter() - t - remaining)
            if not events:
                break
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise self._lost(exc) from None
            if not chunk:
                raise self._lost("readable but no data")
            for pkt in reader.feed(chunk):
                sid = pkt.id
                if pkt.inst != p2.STATUS or sid not in pending:
                    continue  # an echo of our own packet, or a stray reply
                want = pending[sid]
                if want is not None and len(pkt.params) != want + 1 and not (pkt.params and pkt.params[0] & 0x7F):
                    continue  # a reply of the wrong size (a late answer to something else)
                got[sid] = pkt
                del pending[sid]
        return got

    def _note_pause(self, which: int, seconds: float) -> None:
        if seconds > self._pause[which]:
            self._pause[which] = seconds
        if seconds > self._pause_max[which]:
            self._pause_max[which] = seconds

    def _timeout(self, tx: int, rx: int, ids) -> float:
        delays = self._delays
        d = self.default_return_delay
        return ((tx + rx) * self.byte_time + sum(delays.get(i, d) for i in ids)
                + self.latency + self.timeout_slack)

    def _check(self, pkt: p2.Packet, what: str) -> None:
        """Raise ServoError for an error status; record the alert bit."""
        err = pkt.params[0] if pkt.params else 0
        if err & p2.ALERT:
            self.last_alerts.add(pkt.id)
            self._counts["alerts"] += 1
        if err & 0x7F:
            self._counts["servo_errors"] += 1
            code = p2.error_name(err)
            alert = bool(err & p2.ALERT)
            raise ServoError(f"servo {pkt.id} refused {what}: {code}"
                             + ("; hardware alert set (read hardware_error_status)" if alert else ""),
                             pkt.id, code, alert)

    def _no_reply(self, ids, what: str, attempts: int, partial=None) -> BusTimeout:
        ids = list(ids)
        who = ", ".join(str(i) for i in ids)
        return BusTimeout(f"no reply from servo{'s' if len(ids) > 1 else ''} {who} to {what} on {self.port} "
                          f"at {self.baud} baud ({attempts} attempt{'s' if attempts > 1 else ''}): check "
                          "power, cabling, servo id and baud rate", ids, partial)

    def _instruct(self, servo_id: int, pkt: bytes, what: str, retries: int, no_status: bool = False) -> None:
        """An instruction answered by a bare status: wait for it (retried `retries` times) unless it is
        broadcast, the servo's status return level is below 2, or `no_status` (a status may come or
        not: the next transaction drops whatever does)."""
        if no_status or servo_id == p2.BROADCAST_ID or self._srl.get(servo_id, 2) < 2:
            with self._lock:
                self._send(self._begin(), pkt)
                self._dirty = self._dirty or no_status
        else:
            self._unicast(servo_id, pkt, 0, what, retries)

    def _unicast(self, servo_id: int, pkt: bytes, data_len: int, what: str, retries: int) -> p2.Packet:
        """Send an instruction to one servo and return its status packet (retried)."""
        with self._lock:
            timeout = self._timeout(len(pkt), STATUS_OVERHEAD + data_len + data_len // 3, (servo_id,))
            for attempt in range(retries + 1):
                if attempt:
                    self._counts["retries"] += 1
                fd = self._begin()
                self._send(fd, pkt)
                got = self._collect(fd, {servo_id: data_len}, timeout, self._reader)
                if got:
                    reply = got[servo_id]
                    self._check(reply, what)
                    if len(reply.params) - 1 == data_len:
                        return reply
                self._counts["timeouts"] += 1
                self._dirty = True
            raise self._no_reply([servo_id], what, retries + 1)

    # -- instructions ---------------------------------------------------------------------------
    def ping(self, servo_id: int) -> tuple[int, int]:
        """(model number, firmware version) of one servo."""
        if not 0 <= servo_id <= p2.MAX_ID:
            raise ValueError(f"ping: servo id {servo_id} out of range 0..{p2.MAX_ID}")
        reply = self._unicast(servo_id, p2.ping(servo_id), 3, "PING", self.retries)
        d = reply.params
        return d[1] | d[2] << 8, d[3]

    def broadcast_ping(self, *, timeout: float | None = None, max_id: int = p2.MAX_ID) -> dict[int, int]:
        """{id: model number} of every servo that answers a broadcast PING.

        Listens for the whole window in which servos up to `max_id` may answer (about 3 ms per id,
        as the official SDK allows), or `timeout` seconds if given."""
        if timeout is None:
            timeout = (max_id + 1) * (0.003 + 14 * self.byte_time) + self.latency + self.timeout_slack
        with self._lock:
            fd = self._begin()
            self._send(fd, p2.ping(p2.BROADCAST_ID))
            pending = {i: None for i in range(p2.BROADCAST_ID)}
            got = self._collect(fd, pending, timeout, self._reader)
            self._dirty = True
            out = {}
            for sid, pkt in sorted(got.items()):
                if len(pkt.params) == 4:
                    if pkt.params[0] & p2.ALERT:
                        self.last_alerts.add(sid)
                    out[sid] = pkt.params[1] | pkt.params[2] << 8
            return out

    def read(self, servo_id: int, address: int, length: int) -> bytes:
        if self._srl.get(servo_id, 2) < 1:
            raise BusError(f"servo {servo_id} has status return level 0: it does not answer READ")
        reply = self._unicast(servo_id, p2.read(servo_id, address, length), length,
                              f"READ of {length} byte(s) at {_where(address)}", self.retries)
        data = reply.params[1:]
        self._learn(servo_id, address, data)
        return data

    def write(self, servo_id: int, address: int, data: bytes) -> None:
        """WRITE and wait for the status (unless broadcast or the status return level is < 2)."""
        data = bytes(data)
        pkt = p2.write(servo_id, address, data)
        what = f"WRITE of {len(data)} byte(s) at {_where(address)}"
        # A servo may or may not answer the write that lowers its status return level.
        lowers_srl = address <= 68 < address + len(data) and data[68 - address] < 2
        self._instruct(servo_id, pkt, what, self.retries, no_status=lowers_srl)  # idempotent: safe to retry
        self._learn(servo_id, address, data)

    def reg_write(self, servo_id: int, address: int, data: bytes) -> None:
        """REG_WRITE: held by the servo until ACTION."""
        pkt = p2.write(servo_id, address, bytes(data), registered=True)
        self._instruct(servo_id, pkt, f"REG_WRITE at {_where(address)}", self.retries)

    def action(self, servo_id: int = p2.BROADCAST_ID) -> None:
        self._instruct(servo_id, p2.action(servo_id), "ACTION", 0)

    def read_field(self, servo_id: int, name: str) -> int:
        f = F[name]
        return ct.from_bytes(f, self.read(servo_id, f.address, f.size))

    def write_field(self, servo_id: int, name: str, value: int) -> None:
        f = F[name]
        try:
            raw = ct.to_bytes(f, value)
        except OverflowError:
            raise ValueError(f"{name}: {value} does not fit in {f.size} byte(s)"
                             f"{' signed' if f.signed else ''}") from None
        self.write(servo_id, f.address, raw)

    def reboot(self, servo_id: int) -> None:
        """REBOOT (not retried). The servo is deaf while it boots: wait before talking to it."""
        self._instruct(servo_id, p2.reboot(servo_id), "REBOOT", 0)
        for sid in (list(self._srl) if servo_id == p2.BROADCAST_ID else [servo_id]):
            self._srl.pop(sid, None)  # RAM (status return level included) is back to defaults

    def factory_reset(self, servo_id: int, keep: int = 0x02) -> None:
        """FACTORY_RESET (not retried). keep: 0xFF all, 0x01 all but ID, 0x02 all but ID and baud."""
        self._unicast(servo_id, p2.factory_reset(servo_id, keep), 0, "FACTORY_RESET", 0)
        self._srl.pop(servo_id, None)
        self._delays.pop(servo_id, None)

    def sync_write(self, address: int, length: int, data_by_id: dict) -> None:
        """SYNC_WRITE the same field of several servos. No reply, so no retry and no confirmation."""
        pkt = p2.sync_write(address, length, data_by_id)
        with self._lock:
            self._send(self._begin(), pkt)
        if address <= 9 < address + length or address <= 68 < address + length:
            for sid, data in data_by_id.items():
                self._learn(sid, address, data)

    def bulk_write(self, writes) -> None:
        """BULK_WRITE [(id, address, data)]: a different field per servo. No reply, no retry."""
        writes = list(writes)
        pkt = p2.bulk_write(writes)
        with self._lock:
            self._send(self._begin(), pkt)
        for sid, address, data in writes:
            if address <= 68:
                self._learn(sid, address, data)

    def sync_read(self, address: int, length: int, ids, fast: bool = False) -> dict[int, bytes]:
        """{id: data} from SYNC_READ (one status per servo, in `ids` order) or FAST_SYNC_READ (one
        packet for all). Servos whose status has the alert bit are put in `last_alerts`. Missing
        replies are retried for the missing ids; BusTimeout(.ids) names those that never answered."""
        ids = list(ids)
        if not ids:
            return {}
        with self._lock:
            out: dict[int, bytes] = {}
            alerts: set[int] = set()
            missing = ids
            attempts = 0
            if fast:
                attempts = 1
                got = self._fast_sync_read(address, length, ids, alerts)
                if got is not None:
                    self.last_alerts = alerts
                    return got
                # Something broke the one-packet reply: find out who with plain sync reads (at
                # least one, even with retries=0, so the error can name the silent servos).
            for _ in range(max(1, self.retries + 1 - attempts)):
                if attempts:
                    self._counts["retries"] += 1
                attempts += 1
                pkt = p2.sync_read(address, length, missing)
                fd = self._begin()
                self._send(fd, pkt)
                want = dict.fromkeys(missing, length)
                timeout = self._timeout(len(pkt), len(missing) * (STATUS_OVERHEAD + length + length // 3),
                                        missing)
                got = self._collect(fd, want, timeout, self._reader)
                for sid, reply in got.items():
                    self._accept(reply, alerts, out, f"SYNC_READ of {length} byte(s) at {_where(address)}")
                if len(got) == len(missing):
                    break
                self._counts["timeouts"] += 1
                self._dirty = True
                missing = [i for i in missing if i not in got]
            self.last_alerts = alerts
            if len(out) < len(ids):
                missing = [i for i in ids if i not in out]
                raise self._no_reply(missing, f"SYNC_READ of {length} byte(s) at {_where(address)}",
                                     attempts, {i: out[i] for i in ids if i in out})
            if address <= 9 < address + length or address <= 68 < address + length:
                for sid, data in out.items():
                    self._learn(sid, address, data)
            return {i: out[i] for i in ids}

    def _fast_sync_read(self, address: int, length: int, ids: list, alerts: set) -> dict | None:
        """One FAST_SYNC_READ attempt: {id: data}, or None when the reply did not come whole."""
        pkt = p2.sync_read(address, length, ids, fast=True)
        fd = self._begin()
        self._send(fd, pkt)
        timeout = self._timeout(len(pkt), 8 + len(ids) * (length + 4) + 2, ids)
        got = self._collect(fd, {p2.BROADCAST_ID: None}, timeout, self._raw_reader)
        reply = got.get(p2.BROADCAST_ID)
        parsed = None
        if reply is not None and len(reply.params) == len(ids) * (length + 4) - 2:
            try:
                parsed = p2.parse_fast_sync(reply, ids, length)
            except ValueError:
                parsed = None
        if parsed is None or list(parsed) != ids:
            self._counts["timeouts"] += 1
            self._dirty = True
            return None
        out: dict[int, bytes] = {}
        for sid in ids:
            err, data = parsed[sid]
            self._accept(p2.Packet(sid, p2.STATUS, bytes((err,)) + bytes(data)), alerts, out,
                         f"FAST_SYNC_READ of {length} byte(s) at {_where(address)}")
        return out

    def _accept(self, reply: p2.Packet, alerts: set, out: dict, what: str) -> None:
        """One servo's status in a group read: note a hardware alert, raise on an error, keep the data."""
        err = reply.params[0]
        if err & p2.ALERT:
            alerts.add(reply.id)
            self._counts["alerts"] += 1
        if err & 0x7F:
            self.last_alerts = alerts
            self._check(reply, what)
        out[reply.id] = bytes(reply.params[1:])

    def bulk_read(self, requests) -> dict[int, bytes]:
        """{id: data} from BULK_READ [(id, address, length)] (one entry per id)."""
        requests = [(int(i), int(a), int(n)) for i, a, n in requests]
        ids = [r[0] for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("bulk_read: each servo id may appear once")
        with self._lock:
            out: dict[int, bytes] = {}
            alerts: set[int] = set()
            todo = requests
            attempts = 0
            for attempt in range(self.retries + 1):
                if attempt:
                    self._counts["retries"] += 1
                attempts += 1
                pkt = p2.bulk_read(todo)
                fd = self._begin()
                self._send(fd, pkt)
                want = {i: n for i, _, n in todo}
                rx = sum(STATUS_OVERHEAD + n + n // 3 for _, _, n in todo)
                got = self._collect(fd, want, self._timeout(len(pkt), rx, want), self._reader)
                for sid, reply in got.items():
                    self._accept(reply, alerts, out, "BULK_READ")
                if len(got) == len(todo):
                    break
                self._counts["timeouts"] += 1
                self._dirty = True
                todo = [r for r in todo if r[0] not in got]
            self.last_alerts = alerts
            if len(out) < len(ids):
                missing = [i for i in ids if i not in out]
                raise self._no_reply(missing, "BULK_READ", attempts, dict(out))
            for sid, address, _ in requests:
                self._learn(sid, address, out[sid])
            return {i: out[i] for i in ids}

    # -- what the bus learns about the servos -------------------------------------------------
    def _learn(self, servo_id: int, address: int, data: bytes) -> None:
        """Track Return Delay Time (9) and Status Return Level (68) from what we read or write."""
        end = address + len(data)
        if address <= 9 < end or address <= 68 < end:
            targets = list(self._delays.keys() | self._srl.keys()) if servo_id == p2.BROADCAST_ID else [servo_id]
            for sid in targets:
                if address <= 9 < end:
                    self._delays[sid] = data[9 - address] * 2e-6
                if address <= 68 < end:
                    self._srl[sid] = data[68 - address]


def _where(address: int) -> str:
    f = ct.BY_ADDRESS.get(address)
    return f"address {address} ({f.name})" if f else f"address {address}"


def _latency_path(port: str) -> str:
    name = os.path.basename(os.path.realpath(port))
    return f"/sys/bus/usb-serial/devices/{name}/latency_timer"


def _latency_timer(port: str) -> float:
    """The USB serial adapter's latency timer in seconds (0 when there is none to read)."""
    try:
        with open(_latency_path(port)) as fh:
            return int(fh.read().strip()) / 1000.0
    except (OSError, ValueError):
        return 0.0


def wire_bytes_cycle(n_servos: int, write_len: int = 4, read_len: int = 8, fast: bool = False) -> int:
    """Bytes on the wire for one control cycle: a SYNC_WRITE of `write_len` bytes per servo and a
    (FAST_)SYNC_READ of `read_len` bytes per servo, replies included."""
    sync_write = 14 + n_servos * (1 + write_len)
    sync_read = 14 + n_servos
    if fast:
        replies = 8 + n_servos * (read_len + 4)  # one packet: header, id, length, 0x55, then ERR ID DATA CRC each
    else:
        replies = n_servos * (STATUS_OVERHEAD + read_len)
    return sync_write + sync_read + replies


def wire_time_cycle(n_servos: int, baud: int, **kw) -> float:
    """Seconds on the wire for one cycle (zero return delay): bytes × 10 bits / baud."""
    return wire_bytes_cycle(n_servos, **kw) * 10.0 / baud


__all__ = ["BusError", "PortError", "BusTimeout", "ServoError", "DynamixelBus", "wire_bytes_cycle",
           "wire_time_cycle"]
