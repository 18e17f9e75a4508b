"""A Dynamixel Protocol 2.0 servo bus on a pseudo-terminal: X-series servos without the hardware.

`ServoBusEmulator` opens a pty and answers, from a thread, the instructions a controller sends to
the slave side (`/dev/pts/N`, or a stable symlink) exactly as a bus of real servos would: PING
(also broadcast), READ, WRITE, REG_WRITE + ACTION, REBOOT, FACTORY_RESET, CLEAR, SYNC_READ (one
status packet per servo, in request order), SYNC_WRITE, FAST_SYNC_READ (one packet), BULK_READ,
FAST_BULK_READ and BULK_WRITE, with the status return level, the alert bit and the error codes a
real servo uses.

Each servo holds its control table as bytes, built from `drivers.control_table` (so the driver and
the emulator agree by construction), and moves over time: with torque on, position modes follow a
trapezoidal profile (profile velocity/acceleration; 0 = the velocity limit / infinite
acceleration: then a P position loop, `POSITION_TAU`), velocity mode ramps to the goal velocity; present position, velocity, current and
the moving flags are updated. The bus watchdog (address 98) stops a servo that hears nothing.

Things a real bus does that the emulator reproduces on purpose:
- A packet with a bad CRC gets no reply at all (real servos ignore it).
- The servos listen at their Baud Rate (address 8). The emulator reads the baud rate the driver
  set on the pty (termios) and a servo whose rate differs hears only noise: no reply. So a driver
  opening the bus at the wrong baud sees timeouts, as on hardware.
- A rebooting servo is deaf for `reboot_time` seconds.
- With `timing=True` replies wait for the return delay time (address 9, ×2 µs) and are paced at
  the baud rate (10 bits per byte, the instruction's own bytes included), so rates measured
  against the emulator are the wire-limited rates of a real bus.

Emulator choices where the e-Manual is silent (documented so nobody mistakes them for facts):
- Enabling torque does not move Goal Position to Present Position: a driver must write the goal
  before torque on (which is what avoids a jump on hardware too).
- Writing Torque Enable = 1 while a shutdown hardware error is latched answers result_fail.
- Broadcast PING replies come back in ID order, back to back.
- A WRITE to the ID field is answered from the old ID (what the official SDK waits for); a WRITE
  that lowers the Status Return Level is answered (or not) at the new level.
- The bus watchdog counts any instruction addressed to the servo or broadcast (sync/bulk too). It
  judges silence only on a pass that follows the previous one within `STALL` (20 ms): after this
  emulator's own thread was descheduled, the bytes waiting are read first, as a real servo would
  have heard them on time. So a trip means the driver really sent nothing for that long (to within
  20 ms); it is logged with the silence and the emulator's own longest gap between passes, and
  counted in `stats["watchdog_trips"]`.
- Goal Velocity beyond the Velocity Limit (but within ±1023) is clipped; beyond ±1023 it is a
  data range error, like every value outside a field's range.
- Drive Mode (reverse direction, time-based profile) is stored but not applied; the table ends
  at Present Temperature (147): indirect addresses answer access_error.

Fault injection (thread-safe): `corrupt(rate)`, `drop(rate)`, `delay(seconds)`, `silence(ids)` /
`unsilence(ids)`, `set_hardware_error(id, bits)`, `close_port()` (the adapter unplugged: the pty
master closes, the driver gets EIO) and `reopen()` (a new pty; the `link` symlink is re-pointed).

The emulator keeps its own descriptor on the slave open, so the driver can close and reopen the
port any number of times (a pty master with no slave open reports hang-ups instead of waiting).
"""
from .control import CONTROL_OPS, EmulatorControl, EmulatorProcess, control_reply, serve_control, servos_from_config  # noqa: E402
from .emulator import ServoBusEmulator, line_baud  # noqa: E402
from .servo import STALL, EmulatedServo  # noqa: E402

__all__ = ["CONTROL_OPS", "EmulatedServo", "EmulatorControl", "EmulatorProcess", "STALL", "ServoBusEmulator",
           "control_reply", "line_baud", "serve_control", "servos_from_config"]
