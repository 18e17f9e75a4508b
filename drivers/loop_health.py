"""The driver loop's health: its constants, how long its thread waited for a CPU, and what a pause
of the bus was (for the fault message: a starved machine or a blocked loop)."""
from __future__ import annotations

import os
import threading

from . import control_table as ct

WATCHDOG_CHECK_CYCLES = 50
REBOOT_TIMEOUT = 3.0  # s a rebooted servo may stay deaf
STARTUP_PING_PATIENCE = 1.0  # s a servo may take to answer its first ping at start-up
# Wheel speed at full twist (1 m/s + 4.5 rad/s) is ~31 rad/s; an X-series servo tops out at raw 1023
# (~24.5 rad/s, ~1.5 m/s at the rim): that is the wheels' limit, and goals saturate there.
WHEEL_RAW_MAX = ct.FIELDS["velocity_limit"].hi
LOOP_RATE_WINDOW = 1.0  # s over which the loop rate is held against min_loop_fraction
DRIVE_MODE_REVERSE = 0x01  # Drive Mode bit 0; bit 2 (0x04) would make the profile time-based


def name_thread(name: str) -> None:
    """Give the calling thread its name in the OS (Linux: 15 characters), so `top -H` and a test
    reading /proc/PID/task/*/comm can tell the servo loop from a camera's capture thread."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as fh:
            fh.write(name[:15])
    except OSError:
        pass


class ThreadCpuWait:
    """The calling thread's time spent runnable but not running (waiting for a CPU), from Linux's
    /proc/thread-self/schedstat. `open()` from the thread to measure; None where unavailable."""

    def __init__(self, fd: int):
        self._fd = fd
        self._last = self._read()

    @classmethod
    def open(cls) -> "ThreadCpuWait | None":
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except (OSError, AttributeError):
            return None
        try:
            return cls(fd)
        except (OSError, ValueError, IndexError):
            os.close(fd)
            return None

    def _read(self) -> float:
        return int(os.pread(self._fd, 128, 0).split()[1]) * 1e-9

    def read(self) -> float:
        """Seconds the thread has waited for a CPU in all (never decreasing)."""
        try:
            self._last = max(self._last, self._read())
        except (OSError, ValueError, IndexError):
            pass
        return self._last

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


def pause_note(pause: float, cpu_wait: float | None, overrun: float) -> str:
    """For a bus-watchdog fault: the driver's longest pause between bus instructions since the
    previous check and where that time went, as far as the driver can tell. Seconds in (`cpu_wait`:
    the loop thread's time runnable but not running over the same window, None if unknown;
    `overrun`: the longest poll held past its timeout); a clause for the message out."""
    note = f"; the driver's longest pause between bus instructions was {pause * 1e3:.0f} ms"
    if cpu_wait is not None and cpu_wait >= 0.5 * pause:
        return (note + f" and its control loop waited {cpu_wait * 1e3:.0f} ms for a CPU meanwhile: the "
                       "machine is overloaded (leave the driver a core)")
    if overrun >= 0.5 * pause:
        return (note + f", {overrun * 1e3:.0f} ms of it in a serial-port poll held past its timeout (the "
                       "kernel's tty worker thread, or the GIL's holder, was not scheduled): the machine is overloaded")
    waited = "" if cpu_wait is None else f" while its control loop waited {cpu_wait * 1e3:.0f} ms for a CPU"
    return note + f"{waited}: the loop was blocked (a lock, the GIL, a slow call)"
