"""The official ROBOTIS `dynamixel_sdk` (4.1.0) as an oracle for the emulator and our codec.

1. The SDK, through its own PortHandler on the emulator's pty, pings, reads, writes, sync-reads
   (plain and fast), sync-writes and bulk-reads the emulated servos: COMM_SUCCESS and the values
   the emulator holds, and the same values our driver reads.
2. Same bytes: what the SDK writes to the port for an instruction equals what our encoder builds.
   The SDK does not byte-stuff the instructions it sends (its stuffed copy is discarded), so for a
   packet containing FF FF FD the two differ by exactly the stuffing byte.
"""
import time

import pytest

dxl = pytest.importorskip("dynamixel_sdk")

from drivers import control_table as ct  # noqa: E402
from drivers import protocol2 as p2  # noqa: E402
from drivers.bus import DynamixelBus  # noqa: E402
from simulators.servo_bus import ServoBusEmulator  # noqa: E402

MODELS = {1: 1020, 2: 1030, 3: 1120, 4: 1130}
IDS = list(MODELS)
OK = dxl.COMM_SUCCESS


class RecordingPort(dxl.PortHandler):
    """The SDK's PortHandler on a real pty, keeping a copy of every packet it writes."""

    def __init__(self, name):
        super().__init__(name)
        self.sent: list[bytes] = []

    max_wait_ms = None  # cap the SDK's fixed waits (its broadcast ping listens ~0.8 s)
    # The SDK gives a reply ~34 ms (two 16 ms USB latency timers + 2 ms) before it reports
    # COMM_RX_TIMEOUT. The emulator answers from a thread of this process, and on a loaded machine
    # that thread can miss such a window (CI once got a timeout for a ping of servo 1). These tests
    # check what the SDK and the emulator say to each other, not how fast the machine is.
    min_reply_wait_ms = 1000.0

    def setPacketTimeout(self, packet_length):
        super().setPacketTimeout(packet_length)
        self.packet_timeout = max(self.packet_timeout, self.min_reply_wait_ms)

    def writePort(self, packet):
        self.sent.append(bytes(packet))
        return super().writePort(packet)

    def setPacketTimeoutMillis(self, msec):
        super().setPacketTimeoutMillis(msec if self.max_wait_ms is None else min(msec, self.max_wait_ms))


@pytest.fixture
def emu():
    positions = {1: 1000, 2: 2000, 3: 3000, 4: 4000}
    with ServoBusEmulator(MODELS, initial_positions=positions) as e:
        yield e


@pytest.fixture
def sdk(emu):
    port = RecordingPort(emu.path)
    assert port.openPort() and port.setBaudRate(1_000_000)
    yield port, dxl.PacketHandler(2.0)
    port.closePort()


def test_sdk_ping_read_write(emu, sdk):
    port, ph = sdk
    for i, model in MODELS.items():
        assert ph.ping(port, i) == (model, OK, 0)
    assert ph.read4ByteTxRx(port, 3, 132) == (3000, OK, 0)
    assert ph.read2ByteTxRx(port, 2, 0) == (1030, OK, 0)
    assert ph.write1ByteTxRx(port, 1, 64, 1) == (OK, 0)
    assert ph.write4ByteTxRx(port, 1, 116, 1100) == (OK, 0)
    assert emu.servo(1).get("goal_position") == 1100
    assert ph.read1ByteTxRx(port, 1, 64) == (1, OK, 0)
    # errors arrive as the status error byte, with the SDK's meaning
    assert ph.write1ByteTxRx(port, 1, 11, 1) == (OK, 7)  # EEPROM with torque on: access error
    assert ph.write1ByteTxRx(port, 2, 11, 2) == (OK, 4)  # no such mode: data range error
    assert ph.write4ByteTxRx(port, 1, 116, 5000) == (OK, 6)  # beyond the position limit
    assert "limit" in ph.getRxPacketError(6)
    _, result, _ = ph.read1ByteTxRx(port, 9, 64)
    assert result == dxl.COMM_RX_TIMEOUT  # nobody has id 9


def test_sdk_sees_the_alert_bit_and_reboot_clears_it(emu, sdk):
    port, ph = sdk
    emu.set_hardware_error(4, 1 << 2)  # overheating
    value, result, error = ph.read1ByteTxRx(port, 4, 70)
    assert (value, result) == (4, OK) and error & 0x80
    assert "Hardware error" in ph.getRxPacketError(error)
    assert ph.reboot(port, 4) == (OK, 0x80)  # answered before it reboots
    time.sleep(0.1)
    assert ph.read1ByteTxRx(port, 4, 70) == (0, OK, 0)


def test_sdk_group_sync_read_plain_and_fast(emu, sdk):
    port, ph = sdk
    group = dxl.GroupSyncRead(port, ph, 128, 8)
    for i in IDS:
        assert group.addParam(i)
    assert group.txRxPacket() == OK
    assert [group.getData(i, 132, 4) for i in IDS] == [1000, 2000, 3000, 4000]
    emu.servo(2).set("goal_position", 2222)  # unchanged presents, a new goal: read another span
    fast = dxl.GroupSyncRead(port, ph, 116, 4)
    for i in IDS:
        fast.addParam(i)
    assert fast.fastSyncRead() == OK
    assert [fast.getData(i, 116, 4) for i in IDS] == [1000, 2222, 3000, 4000]
    port.closePort()
    with DynamixelBus(emu.path, timeout_slack=0.1) as bus:  # ours reads the same
        ours = bus.sync_read(116, 4, IDS, fast=True)
        assert [int.from_bytes(ours[i], "little") for i in IDS] == [1000, 2222, 3000, 4000]
    port.openPort()


def test_sdk_group_sync_write_and_bulk_read(emu, sdk):
    port, ph = sdk
    writer = dxl.GroupSyncWrite(port, ph, 112, 8)  # profile velocity + goal position
    for i in IDS:
        assert writer.addParam(i, list((50 + i).to_bytes(4, "little") + (1500 + i).to_bytes(4, "little")))
    assert writer.txPacket() == OK
    bulk = dxl.GroupBulkRead(port, ph)
    assert bulk.addParam(1, 116, 4) and bulk.addParam(2, 112, 4) and bulk.addParam(3, 0, 2)
    assert bulk.addParam(4, 146, 1)
    assert bulk.txRxPacket() == OK
    assert bulk.getData(1, 116, 4) == 1501 and bulk.getData(2, 112, 4) == 52
    assert bulk.getData(3, 0, 2) == 1120 and bulk.getData(4, 146, 1) == 30
    assert emu.servo(4).get("goal_position") == 1504
    assert bulk.fastBulkRead() == OK
    assert bulk.getData(1, 116, 4) == 1501 and bulk.getData(3, 0, 2) == 1120


def test_sdk_bulk_write_and_broadcast_ping(emu, sdk):
    port, ph = sdk
    bw = dxl.GroupBulkWrite(port, ph)
    assert bw.addParam(1, 65, 1, [1]) and bw.addParam(3, 116, 4, list((3333).to_bytes(4, "little")))
    assert bw.txPacket() == OK
    assert ph.read1ByteTxRx(port, 1, 65) == (1, OK, 0)
    assert emu.servo(3).get("goal_position") == 3333
    found, result = ph.broadcastPing(port)
    assert result == OK
    assert {i: model for i, (model, _fw) in found.items()} == MODELS


# -- same bytes ----------------------------------------------------------------------------------
def _sdk_bytes(port, call) -> bytes:
    port.sent.clear()
    call()
    assert port.sent, "the SDK wrote nothing"
    return port.sent[0]


def _cases():
    def sync_read(fast):
        def run(port, ph):
            g = dxl.GroupSyncRead(port, ph, 132, 4)
            for i in (1, 2, 4):
                g.addParam(i)
            return g.fastSyncRead() if fast else g.txRxPacket()
        return run

    def sync_write(port, ph):
        g = dxl.GroupSyncWrite(port, ph, 116, 4)
        g.addParam(1, [0x96, 0, 0, 0])
        g.addParam(2, [0xAA, 0, 0, 0])
        return g.txPacket()

    def bulk_read(port, ph):
        g = dxl.GroupBulkRead(port, ph)
        g.addParam(1, 144, 2)
        g.addParam(2, 146, 1)
        return g.txRxPacket()

    def bulk_write(port, ph):
        g = dxl.GroupBulkWrite(port, ph)
        g.addParam(1, 65, 1, [1])
        g.addParam(2, 116, 4, [0x00, 0x08, 0, 0])
        return g.txPacket()

    return [
        ("ping", lambda port, ph: ph.ping(port, 1), p2.ping(1)),
        ("read", lambda port, ph: ph.read4ByteTxRx(port, 1, 132), p2.read(1, 132, 4)),
        ("write 4", lambda port, ph: ph.write4ByteTxRx(port, 2, 116, 2100),
         p2.write(2, 116, (2100).to_bytes(4, "little"))),
        ("write 1 (0x0D)", lambda port, ph: ph.write1ByteTxRx(port, 1, 13, 2), p2.write(1, 13, b"\x02")),
        ("reg write", lambda port, ph: ph.regWriteTxRx(port, 1, 65, 1, [1]),
         p2.write(1, 65, b"\x01", registered=True)),
        ("action", lambda port, ph: ph.action(port, 1), p2.action(1)),
        ("reboot", lambda port, ph: ph.reboot(port, 3), p2.reboot(3)),
        ("factory reset", lambda port, ph: ph.factoryReset(port, 4, 0x02), p2.factory_reset(4, 0x02)),
        ("clear multi-turn", lambda port, ph: ph.clearMultiTurn(port, 2), p2.clear_multi_turn(2)),
        ("sync read", sync_read(False), p2.sync_read(132, 4, [1, 2, 4])),
        ("fast sync read", sync_read(True), p2.sync_read(132, 4, [1, 2, 4], fast=True)),
        ("sync write", sync_write, p2.sync_write(116, 4, {1: b"\x96\0\0\0", 2: b"\xaa\0\0\0"})),
        ("bulk read", bulk_read, p2.bulk_read([(1, 144, 2), (2, 146, 1)])),
        ("bulk write", bulk_write, p2.bulk_write([(1, 65, b"\x01"), (2, 116, b"\x00\x08\x00\x00")])),
        ("broadcast ping", lambda port, ph: ph.broadcastPing(port), p2.ping(p2.BROADCAST_ID)),
    ]


CASES = _cases()


@pytest.mark.parametrize("name,call,ours", CASES, ids=[c[0] for c in CASES])
def test_same_bytes_as_the_sdk(emu, sdk, name, call, ours):
    port, ph = sdk
    port.max_wait_ms = 30  # the SDK's broadcast ping would listen ~0.8 s for every possible id
    result = []
    sent = _sdk_bytes(port, lambda: result.append(call(port, ph)))
    assert sent == ours, f"{name}: SDK {sent.hex(' ')} vs ours {ours.hex(' ')}"
    assert b"\xff\xff\xfd" not in ours[4:]  # no stuffing involved in these


def test_stuffing_is_where_the_sdk_and_we_differ(emu, sdk):
    """Goal position -131073 is FF FF FD FF on the wire: we stuff it, the SDK does not."""
    port, ph = sdk
    raw = (-131073).to_bytes(4, "little", signed=True)
    assert raw == b"\xff\xff\xfd\xff"
    assert ph.write1ByteTxRx(port, 2, 11, ct.MODE_EXTENDED_POSITION) == (OK, 0)
    sent = _sdk_bytes(port, lambda: ph.write4ByteTxRx(port, 2, 116, -131073 & 0xFFFFFFFF))
    ours = p2.write(2, 116, raw)
    assert sent == p2.encode(2, p2.Inst.WRITE, b"\x74\x00" + raw, stuffing=False)
    assert len(ours) == len(sent) + 1 and ours[4:].count(b"\xff\xff\xfd\xfd") == 1
    assert ours[5] == sent[5] + 1  # the length field counts the stuffing byte
    # both are accepted: the emulator un-stuffs ours and takes the SDK's as is
    assert emu.servo(2).get("goal_position") == -131073
    port.closePort()
    with DynamixelBus(emu.path, timeout_slack=0.1) as bus:
        bus.write_field(2, "goal_position", -131072)
        assert bus.read_field(2, "goal_position") == -131072
        bus.write(2, 116, raw)
        assert bus.read_field(2, "goal_position") == -131073
    port.openPort()
    # and the SDK un-stuffs the emulator's (stuffed) reply
    value, result, error = ph.read4ByteTxRx(port, 2, 116)
    assert (result, error) == (OK, 0) and value == -131073 & 0xFFFFFFFF
