"""Our Dynamixel bus driver against the servo-bus emulator, over a real pseudo-terminal.

What a real bus does (moves over time, refuses bad writes with the right error, stops a wheel
when the controller goes silent, answers nothing at the wrong baud rate) and what goes wrong on
one (corrupt, lost, late replies; a silent servo; a hardware alert; the adapter unplugged and
plugged back in), each with the error or recovery the driver must give.
"""
import errno
import os
import threading
import time

import pytest
import serial

from drivers import control_table as ct
from drivers import protocol2 as p2
from drivers.bus import BusError, BusTimeout, DynamixelBus, PortError, ServoError
from simulators.servo_bus import EmulatorProcess, ServoBusEmulator, line_baud, servos_from_config

IDS = list(range(1, 13))
XM430 = 1020
POS = ct.span("present_velocity", "present_position")  # (128, 8)
OVERLOAD = 1 << 5
SLACK = 0.1  # reply-timeout slack for tests that are not about timeouts: CI machines stall


def _i32(b: bytes, off: int = 0) -> int:
    return int.from_bytes(b[off:off + 4], "little", signed=True)


@pytest.fixture
def emu():
    with ServoBusEmulator({i: XM430 for i in IDS}, seed=1) as e:
        yield e


@pytest.fixture
def bus(emu):
    with DynamixelBus(emu.path, timeout_slack=SLACK) as b:
        yield b


# -- basics ---------------------------------------------------------------------------------------
def test_ping_reports_model_and_firmware():
    with ServoBusEmulator({1: 1020, 2: 1030, 7: 1120, 9: 1130}) as emu, \
            DynamixelBus(emu.path, timeout_slack=SLACK) as bus:
        assert bus.ping(1) == (1020, ct.FIELDS["firmware_version"].default)
        assert [bus.ping(i)[0] for i in (2, 7, 9)] == [1030, 1120, 1130]
        assert bus.broadcast_ping(max_id=12) == {1: 1020, 2: 1030, 7: 1120, 9: 1130}
        with pytest.raises(BusTimeout) as info:
            bus.ping(3)
        assert info.value.ids == {3} and "servo 3" in str(info.value)


def test_fields_round_trip_signed_and_unsigned(emu, bus):
    bus.write_field(4, "led", 1)
    bus.write_field(4, "operating_mode", ct.MODE_EXTENDED_POSITION)
    bus.write_field(4, "goal_position", -70000)
    bus.write_field(4, "profile_velocity", 123)
    assert bus.read_field(4, "led") == 1
    assert bus.read_field(4, "goal_position") == -70000
    assert bus.read_field(4, "profile_velocity") == 123
    assert emu.servo(4).get("operating_mode") == ct.MODE_EXTENDED_POSITION
    assert bus.read(4, 0, 2) == XM430.to_bytes(2, "little")


def test_raw_pty_passes_cr_xon_xoff_and_stuffed_bytes(emu, bus):
    """0x0D, 0x11, 0x13 must cross the pty unaltered; FF FF FD inside a packet is byte-stuffed."""
    bus.write_field(2, "operating_mode", ct.MODE_EXTENDED_POSITION)
    value = int.from_bytes(b"\x11\x13\x0d\x00", "little")  # 856849: in range
    bus.write_field(2, "goal_position", value)
    assert bus.read_field(2, "goal_position") == value
    stuffed = int.from_bytes(b"\xff\xff\xfd\xff", "little", signed=True)  # -131073: in range
    assert b"\xff\xff\xfd\xfd" in p2.write(2, 116, b"\xff\xff\xfd\xff")
    bus.write_field(2, "goal_position", stuffed)
    assert emu.servo(2).get("goal_position") == stuffed
    assert bus.read_field(2, "goal_position") == stuffed  # the reply is stuffed too


def test_eeprom_write_refused_while_torque_on(emu, bus):
    bus.write_field(1, "torque_enable", 1)
    with pytest.raises(ServoError) as info:
        bus.write_field(1, "operating_mode", ct.MODE_VELOCITY)
    assert (info.value.servo_id, info.value.code, info.value.alert) == (1, "access_error", False)
    assert emu.servo(1).get("operating_mode") == ct.MODE_POSITION
    bus.write_field(1, "torque_enable", 0)
    bus.write_field(1, "operating_mode", ct.MODE_VELOCITY)
    assert bus.read_field(1, "operating_mode") == ct.MODE_VELOCITY


def test_read_only_field_and_partial_field_writes_refused(bus):
    with pytest.raises(ServoError) as info:
        bus.write_field(1, "present_position", 5)
    assert info.value.code == "access_error"
    with pytest.raises(ServoError) as info:
        bus.write(1, 116, b"\x00\x01")  # half of goal_position
    assert info.value.code == "data_length_error"


def test_out_of_range_value_is_a_range_error(emu, bus):
    with pytest.raises(ServoError) as info:
        bus.write_field(3, "operating_mode", 2)  # not a mode
    assert info.value.code == "data_range_error" and info.value.servo_id == 3
    with pytest.raises(ServoError) as info:
        bus.write_field(3, "velocity_limit", 1024)
    assert info.value.code == "data_range_error"
    assert emu.servo(3).get("velocity_limit") == ct.FIELDS["velocity_limit"].default
    with pytest.raises(ValueError):
        bus.write_field(3, "led", 256)  # does not even fit the field: refused before the wire


def test_goal_beyond_position_limit_is_a_limit_error(emu, bus):
    bus.write_field(5, "min_position_limit", 1000)
    bus.write_field(5, "max_position_limit", 3000)
    bus.write_field(5, "torque_enable", 1)
    with pytest.raises(ServoError) as info:
        bus.write_field(5, "goal_position", 3001)
    assert info.value.code == "data_limit_error"
    bus.write_field(5, "goal_position", 3000)
    assert emu.servo(5).get("goal_position") == 3000
    bus.write_field(5, "torque_enable", 0)
    bus.write_field(5, "operating_mode", ct.MODE_EXTENDED_POSITION)  # no position limits there
    bus.write_field(5, "goal_position", 9000)
    assert bus.read_field(5, "goal_position") == 9000


def test_unknown_instruction_and_bad_crc(emu):
    with serial.Serial(emu.path, 1_000_000, timeout=0.05) as port:
        port.write(p2.encode(1, 0x7F))
        (pkt,) = p2.PacketReader().feed(port.read(11))
        assert (pkt.id, p2.error_name(pkt.error)) == (1, "instruction_error")
        bad = bytearray(p2.ping(1))
        bad[-1] ^= 0xFF
        port.write(bytes(bad))
        assert port.read(20) == b""  # real servos ignore a packet whose CRC fails
        port.write(p2.ping(1))
        assert len(port.read(14)) == 14


def test_sync_read_replies_come_in_request_order(emu):
    with serial.Serial(emu.path, 1_000_000, timeout=0.2) as port:
        port.write(p2.sync_read(132, 4, [5, 3, 12, 1]))
        packets = p2.PacketReader().feed(port.read(4 * 15))
        assert [p.id for p in packets] == [5, 3, 12, 1]  # each servo its own status packet
        port.write(p2.sync_read(132, 4, [5, 3, 12, 1], fast=True))
        (pkt,) = p2.PacketReader(unstuff_params=False).feed(port.read(8 + 4 * 8))
        assert pkt.id == p2.BROADCAST_ID and list(p2.parse_fast_sync(pkt, [5, 3, 12, 1], 4)) == [5, 3, 12, 1]


def test_status_return_level(emu, bus):
    bus.write_field(6, "status_return_level", 1)  # status only for PING and READ
    t = time.perf_counter()
    bus.write_field(6, "led", 1)  # the bus knows not to wait for a status
    assert time.perf_counter() - t < bus.timeout_slack
    assert bus.read_field(6, "led") == 1
    bus.write_field(6, "status_return_level", 0)
    assert bus.ping(6)[0] == XM430  # PING always answers
    with pytest.raises(BusError):
        bus.read_field(6, "led")
    assert emu.servo(6).get("status_return_level") == 0


def test_factory_reset_keeps_id_and_baud_and_needs_torque_off(emu, bus):
    bus.write_field(8, "velocity_limit", 100)
    bus.write_field(8, "torque_enable", 1)
    with pytest.raises(ServoError) as info:
        bus.factory_reset(8, keep=0x02)
    assert info.value.code == "access_error"
    bus.write_field(8, "torque_enable", 0)
    bus.factory_reset(8, keep=0x02)
    time.sleep(0.1)  # it reboots
    assert bus.read_field(8, "velocity_limit") == ct.FIELDS["velocity_limit"].default
    assert bus.ping(8)[0] == XM430 and emu.servo(8).get("baud_rate") == ct.BAUD_CODES[1_000_000]


def test_reg_write_waits_for_action(emu, bus):
    bus.reg_write(7, 65, b"\x01")
    assert bus.read_field(7, "led") == 0 and bus.read_field(7, "registered_instruction") == 1
    bus.action()
    assert bus.read_field(7, "led") == 1 and bus.read_field(7, "registered_instruction") == 0


# -- motion ---------------------------------------------------------------------------------------
def test_position_moves_over_time_under_the_profile(emu, bus):
    vel_units, acc_units = 100, 40  # 1563 ticks/s, 9766 ticks/s²
    bus.write_field(1, "profile_velocity", vel_units)
    bus.write_field(1, "profile_acceleration", acc_units)
    bus.write_field(1, "goal_position", 2048)
    bus.write_field(1, "torque_enable", 1)
    t0 = time.monotonic()
    bus.write_field(1, "goal_position", 2848)
    samples = []
    while time.monotonic() - t0 < 1.5:
        d = bus.sync_read(*POS, [1])[1]
        samples.append((time.monotonic() - t0, _i32(d, 4), _i32(d, 0)))
        if samples[-1][1] == 2848 and samples[-1][2] == 0:
            break
        time.sleep(0.01)
    positions = [p for _, p, _ in samples]
    assert positions[-1] == 2848, "never reached the goal"
    assert positions == sorted(positions), "moved backwards"
    assert len({p for p in positions if 2048 < p < 2848}) >= 10, "jumped instead of moving"
    vmax = vel_units * 0.229 * 4096 / 60
    for (ta, pa, _), (tb, pb, _) in zip(samples, samples[1:]):
        assert pb - pa <= vmax * (tb - ta) * 1.3 + 20  # never faster than the profile velocity
    peak = max(v for _, _, v in samples)
    assert vel_units * 0.9 <= peak <= vel_units  # present velocity in 0.229 rpm units
    # trapezoid: 800 ticks at 1563 t/s with 9766 t/s² ramps takes about 0.67 s, not 0.51
    t_done = next(t for t, p, _ in samples if p == 2848)
    assert 0.6 < t_done < 1.2
    assert bus.read_field(1, "moving") == 0 and bus.read_field(1, "present_current") == 0


def test_velocity_mode_wheel(emu, bus):
    bus.write_field(12, "operating_mode", ct.MODE_VELOCITY)
    bus.write_field(12, "velocity_limit", 300)
    bus.write_field(12, "profile_acceleration", 50)
    bus.write_field(12, "torque_enable", 1)
    p0 = bus.read_field(12, "present_position")
    bus.write_field(12, "goal_velocity", 100)
    time.sleep(0.05)
    v_ramp = bus.read_field(12, "present_velocity")
    assert 0 < v_ramp < 100  # 50 units of acceleration take ~0.13 s to reach 100
    time.sleep(0.25)
    assert bus.read_field(12, "present_velocity") == 100
    assert bus.read_field(12, "moving") == 1 and bus.read_field(12, "present_current") > 0
    t = time.monotonic()
    p1 = bus.read_field(12, "present_position")
    time.sleep(0.2)
    p2_ = bus.read_field(12, "present_position")
    rate = (p2_ - p1) / (time.monotonic() - t)
    assert p1 > p0 and rate == pytest.approx(100 * 0.229 * 4096 / 60, rel=0.25)
    bus.write_field(12, "goal_velocity", 1000)  # in range for the field, above the velocity limit
    time.sleep(0.3)
    assert bus.read_field(12, "present_velocity") == 300  # clipped to the velocity limit


def test_bus_watchdog_stops_a_wheel(emu, bus):
    bus.write_field(12, "operating_mode", ct.MODE_VELOCITY)
    bus.write_field(12, "torque_enable", 1)
    bus.write_field(12, "goal_velocity", 150)
    bus.write_field(12, "bus_watchdog", 3)  # 60 ms
    for _ in range(5):  # talking keeps it alive
        time.sleep(0.03)
        assert bus.read_field(12, "present_velocity") == 150
    time.sleep(0.12)  # silence
    assert bus.read_field(12, "present_velocity") == 0
    assert bus.read_field(12, "bus_watchdog") == 255  # -1: bus watchdog error
    with pytest.raises(ServoError) as info:
        bus.write_field(12, "goal_velocity", 150)  # goals are read-only until cleared
    assert info.value.code == "data_range_error"
    bus.write_field(12, "bus_watchdog", 0)
    bus.write_field(12, "goal_velocity", 150)
    time.sleep(0.02)
    assert bus.read_field(12, "present_velocity") == 150


def test_the_emulators_own_stall_is_not_the_drivers_silence(emu, bus, monkeypatch):
    """The emulator thread descheduled right after a select that found nothing (held there 0.5 s,
    longer than the 0.3 s watchdog) while the driver keeps talking: a real servo heard every
    instruction, so its watchdog must not trip. Once the driver goes quiet, it does."""
    import simulators.servo_bus.emulator as sb
    bus.write_field(1, "torque_enable", 1)
    bus.write_field(1, "bus_watchdog", 15)  # 0.3 s
    real_select = sb.select.select
    stall, stalled = threading.Event(), threading.Event()

    def select(r, w, x, timeout=None):
        ready = real_select(r, w, x, timeout)
        if stall.is_set() and threading.current_thread() is emu._thread:
            stall.clear()
            time.sleep(0.5)  # descheduled: the driver's bytes arrive meanwhile, unseen by this pass
            stalled.set()
            return [], [], []
        return ready

    monkeypatch.setattr(sb.select, "select", select)
    stall.set()
    for _ in range(80):  # 0.8 s of talking, through the stall and after it
        bus.sync_write(ct.FIELDS["led"].address, 1, {1: b"\x00"})
        time.sleep(0.01)
    assert stalled.is_set()
    assert not emu.servo(1).wd_error and emu.stats["watchdog_trips"] == 0
    assert bus.read_field(1, "bus_watchdog") == 15
    time.sleep(0.5)  # now the driver is silent
    assert bus.read_field(1, "bus_watchdog") == 255 and emu.stats["watchdog_trips"] == 1


# -- group instructions -----------------------------------------------------------------------------
def test_sync_write_then_sync_read_and_fast_sync_read(emu, bus):
    goals = {i: (1000 + 10 * i).to_bytes(4, "little") for i in IDS}
    bus.sync_write(116, 4, goals)
    order = [5, 3, 12, 1]
    got = bus.sync_read(116, 4, order)
    assert list(got) == order and all(got[i] == goals[i] for i in order)
    fast = bus.sync_read(116, 4, IDS, fast=True)
    assert {i: _i32(d) for i, d in fast.items()} == {i: 1000 + 10 * i for i in IDS}
    state = bus.sync_read(*POS, IDS, fast=True)
    assert all(_i32(state[i], 4) == 2048 for i in IDS)
    assert bus.stats["timeouts"] == 0 and bus.stats["retries"] == 0


def test_bulk_read_and_bulk_write(emu, bus):
    bus.write_field(3, "operating_mode", ct.MODE_VELOCITY)
    bus.bulk_write([(1, 116, (2100).to_bytes(4, "little")), (3, 104, (-50).to_bytes(4, "little", signed=True)),
                    (4, 65, b"\x01")])
    got = bus.bulk_read([(1, 116, 4), (3, 104, 4), (4, 65, 1), (2, 0, 2)])
    assert _i32(got[1]) == 2100 and _i32(got[3]) == -50 and got[4] == b"\x01"
    assert got[2] == XM430.to_bytes(2, "little")


# -- faults -----------------------------------------------------------------------------------------
def test_hardware_error_sets_alert_and_reboot_clears_it(emu, bus):
    bus.write_field(2, "torque_enable", 1)
    emu.set_hardware_error(2, OVERLOAD)
    data = bus.sync_read(*POS, IDS)
    assert len(data) == 12 and bus.last_alerts == {2}  # data returned, the alert not swallowed
    bus.sync_read(*POS, IDS, fast=True)
    assert bus.last_alerts == {2}
    assert bus.read_field(2, "hardware_error_status") == OVERLOAD and bus.last_alerts == {2}
    assert ct.hardware_error_names(OVERLOAD) == ["overload"]
    assert bus.read_field(2, "torque_enable") == 0  # overload is a shutdown bit: torque went off
    with pytest.raises(ServoError) as info:
        bus.write_field(2, "torque_enable", 1)
    assert info.value.alert and info.value.servo_id == 2
    bus.reboot(2)
    time.sleep(0.1)
    assert bus.read_field(2, "hardware_error_status") == 0 and bus.last_alerts == set()
    bus.write_field(2, "torque_enable", 1)
    assert bus.read_field(2, "torque_enable") == 1


def test_corrupted_replies_are_retried(emu):
    emu.corrupt(0.25)
    with DynamixelBus(emu.path, retries=5, timeout_slack=SLACK) as bus:
        for k in range(30):
            bus.write_field(1, "profile_velocity", k)
            assert bus.read_field(1, "profile_velocity") == k
        for _ in range(10):
            got = bus.sync_read(*POS, IDS)
            assert all(_i32(got[i], 4) == 2048 for i in IDS)
        s = bus.stats
        assert s["retries"] > 0 and s["crc_errors"] + s["garbage_bytes"] > 0


def test_dropped_replies_time_out_naming_the_ids(emu):
    emu.drop(1.0)
    with DynamixelBus(emu.path, retries=1, timeout_slack=0.02) as bus:
        t = time.perf_counter()
        with pytest.raises(BusTimeout) as info:
            bus.read_field(3, "present_position")
        elapsed = time.perf_counter() - t
        assert info.value.ids == {3}
        assert 2 * 0.02 <= elapsed < 2 * 0.02 + 0.15  # two attempts of the computed timeout
        with pytest.raises(BusTimeout) as info:
            bus.sync_read(*POS, IDS)
        assert info.value.ids == set(IDS)
        assert bus.stats["timeouts"] >= 4
        emu.drop(0.0)
        bus.timeout_slack = SLACK
        assert bus.read_field(3, "present_position") == 2048


def test_late_replies_time_out_then_recover(emu):
    emu.delay(0.08)
    with DynamixelBus(emu.path, retries=0, timeout_slack=0.02) as bus:
        with pytest.raises(BusTimeout):
            bus.read_field(1, "present_position")
        emu.delay(0.0)
        time.sleep(0.2)  # the late reply lands in the input buffer
        bus.timeout_slack, bus.retries = SLACK, 2
        bus.write_field(1, "profile_velocity", 77)
        assert bus.read_field(1, "led") == 0  # not the stale 4-byte reply
        assert bus.read_field(1, "profile_velocity") == 77


def test_silent_servo_is_named(emu, bus):
    emu.silence([7])
    with pytest.raises(BusTimeout) as info:
        bus.sync_read(*POS, IDS)
    assert info.value.ids == {7}
    assert set(info.value.partial) == set(IDS) - {7}
    with pytest.raises(BusTimeout) as info:
        bus.sync_read(*POS, IDS, fast=True)  # the one-packet reply breaks: the fallback names who
    assert info.value.ids == {7}
    emu.unsilence([7])
    assert len(bus.sync_read(*POS, IDS, fast=True)) == 12


def test_wrong_baud_gets_no_reply(emu):
    """The emulator reads the baud rate the driver set on the pty: servos at 1 Mbps hear noise."""
    with DynamixelBus(emu.path, baud=57600, retries=0, timeout_slack=SLACK) as bus:
        with pytest.raises(BusTimeout, match="baud"):
            bus.ping(1)
        assert line_baud(bus._fd) == 57600
    assert emu.stats["wrong_baud"] > 0
    with DynamixelBus(emu.path, baud=1_000_000, timeout_slack=SLACK) as bus:
        assert bus.ping(1)[0] == XM430


def test_changed_servo_baud_rate_takes_effect(emu):
    """As `setup-servos` does: a servo moved to another rate answers there, not here."""
    with DynamixelBus(emu.path, timeout_slack=SLACK) as bus:
        bus.write_field(4, "baud_rate", ct.BAUD_CODES[57600])
        with pytest.raises(BusTimeout):
            bus.ping(4)
        assert bus.ping(5)[0] == XM430
    with DynamixelBus(emu.path, baud=57600, timeout_slack=SLACK) as bus:
        assert bus.ping(4)[0] == XM430
        bus.write_field(4, "id", 40)
        assert bus.ping(40)[0] == XM430
    assert emu.servo(40).get("baud_rate") == 1


def test_missing_busy_and_forbidden_ports(emu, tmp_path, monkeypatch):
    with pytest.raises(PortError, match=r"no serial port at .*ttyNOPE: is the adapter plugged in\?"):
        DynamixelBus(str(tmp_path / "ttyNOPE")).open()
    with DynamixelBus(emu.path, timeout_slack=SLACK):
        with pytest.raises(PortError, match="busy"):
            DynamixelBus(emu.path, timeout_slack=SLACK).open()

    def forbidden(self):
        raise serial.SerialException(errno.EACCES, f"could not open port {self.port}: Permission denied")
    monkeypatch.setattr(serial.Serial, "open", forbidden)  # we run as root: simulate the refusal
    with pytest.raises(PortError, match="dialout"):
        DynamixelBus(emu.path, timeout_slack=SLACK).open()


def test_driver_can_close_and_reopen_the_port(emu):
    bus = DynamixelBus(emu.path, timeout_slack=SLACK)
    for k in range(4):
        bus.open()
        bus.write_field(1, "profile_velocity", k)
        assert bus.read_field(1, "profile_velocity") == k
        bus.close()
        time.sleep(0.02)  # the emulator keeps serving with no one on the port
    assert not bus.is_open


def test_unplugged_mid_operation_is_a_port_error_then_reconnect(tmp_path):
    link = tmp_path / "ttyDXL"
    with ServoBusEmulator({i: XM430 for i in IDS}, link=str(link)) as emu:
        assert os.path.realpath(link) == emu.slave_name
        bus = DynamixelBus(str(link), retries=0, timeout_slack=SLACK)
        bus.open()
        bus.write_field(1, "profile_velocity", 42)
        threading.Timer(0.05, emu.close_port).start()
        t = time.monotonic()
        with pytest.raises(PortError, match="went away"):
            while time.monotonic() - t < 5:
                bus.sync_read(*POS, IDS)
        assert time.monotonic() - t < 1.0 and not bus.is_open
        with pytest.raises(PortError, match="no serial port"):
            bus.open()  # unplugged: the device is gone
        assert not os.path.lexists(link)
        assert emu.reopen() == str(link)
        assert os.path.realpath(link) == emu.slave_name
        bus.open()  # same path, new pty
        assert bus.read_field(1, "profile_velocity") == 42  # the servos kept their state
        bus.close()


# -- the emulate-bus command --------------------------------------------------------------------------
def test_emulate_bus_command_with_fault_control(tmp_path):
    cfg = tmp_path / "bus.toml"
    cfg.write_text('[servos]\n"1" = "XM430-W350"\n"2" = "XM540-W270"\n"3" = 1130\n')
    link = tmp_path / "ttyEMU"
    emu = EmulatorProcess(str(cfg), link=str(link), control=True)
    try:
        assert emu.path == str(link)
        with DynamixelBus(emu.path, retries=0, timeout_slack=SLACK) as bus:
            assert bus.broadcast_ping(max_id=5) == {1: 1020, 2: 1120, 3: 1130}
            emu.control.call("set_hardware_error", id=2, bits=OVERLOAD)
            bus.sync_read(*POS, [1, 2, 3])
            assert bus.last_alerts == {2}
            emu.control.call("silence", ids=[3])
            with pytest.raises(BusTimeout) as info:
                bus.sync_read(*POS, [1, 2, 3])
            assert info.value.ids == {3}
            emu.control.call("unsilence", ids=[3])
            assert emu.control.call("field", id=2, name="hardware_error_status")["value"] == OVERLOAD
            with pytest.raises(RuntimeError, match="unknown op"):
                emu.control.call("explode")
            emu.control.call("close_port")
            with pytest.raises(PortError):
                bus.ping(1)
        emu.control.call("reopen")
        with DynamixelBus(emu.path, timeout_slack=SLACK) as bus:
            assert bus.ping(1)[0] == 1020
    finally:
        assert emu.close() == 0  # SIGTERM: a clean exit


def test_emulate_bus_reads_the_shipped_dynamixel_config():
    servos, initial, baud = servos_from_config("fetch_dynamixel")
    from drivers.calibration import load_calibration
    from robot_env.config import resolve
    cal = load_calibration(resolve("fetch_dynamixel").parent / "fetch_dynamixel_calibration.toml")
    assert servos == {s.id: s.model_number for s in cal.servos} and baud == 1_000_000
    with EmulatorProcess("fetch_dynamixel") as emu, DynamixelBus(emu.path, timeout_slack=SLACK) as bus:
        found = bus.broadcast_ping(max_id=max(servos) + 1)
        assert found == servos
        shoulder = cal.by_id(2)
        assert bus.read_field(2, "present_position") == shoulder.zero == initial[2]


def test_timing_paces_replies_at_the_baud_rate():
    with ServoBusEmulator({i: XM430 for i in IDS}, baud=57600, timing=True) as emu:
        with DynamixelBus(emu.path, baud=57600, timeout_slack=SLACK) as bus:
            bus.sync_write(9, 1, {i: b"\x00" for i in IDS})  # return delay 0
            for i in IDS:
                bus.set_return_delay(i, 0.0)
            wire = ((14 + 12) + 12 * (11 + 8)) * 10 / 57600  # 44 ms
            times = []
            for _ in range(4):
                bus.ping(1)  # let the line go idle
                t = time.perf_counter()
                bus.sync_read(*POS, IDS)
                times.append(time.perf_counter() - t)
            assert wire <= min(times) < wire + 0.03
            per_read_wire = (14 + 15) * 10 / 57600  # 5 ms

            def fastest_read():  # the minimum: immune to a loaded machine's stalls
                best = 1.0
                for _ in range(15):
                    t = time.perf_counter()
                    bus.read(1, 132, 4)
                    best = min(best, time.perf_counter() - t)
                return best
            bus.write_field(1, "return_delay_time", 250)  # 500 µs
            slow = fastest_read()
            bus.write_field(1, "return_delay_time", 0)
            fast = fastest_read()
            assert slow >= per_read_wire + 0.0005 and fast >= per_read_wire and fast < slow
