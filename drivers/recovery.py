"""`reset_faults` for the driver: only the faulted servos, a step per loop cycle, in the loop thread.

The other servos keep holding meanwhile (their goals and bus watchdogs are fed by the cycles in
between). A hardware error needs a reboot, which turns that servo's torque off: refused, naming the
servo, while it still holds torque, unless the caller agrees. A recovery that fails restores torque
on every servo that had it. `DynamixelBackend` mixes this in.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from robot_env.backends.interface import Operation
from robot_env.errors import ConfigError, RequestError
from robot_env.model.description import NJ

from . import control_table as ct
from .bus import BusError, BusTimeout
from .loop_health import REBOOT_TIMEOUT
from .operations import _Job, _JobOperation

log = logging.getLogger("drivers.hardware")


class FaultRecovery:
    """Loop-thread jobs and the recovery itself, for `DynamixelBackend`."""

    # -- loop-thread jobs --------------------------------------------------------------------
    def _run_job(self) -> None:
        """One step of the job at the head of the queue (a generator: each step is a few bus
        transactions, so the loop keeps feeding every other servo's watchdog meanwhile)."""
        job = self._jobs[0]
        try:
            if job.cancelled is not None:
                raise RequestError("cancelled", f"{job.what} cancelled by {job.cancelled}")
            next(job.steps)
        except StopIteration:
            job.done = True
        except RequestError as exc:
            job.error, job.done = exc, True
        except (BusError, ConfigError) as exc:
            job.error = RequestError("reset_faults_failed", f"{job.what} failed: {exc}")
            job.done = True
        except Exception as exc:  # a bug: report it on the request, keep the loop alive
            log.exception("%s failed", job.what)
            job.error, job.done = RequestError("internal", f"{type(exc).__name__}: {exc}"), True
        if job.done:
            self._jobs.popleft()
            if job.error is not None and job.on_failure is not None:
                job.on_failure()

    def reset_faults(self, reboot=()) -> Operation | None:
        """Recover only what is faulted, in the loop thread (`_recover`); see the module docstring."""
        if not self._faults:
            return None
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._start_loop()
        need = sorted({sid for f in self._faults if f["code"] == "hardware_error" for sid in f["servos"]})
        agreed = set(reboot)
        holding = [self.cal.by_id(i) for i in need if self._torque.get(i, True)
                   and "*" not in agreed and self.cal.by_id(i).joint not in agreed]
        if holding:
            names = ", ".join(f"{s.joint} (servo {s.id})" for s in holding)
            raise RequestError("reboot_required", f"reset_faults refused: {names} report a hardware error that only "
                                                  "a reboot clears, and still hold torque: a reboot turns it off "
                                                  "for about a second, so the joint goes limp (a loaded shoulder or "
                                                  "elbow drops). Support or park the arm, then call "
                                                  f"reset_faults(reboot={[s.joint for s in holding]}). Nothing was done")
        for i in need:
            log.warning("reset_faults will reboot %s (servo %d): its torque is %s", self.cal.by_id(i).joint, i,
                        "on (agreed by the caller)" if self._torque.get(i, True) else "already off (shutdown)")
        job = _Job("reset_faults", None)
        job.steps = self._recover(job, [dict(f) for f in self._faults])
        had_torque = {i for i, on in self._torque.items() if on}
        job.on_failure = lambda: self._restore_torque(had_torque)
        self._jobs.append(job)
        return _JobOperation(job)

    def _recover(self, job: "_Job", faults: list):
        """The recovery, a step per loop cycle. Only faulted servos are touched; the others keep
        holding (their goals and watchdogs are fed by the cycles in between)."""
        bus = self.bus
        codes = {f["code"] for f in faults}
        if "port" in codes:
            bus.close()
            bus.open()
            yield
        if codes & {"port", "bus"}:
            self._bus_errors = 0
        todo: dict[int, str] = {}  # servo id -> what to do: reboot, rejoin, watchdog
        for f in faults:
            for sid in f["servos"]:
                how = {"hardware_error": "reboot", "bus_watchdog": "watchdog"}.get(f["code"], "rejoin")
                if f["code"] in ("slow_loop", "driver"):
                    continue
                if todo.get(sid) != "reboot":
                    todo[sid] = how
        job.rebooted = [self.cal.by_id(i).joint for i, how in todo.items() if how == "reboot"]
        for sid, how in sorted(todo.items()):
            s = self.cal.by_id(sid)
            self._excluded.add(sid)
            if how == "reboot":
                bus.reboot(sid)
                self._torque[sid] = False
                deadline = time.monotonic() + REBOOT_TIMEOUT
                while True:  # deaf while it boots: ask once per cycle
                    yield
                    try:
                        bus.ping(sid)
                        break
                    except BusTimeout:
                        if time.monotonic() > deadline:
                            raise RequestError("reset_faults_failed", f"{s.joint} (servo {sid}) did not come back "
                                                                      f"within {REBOOT_TIMEOUT:g} s of its reboot") from None
            else:
                try:
                    bus.ping(sid)
                except BusTimeout:
                    raise RequestError("reset_faults_failed", f"{s.joint} (servo {sid}) still does not answer") from None
            yield
            if how == "watchdog" and bus.read_field(sid, "torque_enable"):
                bus.write_field(sid, "bus_watchdog", 0)  # clears it; the servo kept its torque
            else:
                hw = bus.read_field(sid, "hardware_error_status")
                if hw:
                    raise RequestError("reset_faults_failed", f"{s.joint} (servo {sid}) reports "
                                       f"{', '.join(ct.hardware_error_names(hw)) or hw}: reset_faults again "
                                       f"(with reboot=[{s.joint!r}] if it holds torque)")
                self._prepare_servo(s)
            yield
            # No goals reach a servo until its fault clears at the end: arm its watchdog only then,
            # or one recovered early would trip while the others are still being recovered.
            self._torque_on(s, arm_watchdog=False)
            self._excluded.discard(sid)
            self._misses.pop(sid, None)
            yield
        # Everyone answers: hold where the arm is now, and clear what was recovered.
        q, dq, effort, wheels = self._read_state(self.all_ids)
        self._take(self.all_ids, q, dq, effort, wheels, self.loop_period)
        with self._lock:
            self.q_cmd, self.v_cmd = self.q_meas.copy(), np.zeros(NJ)
            self.wheel_cmd = (0.0, 0.0)
            self.ctl.reset(self.q_meas)
            self._faults = [f for f in self._faults if f not in faults]
        self._write_goals()  # the recovered servos get goals again before their watchdogs run
        for sid in sorted(todo):
            self._arm_watchdog(self.cal.by_id(sid))
        self.bus.reset_stats()

    def _restore_torque(self, servos: set[int]) -> None:
        """After a failed recovery: every servo that held torque before it holds it again."""
        for sid in sorted(servos):
            s = self.cal.by_id(sid)
            try:
                if not self.bus.read_field(sid, "torque_enable"):
                    self._torque_on(s)
                    log.warning("reset_faults failed; torque restored on %s (servo %d)", s.joint, sid)
            except BusError as exc:
                log.error("reset_faults failed; cannot restore torque on %s (servo %d): %s", s.joint, sid, exc)
