"""`ServoBusEmulator`: the servos of `servo.EmulatedServo` on a pseudo-terminal, answering Protocol 2.0 from
a thread as a real bus would, with fault injection."""
from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import random
import select
import struct
import termios
import threading
import time
import tty

from drivers import control_table as ct
from drivers import protocol2 as p2

from .servo import _U16, E_ACCESS, E_INST, E_LENGTH, E_RANGE, E_RESULT, FAST_BULK_READ, EmulatedServo

log = logging.getLogger("simulators.servo_bus")

# TCGETS2 (asm-generic: _IOR('T', 0x2A, struct termios2), 44 bytes): the exact line speed, BOTHER too.
_TCGETS2 = 0x802C542A
_BAUD_CONSTANTS = {getattr(termios, f"B{b}"): b for b in (
    9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000,
    1500000, 2000000, 2500000, 3000000, 3500000, 4000000) if hasattr(termios, f"B{b}")}


def line_baud(fd: int) -> int | None:
    """The baud rate the pty's user (the driver) configured, or None if it cannot be read."""
    try:
        buf = array.array("I", [0] * 11)
        fcntl.ioctl(fd, _TCGETS2, buf, True)
        if buf[9]:
            return int(buf[9])
    except OSError:
        pass
    try:
        return _BAUD_CONSTANTS.get(termios.tcgetattr(fd)[4])
    except termios.error:
        return None


class ServoBusEmulator:
    """A bus of emulated servos behind a pty. `servos` maps ID -> model number (control_table.MODELS)."""

    TICK = 0.002  # s between motion updates when the bus is idle

    def __init__(self, servos: dict[int, int], *, baud: int = 1_000_000, timing: bool = False,
                 link: str | None = None, initial_positions: dict[int, int] | None = None,
                 reboot_time: float = 0.05, seed: int | None = None):
        if baud not in ct.BAUD_CODES:
            raise ValueError(f"baud {baud} is not a Dynamixel baud rate ({sorted(ct.BAUD_CODES)})")
        for sid, model in servos.items():
            if not 0 <= int(sid) <= p2.MAX_ID:
                raise ValueError(f"servo id {sid} out of range 0..{p2.MAX_ID}")
            if model not in ct.MODELS:
                raise ValueError(f"servo {sid}: unknown model number {model} (known: {ct.MODELS})")
        self.baud = baud
        self.timing = timing
        self.link = os.path.abspath(link) if link else None
        self.reboot_time = reboot_time
        initial_positions = initial_positions or {}
        code = ct.BAUD_CODES[baud]
        self._servos = [EmulatedServo(int(i), m, code, int(initial_positions.get(i, 2048)))
                        for i, m in sorted(servos.items())]
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._corrupt = 0.0
        self._drop = 0.0
        self._delay = 0.0
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name: str | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._wake_r, self._wake_w = -1, -1
        self._commands: list = []
        self._reader = p2.PacketReader()
        self._line_free = 0.0
        self.stats = {"instructions": 0, "replies": 0, "dropped": 0, "corrupted": 0, "crc_errors": 0,
                      "wrong_baud": 0, "overflow": 0, "watchdog_trips": 0}
        self._pass_at = 0.0  # when this thread last ran a pass (its own scheduling, for trip reports)
        self._own_gap = 0.0  # its longest gap between passes since it last heard anything

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> str:
        if self._running:
            return self.path
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._open_pty()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="servo-bus-emulator", daemon=True)
        self._thread.start()
        return self.path

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._wake()
        if self._thread is not None:
            self._thread.join(5.0)
        self._close_pty(remove_link=True)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> "ServoBusEmulator":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def path(self) -> str:
        """Where a driver opens the bus: the stable link if one was given, else the pty slave."""
        return self.link or self._slave_name or ""

    @property
    def slave_name(self) -> str | None:
        return self._slave_name

    def servo(self, servo_id: int) -> EmulatedServo:
        for s in self._servos:
            if s.id == servo_id:
                return s
        raise KeyError(f"no emulated servo with id {servo_id}")

    @property
    def servos(self) -> list[EmulatedServo]:
        return list(self._servos)

    # -- fault injection ---------------------------------------------------------------------
    def corrupt(self, rate: float) -> None:
        """Flip a byte in this fraction of the reply packets."""
        with self._lock:
            self._corrupt = _rate(rate)

    def drop(self, rate: float) -> None:
        """Send no reply for this fraction of the reply packets (the instruction still acts)."""
        with self._lock:
            self._drop = _rate(rate)

    def delay(self, seconds: float) -> None:
        """Hold every reply back by this long (late replies)."""
        if not seconds >= 0:
            raise ValueError("delay must be >= 0 s")
        with self._lock:
            self._delay = float(seconds)

    def silence(self, ids) -> None:
        """These servos stop hearing and answering (a cut cable)."""
        with self._lock:
            for i in _ids(ids):
                self.servo(i).silent = True

    def unsilence(self, ids) -> None:
        with self._lock:
            for i in _ids(ids):
                self.servo(i).silent = False

    def set_hardware_error(self, servo_id: int, bits: int) -> None:
        """Latch Hardware Error Status bits (e.g. 1 << 5 overload); shutdown bits turn torque off."""
        with self._lock:
            s = self.servo(servo_id)
            now = time.monotonic()
            s.advance(now)
            s.table[70] = bits & 0xFF
            if bits & s.table[63]:
                s.table[64] = 0
                s.vel = s.acc = 0.0
            s._publish(now)

    def close_port(self) -> None:
        """The adapter is unplugged: the pty goes away (the driver reads EIO), the link is removed."""
        self._command("close")

    def reopen(self) -> str:
        """Plugged back in: a new pty, the link re-pointed to it. Returns the new path."""
        self._command("open")
        return self.path

    # -- pty plumbing ------------------------------------------------------------------------
    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no CR/NL translation, no XON/XOFF: 0x0D, 0x11, 0x13 pass unaltered
        attrs = termios.tcgetattr(slave)
        attrs[0] &= ~(termios.IXON | termios.IXOFF | termios.ICRNL | termios.INLCR | termios.IGNCR)
        attrs[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._slave_name = os.ttyname(slave)
        self._reader.clear()
        if self.link:
            tmp = f"{self.link}.{os.getpid()}.tmp"
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.symlink(self._slave_name, tmp)
            os.replace(tmp, self.link)

    def _close_pty(self, remove_link: bool) -> None:
        if remove_link and self.link:  # first: once the fds close, a driver may look for the device
            try:
                if os.path.islink(self.link) and os.readlink(self.link) == self._slave_name:
                    os.unlink(self.link)
            except OSError:
                pass
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None

    def _command(self, what: str) -> None:
        """Run a pty change on the emulator thread (it owns the descriptors), and wait for it."""
        if not self._running:
            if what == "close":
                self._close_pty(remove_link=True)
            else:
                self._close_pty(remove_link=False)
                self._open_pty()
            return
        done = threading.Event()
        with self._lock:
            self._commands.append((what, done))
        self._wake()
        if not done.wait(5.0):
            raise RuntimeError(f"servo bus emulator did not complete {what!r}")

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # -- the bus thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while self._running:
            fd = self._master
            rlist = [self._wake_r] if fd is None else [self._wake_r, fd]
            try:
                ready, _, _ = select.select(rlist, [], [], self.TICK)
            except (OSError, ValueError):
                ready = []
            now = time.monotonic()
            if self._commands:
                self._run_commands()
                continue
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
            data = b""
            if fd is not None and fd in ready:
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        log.warning("servo bus emulator: read failed: %s", exc)
                    time.sleep(self.TICK)
            if self._pass_at:
                self._own_gap = max(self._own_gap, now - self._pass_at)
            self._pass_at = now
            with self._lock:
                # Bytes waiting after a stall of *this* thread were heard on time by a real servo:
                # don't let our own lateness trip its bus watchdog (the instructions refresh it).
                self._advance(now, watchdog=not data)
                if data:
                    self._own_gap = 0.0
                    replies = self._on_bytes(data, now, fd)
                else:
                    replies = None
            if replies:
                self._send(replies, now)

    def _run_commands(self) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
        for what, done in commands:
            try:
                if what == "close":
                    self._close_pty(remove_link=True)
                elif what == "open":
                    self._close_pty(remove_link=False)
                    self._open_pty()
            finally:
                done.set()

    def _advance(self, now: float, watchdog: bool = True) -> None:
        tripped = []
        for s in self._servos:
            was, limit = s.wd_error, s.table[98]
            s.advance(now, watchdog)
            if s.wd_error and not was:
                tripped.append((s, limit))
        if tripped:
            # A real servo would have tripped too: every byte sent before this pass's select has been
            # read (a pty's poll waits for the kernel to hand them over), so the driver was silent
            # that long. The emulator's own longest gap between passes says how much of the silence
            # this thread itself spent unscheduled.
            self.stats["watchdog_trips"] += len(tripped)
            log.warning("bus watchdog tripped on servo%s %s: nothing heard for %.0f ms (limit %d ms); this "
                        "emulator's own longest gap between passes meanwhile: %.0f ms",
                        "s" if len(tripped) > 1 else "", ", ".join(str(s.id) for s, _ in tripped),
                        (now - min(s.last_rx for s, _ in tripped)) * 1e3, tripped[0][1] * 20, self._own_gap * 1e3)

    def _on_bytes(self, data: bytes, now: float, fd: int):
        """Parse instructions; returns [(instruction length, [(servo, reply bytes)])] to send."""
        reader = self._reader
        crc_before = reader.crc_errors
        packets = reader.feed(data)
        self.stats["crc_errors"] += reader.crc_errors - crc_before
        if not packets:
            return None
        baud = line_baud(fd)
        out = []
        for pkt in packets:
            if pkt.inst == p2.STATUS:
                continue  # another device's reply (or an adapter's echo)
            self.stats["instructions"] += 1
            hearing = [s for s in self._servos
                       if not s.silent and now >= s.booting_until and (baud is None or s.baud == baud)]
            if baud is not None and len(hearing) < len(self._servos):
                self.stats["wrong_baud"] += sum(1 for s in self._servos if s.baud != baud)
            replies = self._dispatch(pkt, hearing, now)
            out.append((len(pkt.params) + 10, replies))
        return out

    def _dispatch(self, pkt: p2.Packet, hearing: list, now: float) -> list:
        inst, params, target = pkt.inst, pkt.params, pkt.id
        bcast = target == p2.BROADCAST_ID
        by_id = {s.id: s for s in hearing}
        if bcast:
            for s in hearing:
                s.last_rx = now
            addressed = hearing
        else:
            s = by_id.get(target)
            if s is None:
                return []
            s.last_rx = now
            addressed = [s]
        replies: list = []

        def reply(s, err=0, data=b"", level=2, sid=None):
            if s.status_return_level >= level:  # as it is after the instruction (a WRITE to 68 too)
                replies.append((s, p2.status(s.id if sid is None else sid, err | s.alert, data)))

        if inst == p2.Inst.PING:
            for s in sorted(addressed, key=lambda s: s.id):
                replies.append((s, s.status(0, _U16.pack(s.model) + bytes((s.table[6],)))))
        elif inst == p2.Inst.READ:
            if bcast:
                return []
            s = addressed[0]
            if len(params) != 4:
                reply(s, E_LENGTH, level=1)
            else:
                addr, n = struct.unpack("<HH", params)
                if n == 0 or addr + n > ct.TABLE_SIZE:
                    reply(s, E_ACCESS, level=1)
                else:
                    reply(s, 0, bytes(s.table[addr:addr + n]), level=1)
        elif inst in (p2.Inst.WRITE, p2.Inst.REG_WRITE):
            for s in addressed:
                sid = s.id  # a WRITE to the ID field is answered from the old ID
                if len(params) < 3:
                    err = E_LENGTH
                else:
                    addr = params[0] | params[1] << 8
                    data = bytes(params[2:])
                    err = s.check_write(addr, data)
                    if not err:
                        if inst == p2.Inst.WRITE:
                            s.apply_write(addr, data, now)
                        else:
                            s.registered = (addr, data)
                            s.table[69] = 1
                if not bcast:
                    reply(s, err, sid=sid)
        elif inst == p2.Inst.ACTION:
            for s in addressed:
                if s.registered is not None:
                    addr, data = s.registered
                    s.registered = None
                    s.table[69] = 0
                    if not s.check_write(addr, data):
                        s.apply_write(addr, data, now)
                if not bcast:
                    reply(s)
        elif inst == p2.Inst.REBOOT:
            for s in addressed:
                if not bcast:
                    reply(s)
                s.reboot(now, self.reboot_time)
        elif inst == p2.Inst.FACTORY_RESET:
            if bcast:
                return []
            s = addressed[0]
            keep = params[0] if len(params) == 1 else None
            if keep not in (0xFF, 0x01, 0x02):
                reply(s, E_LENGTH if keep is None else E_RANGE)
            elif s.table[64]:
                reply(s, E_ACCESS)
            else:
                reply(s)
                s.factory_reset(keep, now, self.reboot_time)
        elif inst == p2.Inst.CLEAR:
            if bcast:
                return []
            s = addressed[0]
            if params != b"\x01\x44\x58\x4c\x22":
                reply(s, E_RANGE if len(params) == 5 else E_LENGTH)
            elif s.vel != 0.0:
                reply(s, E_RESULT)  # only while stopped
            else:
                s.pos = float(int(round(s.pos)) % 4096)
                s._set_goal_position(int(s.pos))
                s._publish(now)
                reply(s)
        elif inst in (p2.Inst.SYNC_READ, p2.Inst.FAST_SYNC_READ):
            if not bcast or len(params) < 5:
                return []
            addr, n = struct.unpack_from("<HH", params)
            ids = params[4:]
            ok = n > 0 and addr + n <= ct.TABLE_SIZE
            if inst == p2.Inst.SYNC_READ:
                for i in ids:
                    s = by_id.get(i)
                    if s is not None:
                        if ok:
                            reply(s, 0, bytes(s.table[addr:addr + n]), level=1)
                        else:
                            reply(s, E_ACCESS, level=1)
            else:
                replies.extend(self._fast_sync(ids, addr, n, ok, by_id))
        elif inst == p2.Inst.SYNC_WRITE:
            if not bcast or len(params) < 5:
                return []
            addr, n = struct.unpack_from("<HH", params)
            body = params[4:]
            if n == 0 or len(body) % (n + 1):
                return []
            for k in range(0, len(body), n + 1):
                s = by_id.get(body[k])
                if s is not None:
                    data = bytes(body[k + 1:k + 1 + n])
                    if not s.check_write(addr, data):
                        s.apply_write(addr, data, now)
        elif inst == FAST_BULK_READ:
            if not bcast or not params or len(params) % 5:
                return []
            reqs = [struct.unpack_from("<BHH", params, k) for k in range(0, len(params), 5)]
            replies.extend(self._fast_bulk(reqs, by_id))
        elif inst == p2.Inst.BULK_READ:
            if not bcast or not params or len(params) % 5:
                return []
            for k in range(0, len(params), 5):
                i, addr, n = struct.unpack_from("<BHH", params, k)
                s = by_id.get(i)
                if s is not None:
                    if n and addr + n <= ct.TABLE_SIZE:
                        reply(s, 0, bytes(s.table[addr:addr + n]), level=1)
                    else:
                        reply(s, E_ACCESS, level=1)
        elif inst == p2.Inst.BULK_WRITE:
            if not bcast:
                return []
            k = 0
            while k + 5 <= len(params):
                i, addr, n = struct.unpack_from("<BHH", params, k)
                data = bytes(params[k + 5:k + 5 + n])
                k += 5 + n
                s = by_id.get(i)
                if s is not None and len(data) == n and not s.check_write(addr, data):
                    s.apply_write(addr, data, now)
        else:
            if not bcast:
                reply(addressed[0], E_INST)
        return replies

    def _fast_sync(self, ids: bytes, addr: int, n: int, ok: bool, by_id: dict) -> list:
        """One FAST_SYNC_READ status packet. The servos build it in turn on the wire, so a missing
        servo cuts it short at its slot (the driver sees a packet that never completes)."""
        entries = []
        missing_at = None
        for k, i in enumerate(ids):
            s = by_id.get(i)
            if s is None or s.status_return_level < 1:
                if missing_at is None:
                    missing_at = k
                entries.append((0, i, bytes(n)))
            elif ok:
                entries.append((s.alert, i, bytes(s.table[addr:addr + n])))
            else:
                entries.append((E_ACCESS | s.alert, i, bytes(n)))
        if not entries:
            return []
        raw = p2.fast_sync_status(entries)
        first = by_id.get(ids[0])
        if missing_at is not None:
            if missing_at == 0:
                return []
            raw = raw[:8 + missing_at * (n + 4)]
        return [(first, raw)]

    def _fast_bulk(self, reqs: list, by_id: dict) -> list:
        """One FAST_BULK_READ status packet (0x9A, as the official SDK's fastBulkRead() sends):
        entries `ERR ID DATA CRC` in request order, each servo its own address and length."""
        entries, cut, pos = [], None, 8
        for i, addr, n in reqs:
            s = by_id.get(i)
            if s is None or s.status_return_level < 1:
                cut = pos if cut is None else cut
                entries.append((0, i, bytes(n)))
            elif n and addr + n <= ct.TABLE_SIZE:
                entries.append((s.alert, i, bytes(s.table[addr:addr + n])))
            else:
                entries.append((E_ACCESS | s.alert, i, bytes(n)))
            pos += n + 4
        raw = p2.fast_sync_status(entries)
        if cut is not None:
            raw = raw[:cut]
        first = by_id.get(reqs[0][0])
        return [(first, raw)] if raw and first is not None else []

    def _send(self, batches, t_rx: float) -> None:
        """Write the replies, with the faults and (timing=True) the wire time of a real bus."""
        with self._lock:
            corrupt, drop, delay = self._corrupt, self._drop, self._delay
            rng = self._rng
            fd = self._master
        if fd is None:
            return
        bit = 10.0 / self.baud
        if delay:
            time.sleep(delay)
        for instr_len, replies in batches:
            # On the wire: the instruction (after whatever was still on the line), then each
            # servo's return delay and status packet in turn.
            t = max(t_rx, self._line_free) + instr_len * bit
            chunks = []
            for s, data in replies:
                if drop and rng.random() < drop:
                    self.stats["dropped"] += 1
                    continue
                if corrupt and rng.random() < corrupt:
                    data = bytearray(data)
                    data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
                    data = bytes(data)
                    self.stats["corrupted"] += 1
                self.stats["replies"] += 1
                t += s.return_delay + len(data) * bit
                chunks.append(data)
            self._line_free = t
            if chunks:
                if self.timing:
                    # One sleep to the end of the last reply, then all of it: never earlier than
                    # a real bus (a per-packet sleep would add the OS's wake-up latency each time).
                    _sleep_until(t)
                self._write(fd, b"".join(chunks))

    def _write(self, fd: int, data: bytes) -> None:
        try:
            n = os.write(fd, data)
            if n < len(data):
                self.stats["overflow"] += 1  # nobody is reading: the rest is lost, as on a wire
        except BlockingIOError:
            self.stats["overflow"] += 1
        except OSError:
            pass  # the port was closed under us


def _sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def _rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    return rate


def _ids(ids) -> list[int]:
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


# -- configuration and remote control (the `robot-env emulate-bus` command) ---------------------
