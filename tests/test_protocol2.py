"""Dynamixel Protocol 2.0 codec against the e-Manual's published packet examples."""
import random

import pytest

from drivers import protocol2 as p2

# (what, e-Manual bytes, how we build it)
EMANUAL = [
    ("ping id 1", "ff ff fd 00 01 03 00 01 19 4e", lambda: p2.ping(1)),
    ("read present position", "ff ff fd 00 01 07 00 02 84 00 04 00 1d 15", lambda: p2.read(1, 132, 4)),
    ("write goal position 512", "ff ff fd 00 01 09 00 03 74 00 00 02 00 00 ca 89",
     lambda: p2.write(1, 116, (512).to_bytes(4, "little"))),
    ("sync read ids 1,2", "ff ff fd 00 fe 09 00 82 84 00 04 00 01 02 ce fa",
     lambda: p2.sync_read(132, 4, [1, 2])),
    ("sync write 150/170", "ff ff fd 00 fe 11 00 83 74 00 04 00 01 96 00 00 00 02 aa 00 00 00 82 87",
     lambda: p2.sync_write(116, 4, {1: (150).to_bytes(4, "little"), 2: (170).to_bytes(4, "little")})),
    ("bulk read", "ff ff fd 00 fe 0d 00 92 01 90 00 02 00 02 92 00 01 00 1a 05",
     lambda: p2.bulk_read([(1, 144, 2), (2, 146, 1)])),
    ("reboot", "ff ff fd 00 01 03 00 08 2f 4e", lambda: p2.reboot(1)),
    ("action", "ff ff fd 00 01 03 00 05 02 ce", lambda: p2.action(1)),
    ("read status 166", "ff ff fd 00 01 08 00 55 00 a6 00 00 00 8c c0",
     lambda: p2.status(1, 0, (166).to_bytes(4, "little"))),
]


def test_crc_check_value():
    assert p2.crc16(b"123456789") == 0xFEE8


@pytest.mark.parametrize("what,hexbytes,build", EMANUAL, ids=[e[0] for e in EMANUAL])
def test_emanual_examples(what, hexbytes, build):
    assert build() == bytes.fromhex(hexbytes)


def test_ping_reply_decodes_model_and_firmware():
    (pkt,) = p2.PacketReader().feed(bytes.fromhex("ff ff fd 00 01 07 00 55 00 06 04 26 65 5d"))
    assert (pkt.id, pkt.inst, pkt.error) == (1, p2.STATUS, 0)
    assert int.from_bytes(pkt.data[:2], "little") == 1030 and pkt.data[2] == 38


def test_byte_stuffing_round_trip_and_crc_over_stuffed_bytes():
    data = b"\xff\xff\xfd\x01"
    pkt = p2.write(3, 116, data)
    assert b"\xff\xff\xfd\xfd" in pkt[4:]
    (back,) = p2.PacketReader().feed(pkt)
    assert back.params == b"\x74\x00" + data
    assert p2.encode(3, p2.Inst.WRITE, b"\x74\x00" + data, stuffing=False) != pkt


def test_resync_after_garbage_and_corruption():
    good = [p2.status(i, 0, bytes([i] * 4)) for i in range(1, 6)]
    bad = bytearray(p2.status(9, 0, b"\x01\x02\x03\x04"))
    bad[9] ^= 0xFF  # corrupt a data byte: CRC fails
    stream = b"\x00\xff\x13" + good[0] + bytes(bad) + good[1] + b"\xff\xff\xfd" + good[2] + good[3] + good[4]
    reader = p2.PacketReader()
    out = []
    rng = random.Random(0)
    i = 0
    while i < len(stream):  # arbitrary chunking, as a serial port delivers
        n = rng.randint(1, 7)
        out += reader.feed(stream[i:i + n])
        i += n
    assert [p.id for p in out] == [1, 2, 3, 4, 5]
    assert reader.crc_errors >= 1 and reader.garbage_bytes > 0


def test_error_byte_names():
    assert p2.error_name(0) is None
    assert p2.error_name(0x06) == "data_limit_error"
    assert p2.error_name(0x87) == "access_error" and p2.is_alert(0x87)
    assert not p2.is_alert(0x07)


def test_fast_sync_status_round_trip_has_running_crcs():
    entries = [(0, 1, b"\x10\x00\x00\x00"), (0x80, 2, b"\x20\x00\x00\x00"), (0, 3, b"\x30\x00\x00\x00")]
    raw = p2.fast_sync_status(entries)
    (pkt,) = p2.PacketReader(unstuff_params=False).feed(raw)
    assert pkt.id == p2.BROADCAST_ID
    parsed = p2.parse_fast_sync(pkt, [1, 2, 3], 4)
    assert parsed == {1: (0, b"\x10\x00\x00\x00"), 2: (0x80, b"\x20\x00\x00\x00"), 3: (0, b"\x30\x00\x00\x00")}
    # the first servo's CRC covers the packet up to its data
    first_end = 8 + 2 + 4
    assert int.from_bytes(raw[first_end:first_end + 2], "little") == p2.crc16(raw[:first_end])


def test_instruction_builders_validate_sizes():
    with pytest.raises(ValueError):
        p2.sync_write(116, 4, {1: b"\x00\x00"})
