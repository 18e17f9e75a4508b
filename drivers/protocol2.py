"""Dynamixel Protocol 2.0 packets: CRC-16, byte stuffing, instruction builders, a resynchronising reader.

Kept explicit in the manner of the official SDK's packet handler: every field is visible where the
packet is built. Layout: `FF FF FD 00 | ID | LEN_L LEN_H | INST | params… | CRC_L CRC_H`, where
LEN = len(stuffed INST + params) + 2 (the CRC). Inside the packet after the header, any
`FF FF FD` is sent as `FF FF FD FD`; the CRC covers the stuffed bytes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

HEADER = b"\xff\xff\xfd\x00"
BROADCAST_ID = 0xFE
MAX_ID = 0xFC
STATUS = 0x55


class Inst(IntEnum):
    PING = 0x01
    READ = 0x02
    WRITE = 0x03
    REG_WRITE = 0x04
    ACTION = 0x05
    FACTORY_RESET = 0x06
    REBOOT = 0x08
    CLEAR = 0x10
    SYNC_READ = 0x82
    SYNC_WRITE = 0x83
    FAST_SYNC_READ = 0x8A
    BULK_READ = 0x92
    BULK_WRITE = 0x93


# Status error byte: bit 7 = hardware alert (read Hardware Error Status), low 7 bits = this code.
ERRORS = {
    0: None,
    1: "result_fail",
    2: "instruction_error",
    3: "crc_error",
    4: "data_range_error",
    5: "data_length_error",
    6: "data_limit_error",
    7: "access_error",
}
ALERT = 0x80


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc_table()


def crc16(data: bytes, crc: int = 0) -> int:
    """CRC-16, polynomial 0x8005, init 0, no reflection (the e-Manual's `update_crc`)."""
    table = _TABLE
    for b in data:
        crc = ((crc << 8) ^ table[((crc >> 8) ^ b) & 0xFF]) & 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """Insert 0xFD after every FF FF FD so the body can never look like a header."""
    return body.replace(b"\xff\xff\xfd", b"\xff\xff\xfd\xfd") if b"\xff\xff\xfd" in body else body


def unstuff(body: bytes) -> bytes:
    return body.replace(b"\xff\xff\xfd\xfd", b"\xff\xff\xfd") if b"\xff\xff\xfd\xfd" in body else body


def encode(servo_id: int, inst: int, params: bytes = b"", *, stuffing: bool = True) -> bytes:
    """A whole packet. `stuffing=False` reproduces senders that skip it (the official SDK does)."""
    body = bytes((inst,)) + bytes(params)
    if stuffing:
        body = stuff(body)
    head = HEADER + struct.pack("<BH", servo_id, len(body) + 2)
    pkt = head + body
    return pkt + struct.pack("<H", crc16(pkt))


@dataclass(frozen=True)
class Packet:
    id: int
    inst: int
    params: bytes  # unstuffed; for a status packet params[0] is the error byte

    @property
    def error(self) -> int:
        return self.params[0] if self.inst == STATUS and self.params else 0

    @property
    def data(self) -> bytes:
        """A status packet's payload after the error byte."""
        return self.params[1:] if self.inst == STATUS else self.params


def error_name(err: int) -> str | None:
    """Named error of a status error byte (hardware alert reported separately by `is_alert`)."""
    return ERRORS.get(err & 0x7F, f"unknown_error_{err & 0x7F}")


def is_alert(err: int) -> bool:
    return bool(err & ALERT)


class PacketReader:
    """Incremental parser: feed bytes, get whole packets. Garbage and corrupt packets are skipped
    (counted in `garbage_bytes` / `crc_errors`) by resynchronising on the next header."""

    MAX_LEN = 1024

    def __init__(self, unstuff_params: bool = True):
        self.buf = bytearray()
        self.unstuff = unstuff_params
        self.garbage_bytes = 0
        self.crc_errors = 0

    def clear(self) -> None:
        self.buf.clear()

    def feed(self, data: bytes) -> list[Packet]:
        self.buf += data
        out = []
        while True:
            pkt = self._next()
            if pkt is None:
                return out
            out.append(pkt)

    def _next(self) -> Packet | None:
        buf = self.buf
        while True:
            i = buf.find(HEADER)
            if i < 0:
                # keep a possible partial header at the end
                keep = 3 if buf.endswith(b"\xff\xff\xfd") else 2 if buf.endswith(b"\xff\xff") else \
                    1 if buf.endswith(b"\xff") else 0
                self.garbage_bytes += len(buf) - keep
                del buf[:len(buf) - keep]
                return None
            if i:
                self.garbage_bytes += i
                del buf[:i]
            if len(buf) < 7:
                return None
            servo_id = buf[4]
            length = buf[5] | (buf[6] << 8)
            if length < 3 or length > self.MAX_LEN or servo_id > BROADCAST_ID:
                self.garbage_bytes += 1
                del buf[:1]
                continue
            total = 7 + length
            if len(buf) < total:
                return None
            crc = buf[total - 2] | (buf[total - 1] << 8)
            if crc16(bytes(buf[:total - 2])) != crc:
                self.crc_errors += 1
                del buf[:1]  # resync: the real header may start inside this one
                continue
            body = bytes(buf[7:total - 2])
            del buf[:total]
            if self.unstuff:
                body = unstuff(body)
            return Packet(servo_id, body[0], body[1:])


# -- instruction builders (what a controller sends) ------------------------------------------------
def ping(servo_id: int) -> bytes:
    return encode(servo_id, Inst.PING)


def read(servo_id: int, address: int, length: int) -> bytes:
    return encode(servo_id, Inst.READ, struct.pack("<HH", address, length))


def write(servo_id: int, address: int, data: bytes, *, registered: bool = False) -> bytes:
    inst = Inst.REG_WRITE if registered else Inst.WRITE
    return encode(servo_id, inst, struct.pack("<H", address) + bytes(data))


def action(servo_id: int = BROADCAST_ID) -> bytes:
    return encode(servo_id, Inst.ACTION)


def reboot(servo_id: int) -> bytes:
    return encode(servo_id, Inst.REBOOT)


def factory_reset(servo_id: int, keep: int = 0xFF) -> bytes:
    """keep: 0xFF resets all, 0x01 all but ID, 0x02 all but ID and baud rate."""
    return encode(servo_id, Inst.FACTORY_RESET, bytes((keep,)))


def clear_multi_turn(servo_id: int) -> bytes:
    return encode(servo_id, Inst.CLEAR, b"\x01\x44\x58\x4c\x22")


def sync_read(address: int, length: int, ids, *, fast: bool = False) -> bytes:
    inst = Inst.FAST_SYNC_READ if fast else Inst.SYNC_READ
    return encode(BROADCAST_ID, inst, struct.pack("<HH", address, length) + bytes(ids))


def sync_write(address: int, length: int, data_by_id: dict) -> bytes:
    parts = [struct.pack("<HH", address, length)]
    for servo_id, data in data_by_id.items():
        if len(data) != length:
            raise ValueError(f"sync_write: servo {servo_id} data is {len(data)} bytes, expected {length}")
        parts.append(bytes((servo_id,)) + bytes(data))
    return encode(BROADCAST_ID, Inst.SYNC_WRITE, b"".join(parts))


def bulk_read(requests) -> bytes:
    """requests: iterable of (id, address, length)."""
    return encode(BROADCAST_ID, Inst.BULK_READ,
                  b"".join(struct.pack("<BHH", i, a, n) for i, a, n in requests))


def bulk_write(writes) -> bytes:
    """writes: iterable of (id, address, data)."""
    return encode(BROADCAST_ID, Inst.BULK_WRITE,
                  b"".join(struct.pack("<BHH", i, a, len(d)) + bytes(d) for i, a, d in writes))


# -- status packets (what a servo sends; the bus emulator uses these) ---------------------------
def status(servo_id: int, error: int = 0, data: bytes = b"") -> bytes:
    return encode(servo_id, STATUS, bytes((error,)) + bytes(data))


def fast_sync_status(entries) -> bytes:
    """One status packet answering FAST_SYNC_READ for several servos: entries of (error, id, data).

    Each servo appends `ERR ID DATA CRC16` where its CRC runs over the packet so far; the last
    servo's CRC is the packet's CRC. Not byte-stuffed (as the official SDK expects for this reply).
    """
    entries = list(entries)
    length = 1 + sum(len(d) + 4 for _, _, d in entries)
    pkt = bytearray(HEADER + struct.pack("<BH", BROADCAST_ID, length) + bytes((STATUS,)))
    for err, servo_id, data in entries:
        pkt += bytes((err, servo_id)) + bytes(data)
        pkt += struct.pack("<H", crc16(bytes(pkt)))
    return bytes(pkt)


def parse_fast_sync(pkt: Packet, ids, length: int) -> dict:
    """{id: (error, data)} from a FAST_SYNC_READ status packet (read without unstuffing)."""
    raw = pkt.params
    out = {}
    pos = 0
    for _ in ids:
        if pos + length + 2 > len(raw):
            raise ValueError("fast sync read reply is truncated")
        err, servo_id = raw[pos], raw[pos + 1]
        out[servo_id] = (err, raw[pos + 2:pos + 2 + length])
        pos += length + 4
    return out
