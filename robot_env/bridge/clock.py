"""The server's two clocks (DESIGN's "Time and latency"), as plain arithmetic on a monotonic clock.

*Lockstep* (simulators, training): time advances only on `step`, by one control period. *Realtime*
(hardware always; simulators when configured): the backend advances on the wall clock, a tick every
control period samples the stream and runs the command watchdog, and a `step` is answered one
control period after its command was applied. The watchdog counts only on the realtime clock, so a
pause for gradient updates in lockstep training never trips it. Times are the caller's monotonic
readings: no sockets and no sleeping here.
"""
from __future__ import annotations

from collections import deque


class Clock:
    def __init__(self, kind: str, period: float, watchdog_timeout: float, now: float):
        if kind not in ("lockstep", "realtime"):
            raise ValueError(f"clock must be 'lockstep' or 'realtime', got {kind!r}")
        self.kind = kind
        self.realtime = kind == "realtime"
        self.period = period
        self.watchdog_timeout = watchdog_timeout
        self.last_advance = now
        self.next_tick = now + period
        self.last_command: float | None = None  # the watchdog counts from here (None: idle)
        self.watchdog_tripped = False
        self.overruns = 0
        self.deferred: deque = deque()  # realtime steps awaiting their period: [deadline, payload]

    def elapsed(self, now: float) -> float:
        """Time to advance the backend by to reach `now` (0 if none), and mark it advanced."""
        dt = now - self.last_advance
        if dt <= 0:
            return 0.0
        self.last_advance = now
        return dt

    def restart(self, now: float) -> None:
        """After a reset: time starts over from here (simulators start their episode clock at 0)."""
        self.last_advance = now
        self.last_command = None
        self.watchdog_tripped = False

    def poll_timeout(self, now: float) -> float:
        """How long (s) the server may wait for a request before the clock needs it again."""
        due = self.next_tick
        if self.deferred:
            due = min(due, self.deferred[0][0])
        return max(0.0, due - now)

    def tick_due(self, now: float) -> bool:
        """True once per control period (realtime): then advance, sample, check the watchdog."""
        if now < self.next_tick:
            return False
        self.next_tick += self.period
        if self.next_tick < now:  # fell behind: skip, don't burst
            self.overruns += 1
            self.next_tick = now + self.period
        return True

    def commanded(self, now: float) -> None:
        """A motion command arrived: the watchdog restarts and a tripped one clears."""
        self.last_command = now
        self.watchdog_tripped = False

    def answered(self, now: float) -> None:
        """A deferred step was answered: its client could not send the next command before this, so
        the watchdog counts from here (a server that answers late must not blame the client)."""
        if self.last_command is not None and now > self.last_command:
            self.last_command = now

    def watchdog_trips(self, now: float, estopped: bool) -> bool:
        """True exactly once when no command came for `watchdog_timeout` (realtime, not e-stopped)."""
        if (self.last_command is None or self.watchdog_tripped or estopped
                or now - self.last_command <= self.watchdog_timeout):
            return False
        self.watchdog_tripped = True
        return True

    def defer(self, applied: float, payload) -> None:
        """A realtime step applied at `applied`: its reply is due one control period later."""
        self.deferred.append([applied + self.period, payload])

    def due_steps(self, now: float) -> list:
        """The deferred steps whose period is over: [(lateness s, payload), ...] in order; answering
        them restarts the watchdog (`answered`)."""
        out = []
        while self.deferred and self.deferred[0][0] <= now:
            deadline, payload = self.deferred.popleft()
            out.append((now - deadline, payload))
        if out:
            self.answered(now)
        return out

    def flush(self, now: float) -> None:
        """Make every deferred step due now (a reset answers them before it resets)."""
        for item in self.deferred:
            item[0] = min(item[0], now)
